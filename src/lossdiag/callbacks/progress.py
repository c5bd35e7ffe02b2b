"""Progress on the console: a tqdm bar on a terminal, one line every few epochs otherwise.

A redirected tqdm bar writes hundreds of carriage-return fragments per run into the log file; when
stdout is not a terminal (a file, a pipe, a sweep's job log) :class:`EpochLines` prints one readable
line per ``every_n_epochs`` epochs instead (through logging, so it is also in ``train.log``).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

from lossdiag.callbacks.console import announce
from lossdiag.callbacks.last_checkpoint import is_last_epoch

log = logging.getLogger(__name__)
PROGRESS_KEYS = ("val/loss", "val/acc")  # the two numbers the story is about, first on every line


def with_epoch_values(metrics: dict[str, Any], pl_module: L.LightningModule) -> dict[str, Any]:
    """The progress bar's metrics plus the module's ``val/loss`` and ``val/acc`` from its ``epoch_values``
    (``LossDiagModule`` sends every epoch value to the loggers and keeps it there, nothing through ``self.log``)."""
    values = getattr(pl_module, "epoch_values", None)
    if isinstance(values, dict):
        shown = {k: values[k] for k in PROGRESS_KEYS if isinstance(values.get(k), float)}
        metrics = {**shown, **{k: v for k, v in metrics.items() if k not in shown}}
    return metrics


class ProgressBarWithEpochValues(TQDMProgressBar):
    """Lightning's tqdm bar showing :func:`with_epoch_values`."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return with_epoch_values(super().get_metrics(trainer, pl_module), pl_module)


class EpochLines(ProgressBar):
    """``epoch 9 (10/100 done): val/loss 0.3647, val/acc 0.9065`` every ``every_n_epochs`` epochs and at the last.

    Epochs are numbered from 0, as TensorBoard's x-axis, the CSV and the verdict number them.
    """

    def __init__(self, every_n_epochs: int = 10) -> None:
        super().__init__()
        self.every_n_epochs = max(1, int(every_n_epochs))
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after the epoch's validation, so its val/* values are in the progress bar metrics
        if not self._enabled or trainer.global_rank != 0:
            return
        done, total = trainer.current_epoch + 1, trainer.max_epochs
        if done % self.every_n_epochs and not is_last_epoch(trainer):
            return
        metrics = with_epoch_values(self.get_metrics(trainer, pl_module), pl_module)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        announce(log, f"epoch {trainer.current_epoch} ({done}/{total} done): {shown}")


def progress_bar(refresh_rate: int = 10, every_n_epochs: int = 10) -> ProgressBar:
    """tqdm (``refresh_rate`` steps) when stdout is a terminal, else :class:`EpochLines` (``every_n_epochs``)."""
    if sys.stdout.isatty():
        return ProgressBarWithEpochValues(refresh_rate=refresh_rate)
    return EpochLines(every_n_epochs=every_n_epochs)
