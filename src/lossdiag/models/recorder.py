"""Per-sample records (sample index, true class, logits) gathered across steps and processes."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lossdiag.functional.losses import per_sample_cross_entropy


class SampleRecords(NamedTuple):
    """One epoch's per-sample outputs, sorted by sample index, each index exactly once."""

    index: torch.Tensor  # (N,) long
    target: torch.Tensor  # (N,) long
    logits: torch.Tensor  # (N, C) float

    @property
    def cross_entropy(self) -> torch.Tensor:
        return per_sample_cross_entropy(self.logits, self.target)

    def __len__(self) -> int:
        return len(self.index)


def deduplicate(index: torch.Tensor) -> torch.Tensor:
    """Positions that keep the first occurrence of every index, sorted by index.

    ``DistributedSampler``-style sharding pads the last batch by repeating samples; this drops them.
    """
    order = torch.argsort(index, stable=True)
    sorted_idx = index[order]
    keep = torch.ones_like(sorted_idx, dtype=torch.bool)
    keep[1:] = sorted_idx[1:] != sorted_idx[:-1]
    return order[keep]


class SampleRecorder(Metric):
    """Collects ``(index, target, logits)`` per step; ``compute`` gathers all processes and de-duplicates.

    Updating is a list append, so it costs nothing measurable per step; everything per-sample
    (cross-entropy, probabilities, calibration) is derived once per epoch from the result.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("index", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self.add_state("logits", default=[], dist_reduce_fx="cat")

    def update(self, index: torch.Tensor, target: torch.Tensor, logits: torch.Tensor) -> None:  # type: ignore[override]
        self.index.append(index.detach())
        self.target.append(target.detach())
        self.logits.append(logits.detach().float())

    def compute(self) -> SampleRecords:  # type: ignore[override]
        index, target, logits = dim_zero_cat(self.index), dim_zero_cat(self.target), dim_zero_cat(self.logits)
        keep = deduplicate(index)
        return SampleRecords(index[keep], target[keep], logits[keep])
