"""Callbacks that write per-sample views of the loss to TensorBoard."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from src.diagnostics import loss_distribution


def tensorboard_writer(trainer: L.Trainer):
    """The ``SummaryWriter`` of the run's TensorBoard logger on rank 0, else ``None``."""
    if trainer.global_rank != 0:
        return None
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class LossDistributionLogger(L.Callback):
    """Every epoch, for train and val: a histogram of per-sample cross-entropy, and scalars
    ``<stage>/loss_median``, ``loss_p90``, ``loss_p99``, ``loss_max``, ``loss_top1pct_share``
    (share of the total loss carried by the worst 1% of samples) and ``n_above_cap``.

    The histogram shows what the mean hides: a few samples with losses of 10-30+ next to a bulk
    near zero. Non-finite losses are left out of the histogram (and counted above the cap).
    """

    def __init__(self, stages: tuple[str, ...] = ("train", "val")) -> None:
        self.stages = tuple(stages)

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # every rank computes (the records gather across processes); rank 0 writes
        ce = pl_module.epoch_records(stage).cross_entropy
        stats = loss_distribution(ce, pl_module.loss_cap)
        pl_module.log_dict({f"{stage}/{name}": value.float() for name, value in stats.items()}, on_epoch=True)
        writer = tensorboard_writer(trainer)
        finite = ce[torch.isfinite(ce)]
        if writer is not None and finite.numel():
            writer.add_histogram(f"{stage}/loss_per_sample", finite.cpu(), global_step=trainer.global_step)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "val" in self.stages and not trainer.sanity_checking:
            self._log(trainer, pl_module, "val")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "train" in self.stages:
            self._log(trainer, pl_module, "train")
