"""Pure, vectorised summaries of per-sample losses (no Lightning needed)."""

from __future__ import annotations

import torch


def top_share(per_sample: torch.Tensor, fraction: float) -> torch.Tensor:
    """Share of the total loss carried by the worst ``fraction`` of samples (at least one sample)."""
    n = per_sample.numel()
    k = max(1, round(n * fraction))
    total = per_sample.sum()
    worst = torch.topk(per_sample, k).values.sum()
    return worst / total if total > 0 else torch.zeros((), dtype=per_sample.dtype, device=per_sample.device)


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
    above = (~(values <= torch.as_tensor(cap, dtype=torch.float64))).sum()
    return {
        "loss_median": quantiles[0],
        "loss_p90": quantiles[1],
        "loss_p99": quantiles[2],
        "loss_max": maximum,
        "loss_top1pct_share": share,
        "n_above_cap": above.double(),
    }
