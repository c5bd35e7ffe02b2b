"""Where a mean cross-entropy comes from: worst-k shares, correct vs wrong, the loss distribution.

Pure and vectorised (numpy/torch, no Lightning); works on one model's outputs on one split.
"""

from __future__ import annotations

import numpy as np
import torch

from src.functional.outputs import LOGGED_CALIBRATION_KEYS, Evaluation


def top_count(n: int, fraction: float) -> int:
    """How many samples "the worst ``fraction``" of ``n`` is: rounded, at least one."""
    return max(1, round(n * fraction))


def worst_indices(per_sample: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest losses, highest first (ties keep sample order)."""
    return np.argsort(-np.asarray(per_sample), kind="stable")[:k]


def top_share(per_sample: torch.Tensor, fraction: float) -> torch.Tensor:
    """Share of the total loss carried by the worst ``fraction`` of samples (at least one sample)."""
    k = top_count(per_sample.numel(), fraction)
    total = per_sample.sum()
    worst = torch.topk(per_sample, k).values.sum()
    return worst / total if total > 0 else torch.zeros((), dtype=per_sample.dtype, device=per_sample.device)


def count_above_cap(per_sample: torch.Tensor, cap: float | torch.Tensor) -> torch.Tensor:
    """How many samples the bounded loss caps (non-finite losses count as above the cap)."""
    return (~(per_sample.double() <= torch.as_tensor(cap, dtype=torch.float64))).sum()


def loss_distribution(per_sample: torch.Tensor, cap: float | torch.Tensor) -> dict[str, torch.Tensor]:
    """Median, p90, p99, max, worst-1% share of the total, and the count above the bounded cap.

    Non-finite values are left out of the quantiles (and counted above the cap). One sort gives them all:
    the quantiles interpolate linearly between order statistics, as ``torch.quantile`` does.
    """
    values = per_sample.detach().double()
    finite = values[torch.isfinite(values)]
    above = count_above_cap(values, cap).double()
    names = ("loss_median", "loss_p90", "loss_p99", "loss_max", "loss_top1pct_share")
    n = finite.numel()
    if n == 0:
        return {**dict.fromkeys(names, torch.tensor(float("nan"), dtype=torch.float64)), "n_above_cap": above}
    ordered = finite.sort().values
    position = torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64) * (n - 1)
    low = position.floor().long()
    high = torch.clamp(low + 1, max=n - 1)
    quantiles = ordered[low] + (ordered[high] - ordered[low]) * (position - low)
    total = ordered.sum()
    worst = ordered[n - top_count(n, 0.01) :].sum()
    share = worst / total if total > 0 else torch.zeros((), dtype=torch.float64)
    return {**dict(zip(names, (*quantiles.unbind(), ordered[-1], share), strict=True)), "n_above_cap": above}


def loss_decomposition(loss: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    """Split the mean loss into the parts carried by correct and by wrong predictions.

    ``loss_from_correct + loss_from_wrong`` equals the mean loss (each part is a sum over its samples
    divided by *all* samples); ``share_from_wrong`` is the wrong part's fraction of the total.
    """
    loss = np.asarray(loss, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n = max(len(loss), 1)
    from_wrong = float(loss[~correct].sum() / n)
    from_correct = float(loss[correct].sum() / n)
    total = from_wrong + from_correct
    return {
        "loss_from_correct": from_correct,
        "loss_from_wrong": from_wrong,
        "share_from_wrong": from_wrong / total if total > 0 else 0.0,
        "n_wrong": float((~correct).sum()),
    }


def recompute_mean_ce(probs: np.ndarray, target: np.ndarray) -> float:
    """The seed's manual check: renormalise the saved probabilities, mean of ``-sum(onehot * log p)``."""
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(axis=-1, keepdims=True)
    onehot = np.eye(probs.shape[1])[np.asarray(target)]
    with np.errstate(divide="ignore"):
        return float(np.mean(np.sum(onehot * -np.log(probs), axis=-1, where=onehot > 0)))


def mean_where(values: np.ndarray, mask: np.ndarray) -> float:
    """Mean of ``values[mask]`` in float64, nan when the mask is empty."""
    picked = np.asarray(values, dtype=np.float64)[mask]
    return float(picked.mean()) if picked.size else float("nan")


def correct_wrong_breakdown(ev: Evaluation, target: np.ndarray) -> dict[str, float]:
    """:func:`loss_decomposition` plus mean confidence on wrong and mean p(true) on correct predictions."""
    correct = ev.correct(target)
    return {
        **loss_decomposition(ev.loss, correct),
        "conf_wrong_mean": mean_where(ev.conf, ~correct),
        "p_true_correct_mean": mean_where(ev.p_true, correct),
    }


def epoch_scalars(logits: torch.Tensor, target: torch.Tensor, ev: Evaluation) -> dict[str, float]:
    """The per-epoch scalars logged under ``val/``: decomposition, confidence, recompute check, calibration."""
    y = target.detach().cpu().numpy()
    parts = correct_wrong_breakdown(ev, y)
    recomputed = recompute_mean_ce(logits.detach().double().cpu().softmax(1).numpy(), y)
    mean_loss = float(np.mean(ev.loss, dtype=np.float64))
    return {
        "loss_from_correct": parts["loss_from_correct"],
        "loss_from_wrong": parts["loss_from_wrong"],
        "loss_share_wrong": parts["share_from_wrong"],
        "n_wrong": parts["n_wrong"],
        "loss_top5pct_share": float(top_share(torch.as_tensor(ev.loss, dtype=torch.float64), 0.05)),
        "conf_wrong_mean": parts["conf_wrong_mean"],
        "p_true_correct_mean": parts["p_true_correct_mean"],
        "loss_recomputed": recomputed,
        "loss_recompute_error": abs(recomputed - mean_loss),
        **{k: float(ev.calibration[k]) for k in LOGGED_CALIBRATION_KEYS if k in ev.calibration},
    }
