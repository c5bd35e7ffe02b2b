"""TensorBoard glue: the run's ``SummaryWriter``, and its HParams tab."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

# metrics the TensorBoard HParams tab shows next to each run's config (values come from the scalars)
HPARAM_METRICS = ("val/acc_best", "val/acc", "val/loss", "val/loss_bounded", "val/ece")


def tensorboard_writer(trainer: L.Trainer) -> Any:
    """The ``SummaryWriter`` of the trainer's TensorBoard logger on rank 0, else ``None``."""
    if trainer.global_rank != 0:
        return None
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


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
