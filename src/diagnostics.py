"""Pure, vectorised summaries of per-sample losses (no Lightning needed)."""

from __future__ import annotations

import numpy as np
import torch


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

    Non-finite values are left out of the quantiles (and counted above the cap).
    """
    values = per_sample.detach().double()
    finite = values[torch.isfinite(values)]
    if finite.numel() == 0:
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        quantiles = [nan, nan, nan]
        maximum = share = nan
    else:
        quantiles = list(torch.quantile(finite, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)).unbind())
        maximum = finite.max()
        share = top_share(finite, 0.01)
    above = count_above_cap(values, cap)
    return {
        "loss_median": quantiles[0],
        "loss_p90": quantiles[1],
        "loss_p99": quantiles[2],
        "loss_max": maximum,
        "loss_top1pct_share": share,
        "n_above_cap": above.double(),
    }
