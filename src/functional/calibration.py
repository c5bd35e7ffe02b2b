"""Calibration of a classifier's probabilities: ECE, temperature scaling, reliability diagram.

A temperature ``T`` divides the logits before the softmax; it changes confidences but never the
predicted class (so accuracy is untouched). ``T > 1`` softens an over-confident model. If the
temperature-scaled NLL stays flat while the raw NLL rises, the rise is over-confidence, not worse
ranking of the classes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

N_BINS = 15
# the fitted temperature is clipped to this range: a model no better than uniform guessing drives T to infinity
T_MIN, T_MAX = 0.01, 100.0


def expected_calibration_error(probs: torch.Tensor, target: torch.Tensor, n_bins: int = N_BINS) -> float:
    """ECE (L1, ``n_bins`` equal-width confidence bins) of class probabilities ``probs`` (N, C).

    torchmetrics' ``MulticlassCalibrationError(n_bins, norm="l1")`` in its functional form (building
    the Metric object costs ~100x more than the computation on a few hundred samples).
    """
    return float(
        multiclass_calibration_error(probs.float().cpu(), target.cpu(), probs.shape[1], n_bins=n_bins, norm="l1")
    )


def fit_temperature(
    logits: torch.Tensor, target: torch.Tensor, max_iter: int = 100, tol: float = 1e-10, start: float = 1.0
) -> float:
    """The temperature minimising the NLL of ``softmax(logits / T)``, clipped to ``[T_MIN, T_MAX]``.

    The NLL is convex in ``beta = 1 / T`` with closed-form derivatives (``E_p[z] - z_true`` and
    ``Var_p[z]``), so a bracketed Newton solve (bisection when a step leaves the bracket) finds the
    optimum in a few vectorised steps, without autograd: it runs every epoch. ``T_MAX`` means the
    probabilities are no better than uniform. ``start`` (e.g. the previous epoch's temperature) only
    changes how many steps it takes.
    """
    z = logits.detach().double().cpu()
    z_true = z.gather(1, target.detach().cpu().long()[:, None])[:, 0]

    def derivatives(beta: float) -> tuple[float, float]:
        p = torch.softmax(beta * z, dim=1)
        mean_z = (p * z).sum(1)
        return float((mean_z - z_true).mean()), float(((p * z * z).sum(1) - mean_z**2).mean())

    lo, hi = 1.0 / T_MAX, 1.0 / T_MIN
    if derivatives(lo)[0] >= 0:  # NLL already increasing at the softest temperature
        return T_MAX
    if derivatives(hi)[0] <= 0:  # still decreasing at the sharpest one
        return T_MIN
    beta = min(max(1.0 / start, lo), hi) if start > 0 else 1.0
    for _ in range(max_iter):
        grad, hess = derivatives(beta)
        if grad > 0:
            hi = beta
        else:
            lo = beta
        step = beta - grad / hess if hess > 0 else math.nan
        new = step if lo < step < hi else math.sqrt(lo * hi)  # Newton inside the bracket, else bisect
        if abs(new - beta) <= tol * beta:
            beta = new
            break
        beta = new
    return min(max(1.0 / beta, T_MIN), T_MAX)


def nll(logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``softmax(logits / temperature)``, in float64."""
    return float(F.cross_entropy(logits.double().cpu() / temperature, target.cpu()))


def calibration_summary(
    logits: torch.Tensor, target: torch.Tensor, n_bins: int = N_BINS, start_temperature: float = 1.0
) -> dict[str, float]:
    """``ece``, fitted ``temperature``, ``nll_temperature_scaled`` and ``ece_temperature_scaled``."""
    t = fit_temperature(logits, target, start=start_temperature)
    scaled = logits.double() / t
    return {
        "ece": expected_calibration_error(logits.double().softmax(1), target, n_bins),
        "temperature": t,
        "nll_temperature_scaled": nll(logits, target, t),
        "ece_temperature_scaled": expected_calibration_error(scaled.softmax(1), target, n_bins),
    }


def reliability_bins(
    conf: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin: ``(mean confidence, accuracy, count)``; empty bins are nan/0.

    Bin ``b`` holds confidences in ``[b/n, (b+1)/n)`` as in torchmetrics' ECE, except that a
    confidence of exactly 1 goes into the last bin (torchmetrics gives it a bin of its own).
    """
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    bins = np.clip(np.floor(conf * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(bins, weights=conf, minlength=n_bins) / count
        acc = np.bincount(bins, weights=correct, minlength=n_bins) / count
    return mean_conf, acc, count
