"""Callbacks that write per-sample views of the loss to TensorBoard."""

from __future__ import annotations

from typing import Any

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


# metrics the TensorBoard HParams tab shows next to each run's config (values come from the scalars)
HPARAM_METRICS = ("val/acc_best", "val/acc", "val/loss", "val/loss_bounded", "val/ece")


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"lr": 0.1}}`` -> ``{"optimizer/lr": 0.1}``; lists and ``None`` become strings."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{name}/"))
        else:
            flat[name] = value if isinstance(value, bool | int | float | str) else str(value)
    return flat


def log_hparams(trainer: L.Trainer, config: dict[str, Any]) -> None:
    """Write the run's config to TensorBoard's HParams tab (rank 0), declaring :data:`HPARAM_METRICS`.

    Lightning's ``log_hyperparams`` only writes the HParams summary together with metric values,
    which would add a fake step-0 point to those curves; the summary alone is enough for TensorBoard.
    """
    writer = tensorboard_writer(trainer)
    if writer is None:
        return
    from torch.utils.tensorboard.summary import hparams

    for summary in hparams(flatten_config(config), dict.fromkeys(HPARAM_METRICS, 0.0)):
        writer.file_writer.add_summary(summary)
    writer.flush()


class HParamsLogger(L.Callback):
    """Calls :func:`log_hparams` at the start of fit, inside the training process(es), so spawned
    multi-process runs write it into rank 0's event file rather than opening one in the launcher."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_hparams(trainer, self.config)


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
