"""Epoch-level values to every logger in one write, plotted against the epoch.

``self.log`` is for values Lightning must reduce, sync, monitor or show, and costs ~0.2 ms per call.
Values that are already gathered (per-sample records, de-duplicated once per epoch) go straight to
the loggers, as Lightning's own ``LearningRateMonitor`` does: one ``logger.log_metrics`` call per
epoch with ``step=epoch``, one device-to-host copy for all of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import lightning as L
import torch
from lightning.pytorch.loggers import Logger


def as_floats(values: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
    """Scalar tensors and numbers as plain floats, with one device-to-host copy for all tensors."""
    tensors = {k: v for k, v in values.items() if torch.is_tensor(v)}
    out = {k: float(v) for k, v in values.items() if not torch.is_tensor(v)}
    if tensors:
        stacked = (
            torch.stack([v.detach().reshape(()).to(torch.float64) for v in tensors.values()]).cpu().tolist()
        )
        out.update(zip(tensors, stacked, strict=True))
    return out


def log_epoch_metrics(
    trainer: L.Trainer,
    values: Mapping[str, torch.Tensor | float],
    epoch: int,
    loggers: Sequence[Logger] | None = None,
) -> dict[str, float]:
    """Send ``values`` (plus ``epoch``) to every logger of ``trainer`` (or only to ``loggers``) at ``step=epoch``;
    returns them as floats.

    Loggers write on rank 0 only (their ``log_metrics`` is rank-zero-only), so every rank may call this.
    """
    floats = as_floats(values)
    loggers = trainer.loggers if loggers is None else loggers
    if loggers and not trainer.sanity_checking:
        record = {**floats, "epoch": float(epoch)}
        for logger in loggers:
            logger.log_metrics(record, step=epoch)
    return floats
