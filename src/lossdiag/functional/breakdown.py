"""Where a mean cross-entropy comes from: worst-k shares, correct vs wrong, the loss distribution.

Pure and vectorised (numpy/torch, no Lightning); works on one model's outputs on one split.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lossdiag.functional.calibration import LOGGED_CALIBRATION_KEYS
from lossdiag.functional.outputs import Evaluation, stack
from lossdiag.functional.softmax import class_softmax


def top_count(n: int, fraction: float) -> int:
    """How many samples "the worst ``fraction``" of ``n`` is: rounded, at least one."""
    return max(1, round(n * fraction))


def worst_indices(per_sample: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest losses, highest first (ties keep sample order)."""
    return np.argsort(-np.asarray(per_sample), kind="stable")[:k]


def top_share(per_sample: torch.Tensor, fraction: float) -> torch.Tensor:
    """Share of the total loss carried by the worst ``fraction`` of samples (at least one sample), per row of
    ``per_sample`` (..., N): a tensor of shape ``per_sample.shape[:-1]`` (0 where the total is not positive)."""
    k = top_count(per_sample.shape[-1], fraction)
    total = per_sample.sum(-1)
    worst = torch.topk(per_sample, k, dim=-1).values.sum(-1)
    return torch.where(total > 0, worst / total, torch.zeros_like(total))


def count_above_cap(per_sample: torch.Tensor, cap: float | torch.Tensor) -> torch.Tensor:
    """How many samples (per row) the bounded loss caps (non-finite losses count as above the cap)."""
    return (~(per_sample.double() <= torch.as_tensor(cap, dtype=torch.float64))).sum(-1)


DISTRIBUTION_NAMES = ("loss_median", "loss_p90", "loss_p99", "loss_max", "loss_top1pct_share")


def _sorted_distribution(ordered: torch.Tensor) -> torch.Tensor:
    """:data:`DISTRIBUTION_NAMES` of rows of finite, ascending per-sample losses (R, n): (R, 5)."""
    n = ordered.shape[-1]
    position = torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64) * (n - 1)
    low = position.floor().long()
    high = torch.clamp(low + 1, max=n - 1)
    quantiles = ordered[:, low] + (ordered[:, high] - ordered[:, low]) * (position - low)
    total = ordered.sum(-1)
    worst = ordered[:, n - top_count(n, 0.01) :].sum(-1)
    share = torch.where(total > 0, worst / total, torch.zeros_like(total))
    return torch.cat([quantiles, ordered[:, -1:], share[:, None]], dim=1)


def loss_distributions(per_sample: torch.Tensor, cap: float | torch.Tensor) -> dict[str, torch.Tensor]:
    """Median, p90, p99, max, worst-1% share of the total, and the count above the bounded cap, for every row
    of ``per_sample`` (..., N) (e.g. a block of epochs): float64 tensors of shape ``per_sample.shape[:-1]``.

    Non-finite values are left out of the quantiles (and counted above the cap). One sort gives them all:
    the quantiles interpolate linearly between order statistics, as ``torch.quantile`` does.
    """
    values = per_sample.detach().double().cpu()
    lead = values.shape[:-1]
    values = values.reshape(math.prod(lead), values.shape[-1])
    above = count_above_cap(values, cap).double()
    table = torch.full((len(values), len(DISTRIBUTION_NAMES)), float("nan"), dtype=torch.float64)
    finite = torch.isfinite(values)
    whole = finite.all(-1)
    if values.shape[-1] and bool(whole.any()):  # the usual case: one sort for every row at once
        table[whole] = _sorted_distribution(values[whole].sort(-1).values)
    for row in (~whole).nonzero()[:, 0].tolist():  # rows with non-finite losses, one at a time
        kept = values[row][finite[row]]
        if kept.numel():
            table[row] = _sorted_distribution(kept.sort().values[None])[0]
    out = {name: table[:, i].reshape(lead) for i, name in enumerate(DISTRIBUTION_NAMES)}
    return {**out, "n_above_cap": above.reshape(lead)}


def loss_distribution(per_sample: torch.Tensor, cap: float | torch.Tensor) -> dict[str, torch.Tensor]:
    """:func:`loss_distributions` of one set of per-sample losses (N,): scalar tensors."""
    return {k: v[0] for k, v in loss_distributions(per_sample[None], cap).items()}


def loss_decomposition(loss: np.ndarray, correct: np.ndarray) -> dict[str, np.ndarray]:
    """Split the mean loss into the parts carried by correct and by wrong predictions, per row of (..., N).

    ``loss_from_correct + loss_from_wrong`` equals the mean loss (each part is a sum over its samples
    divided by *all* samples); ``share_from_wrong`` is the wrong part's fraction of the total. Float64
    arrays of the leading shape (0-d for one set of samples: ``float()`` them).
    """
    loss = np.asarray(loss, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n = max(loss.shape[-1], 1)
    from_wrong = np.where(correct, 0.0, loss).sum(-1) / n
    from_correct = np.where(correct, loss, 0.0).sum(-1) / n
    total = from_wrong + from_correct
    positive = total > 0
    return {
        "loss_from_correct": from_correct,
        "loss_from_wrong": from_wrong,
        "share_from_wrong": np.where(positive, from_wrong / np.where(positive, total, 1.0), 0.0),
        "n_wrong": (~correct).sum(-1).astype(np.float64),
    }


def recompute_mean_ce(probs: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The seed's manual check: renormalise the saved probabilities (..., N, C), mean of ``-sum(onehot * log p)``
    per row (a 0-d array for one set: ``float()`` it)."""
    probs = np.asarray(probs, dtype=np.float64)
    index = np.broadcast_to(np.asarray(target), probs.shape[:-1])[..., None]
    # sum(onehot * -log p) has one non-zero term: the true class's (taken alone, not computed for every class)
    p_true = np.take_along_axis(probs, index, axis=-1)[..., 0] / probs.sum(axis=-1)
    with np.errstate(divide="ignore"):
        return np.mean(-np.log(p_true), axis=-1)


def mean_where(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of ``values`` where ``mask`` per row of (..., N), float64, nan where the mask is empty."""
    count = np.asarray(mask).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mask, np.asarray(values, dtype=np.float64), 0.0).sum(-1) / count


def correct_wrong_breakdown(ev: Evaluation, target: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`loss_decomposition` plus mean confidence on wrong and mean p(true) on correct predictions
    (per leading index of ``ev``; 0-d arrays for one evaluation)."""
    correct = ev.correct(target)
    return {
        **loss_decomposition(ev.loss, correct),
        "conf_wrong_mean": mean_where(ev.conf, ~correct),
        "p_true_correct_mean": mean_where(ev.p_true, correct),
    }


def epoch_scalar_block(logits: torch.Tensor, target: torch.Tensor, ev: Evaluation) -> dict[str, np.ndarray]:
    """The per-epoch scalars logged under ``val/`` for a block of epochs at once: decomposition, confidence,
    recompute check, calibration; ``logits`` (E, N, C), ``target`` (N,), ``ev`` with a leading epoch axis.
    Every value is a float64 array (E,).
    """
    y = target.detach().cpu().numpy()
    parts = correct_wrong_breakdown(ev, y)
    recomputed = recompute_mean_ce(class_softmax(logits.detach().double().cpu()).numpy(), y)
    mean_loss = np.mean(ev.loss, axis=-1, dtype=np.float64)
    return {
        "loss_from_correct": parts["loss_from_correct"],
        "loss_from_wrong": parts["loss_from_wrong"],
        "loss_share_wrong": parts["share_from_wrong"],
        "n_wrong": parts["n_wrong"],
        "loss_top5pct_share": top_share(torch.as_tensor(ev.loss, dtype=torch.float64), 0.05).numpy(),
        "conf_wrong_mean": parts["conf_wrong_mean"],
        "p_true_correct_mean": parts["p_true_correct_mean"],
        "loss_recomputed": recomputed,
        "loss_recompute_error": np.abs(recomputed - mean_loss),
        **{
            k: np.asarray(ev.calibration[k], dtype=np.float64)
            for k in LOGGED_CALIBRATION_KEYS
            if k in ev.calibration
        },
    }


def epoch_scalars(logits: torch.Tensor, target: torch.Tensor, ev: Evaluation) -> dict[str, float]:
    """:func:`epoch_scalar_block` of one epoch: ``logits`` (N, C), ``ev`` of that epoch."""
    return {k: float(v[0]) for k, v in epoch_scalar_block(logits[None], target, stack([ev])).items()}


def equal_width_histograms(per_sample: np.ndarray, bins: int) -> dict[str, np.ndarray]:
    """Histograms of every row of ``per_sample`` (E, N) in ``bins`` equal-width bins between the row's finite
    minimum and maximum (``numpy.histogram``'s bins, its last one closed; non-finite values left out), at once.

    Returns ``edges`` (E, bins + 1), ``counts`` (E, bins) and per row ``min``, ``max``, ``num``, ``sum``,
    ``sum_squares`` of the finite values (a row without any: zeros).
    """
    values = np.asarray(per_sample, dtype=np.float64)
    values = values.reshape(math.prod(values.shape[:-1]), values.shape[-1])
    finite = np.isfinite(values)
    num = finite.sum(-1)
    lo = np.where(finite, values, np.inf).min(-1, initial=np.inf)
    hi = np.where(finite, values, -np.inf).max(-1, initial=-np.inf)
    lo, hi = np.where(num > 0, lo, 0.0), np.where(num > 0, hi, 0.0)
    flat = lo == hi  # as numpy.histogram: a single value gets the range value +- 0.5
    first, last = np.where(flat, lo - 0.5, lo), np.where(flat, hi + 0.5, hi)
    edges = first[:, None] + (last - first)[:, None] * np.linspace(0.0, 1.0, bins + 1)[None]
    clean = np.where(finite, values, first[:, None])
    index = np.clip(
        ((clean - first[:, None]) * (bins / (last - first))[:, None]).astype(np.int64), 0, bins - 1
    )
    # as numpy.histogram: a value the scaling put one bin off its edges goes back (edges are closed on the left)
    index -= clean < np.take_along_axis(edges, index, axis=1)
    index += (clean >= np.take_along_axis(edges, index + 1, axis=1)) & (index != bins - 1)
    rows = np.arange(len(values))[:, None] * bins
    counts = np.bincount((index + rows).ravel(), weights=finite.ravel(), minlength=len(values) * bins)
    kept = np.where(finite, values, 0.0)
    return {
        "edges": edges,
        "counts": counts.reshape(len(values), bins),
        "min": lo,
        "max": hi,
        "num": num,
        "sum": kept.sum(-1),
        "sum_squares": (kept * kept).sum(-1),
    }
