"""Calibration of a classifier's probabilities: ECE, temperature scaling, reliability diagram.

A temperature ``T`` divides the logits before the softmax; it changes confidences but never the
predicted class (so accuracy is untouched). ``T > 1`` softens an over-confident model. If the
temperature-scaled NLL stays flat while the raw NLL rises, the rise is over-confidence, not worse
ranking of the classes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

from src.functional.jsonable import json_ready

N_BINS = 15
# the fitted temperature is clipped to this range: a model no better than uniform guessing drives T to infinity
T_MIN, T_MAX = 0.01, 100.0
CROSSFIT_SEED = 0  # the seeded random halves of the cross-fit
# what a fitted temperature can be trusted for (see :func:`temperature_status`)


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


def temperature_status(temperature: float, n_correct: int, n: int) -> str:
    """``"not_identifiable"`` when all ``n`` predictions are right or all wrong, ``"at_bound"`` when the
    fitted ``temperature`` is ``T_MIN`` or ``T_MAX``, else ``"ok"``.

    With no errors, sharpening the probabilities (T -> 0) lowers the NLL for free; with no correct
    prediction, flattening them (T -> inf) does: either way the fitted value says nothing about calibration.
    """
    if n_correct in (0, n):
        return "not_identifiable"
    if temperature <= T_MIN or temperature >= T_MAX:
        return "at_bound"
    return "ok"


@dataclass(frozen=True)
class CrossFit:
    """Temperature fitted on all samples, and NLL/ECE of temperature scaling scored out of sample."""

    temperature: float  # fitted on all samples
    temperature_halves: tuple[float, float]  # fitted on each half (each scores the other half)
    nll_raw: float
    ece_raw: float
    nll_scaled: float  # cross-fitted: each sample scored with the temperature fitted on the other half
    ece_scaled: float  # cross-fitted, over all samples at once
    status: str  # see temperature_status
    n_samples: int

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable values: tuples become lists, nan/inf become None."""
        return json_ready(asdict(self))


def _crossfit_scaled(z: torch.Tensor, y: torch.Tensor, t: float, seed: int) -> tuple[torch.Tensor, tuple[float, ...]]:
    """``z`` with each seeded random half divided by the temperature fitted on the other half; those two."""
    n = z.shape[0]
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    halves = (perm[: n // 2], perm[n // 2 :])
    # each half's optimum is near the whole's: starting there, the Newton solve takes a few steps
    t_halves = tuple(fit_temperature(z[h], y[h], start=t) for h in halves)
    scaled = z.clone()
    scaled[halves[0]] = z[halves[0]] / t_halves[1]  # each half scaled by the other half's temperature
    scaled[halves[1]] = z[halves[1]] / t_halves[0]
    return scaled, t_halves


def crossfit_temperature(
    logits: torch.Tensor,
    target: torch.Tensor,
    seed: int = CROSSFIT_SEED,
    temperature: float | None = None,
    n_bins: int = N_BINS,
) -> CrossFit:
    """Temperature scaling with honest (cross-fitted) NLL and ECE.

    A temperature fitted and scored on the same samples flatters the scaled NLL/ECE. Here the samples
    are split at random (seeded) into two halves; the temperature fitted on one half scales the other
    half's logits, so no sample is scored with a temperature fitted on itself, and the per-sample
    results of both halves are pooled so the numbers cover all samples. ``temperature`` (fitted on all
    samples) may be passed in when already known. ``status``: :func:`temperature_status`.
    """
    z = logits.detach().double().cpu()
    y = target.detach().long().cpu()
    n = z.shape[0]
    if z.ndim != 2 or y.shape != (n,) or n < 2:
        raise ValueError(f"need logits (N >= 2, C) and target (N,), got {tuple(z.shape)} and {tuple(y.shape)}")
    t = fit_temperature(z, y) if temperature is None else float(temperature)
    scaled, t_halves = _crossfit_scaled(z, y, t, seed)
    return CrossFit(
        temperature=t,
        temperature_halves=t_halves,
        nll_raw=nll(z, y),
        ece_raw=expected_calibration_error(z.softmax(1), y, n_bins),
        nll_scaled=nll(scaled, y),
        ece_scaled=expected_calibration_error(scaled.softmax(1), y, n_bins),
        status=temperature_status(t, int((z.argmax(1) == y).sum()), n),
        n_samples=n,
    )


def calibration_summary(
    logits: torch.Tensor, target: torch.Tensor, n_bins: int = N_BINS, start_temperature: float = 1.0
) -> dict[str, float]:
    """``ece``, fitted ``temperature``, ``nll_temperature_scaled`` and ``ece_temperature_scaled`` (fitted and
    scored on the same samples: what the per-epoch scalars show), and ``nll_crossfit`` / ``ece_crossfit``
    (the same scaling scored out of sample, :func:`crossfit_temperature`: what the verdict uses)."""
    t = fit_temperature(logits, target, start=start_temperature)
    scaled = logits.double() / t
    summary = {
        "ece": expected_calibration_error(logits.double().softmax(1), target, n_bins),
        "temperature": t,
        "nll_temperature_scaled": nll(logits, target, t),
        "ece_temperature_scaled": expected_calibration_error(scaled.softmax(1), target, n_bins),
        "nll_crossfit": math.nan,
        "ece_crossfit": math.nan,
    }
    if len(target) >= 2:  # only the two cross-fitted numbers: the rest of CrossFit is computed above
        z, y = logits.detach().double().cpu(), target.detach().long().cpu()
        crossfit, _ = _crossfit_scaled(z, y, t, CROSSFIT_SEED)
        summary.update(
            nll_crossfit=nll(crossfit, y), ece_crossfit=expected_calibration_error(crossfit.softmax(1), y, n_bins)
        )
    return summary


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
