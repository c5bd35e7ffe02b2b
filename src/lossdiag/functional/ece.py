"""Expected calibration error and the reliability diagram's bins: how far confidence is from accuracy."""

from __future__ import annotations

import math

import numpy as np
import torch

N_BINS = 15


def expected_calibration_errors(
    probs: torch.Tensor, target: torch.Tensor, n_bins: int = N_BINS
) -> torch.Tensor:
    """ECE (L1, ``n_bins`` equal-width confidence bins) of class probabilities ``probs`` (..., N, C): one per
    leading index (e.g. one per epoch), float32.

    torchmetrics' ``multiclass_calibration_error(norm="l1")`` on probabilities (its ``torch.bucketize`` binning, a
    confidence of exactly 1 in a bin of its own; torchmetrics would re-softmax inputs outside [0, 1], this does
    not), batched over the leading axes: the per-epoch diagnosis evaluates a block of
    epochs at once, and one call per epoch would cost more than the computation. Tested against torchmetrics.
    """
    probs = probs.detach().float().cpu()
    conf, pred = probs.max(-1)
    return binned_calibration_errors(conf, pred == target.detach().cpu(), n_bins)


def binned_calibration_errors(
    conf: torch.Tensor, correct: torch.Tensor, n_bins: int = N_BINS
) -> torch.Tensor:
    """:func:`expected_calibration_errors` from each sample's confidence ``conf`` (..., N) (the largest class
    probability, binned in float32) and whether its prediction is ``correct`` (..., N): one per leading index."""
    conf = conf.detach().float().cpu()
    lead, n = conf.shape[:-1], conf.shape[-1]
    if n == 0:
        return torch.full(lead, math.nan)
    conf = conf.reshape(-1, n)
    acc = correct.detach().cpu().expand(*lead, n).reshape(-1, n).to(conf.dtype)
    boundaries = torch.linspace(0, 1, n_bins + 1, dtype=conf.dtype)
    slots = n_bins + 1
    index = (torch.bucketize(conf, boundaries, right=True) - 1) + slots * torch.arange(len(conf))[:, None]
    index = index.reshape(-1)

    def per_bin(values: torch.Tensor) -> torch.Tensor:
        return (
            torch.zeros(len(conf) * slots, dtype=conf.dtype)
            .scatter_add_(0, index, values.reshape(-1))
            .reshape(-1, slots)
        )

    count = per_bin(torch.ones_like(conf))
    conf_bin = torch.nan_to_num(per_bin(conf) / count)
    acc_bin = torch.nan_to_num(per_bin(acc) / count)
    prop = count / count.sum(-1, keepdim=True)
    return (torch.abs(acc_bin - conf_bin) * prop).sum(-1).reshape(lead)


def expected_calibration_error(probs: torch.Tensor, target: torch.Tensor, n_bins: int = N_BINS) -> float:
    """ECE of one set of class probabilities ``probs`` (N, C): :func:`expected_calibration_errors`."""
    return float(expected_calibration_errors(probs, target, n_bins))


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
