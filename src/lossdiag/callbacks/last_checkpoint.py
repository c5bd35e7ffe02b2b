"""``checkpoints/last.ckpt``, what a resumed run continues from, written at most every ``every_s`` seconds.

A checkpoint costs ~2-3 ms (Lightning gathers the loops', callbacks' and optimizer's state; torch
serialises it). That is noise for an epoch of seconds and 10-15% of an epoch of the 150-digit default
run. Saving at the end of every epoch that ends at least ``every_s`` seconds after the last save (and
always after the first and the last epoch (``max_epochs`` or ``max_steps``), and when training is told to stop) bounds both: a kill loses
at most ``every_s`` seconds of training plus one epoch.
"""

from __future__ import annotations

import time

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from lossdiag.errors import UserError


def is_last_epoch(trainer: L.Trainer) -> bool:
    """Whether the epoch now ending is the run's last: ``max_epochs`` reached, or ``max_steps``."""
    by_epochs = trainer.max_epochs is not None and 0 < trainer.max_epochs <= trainer.current_epoch + 1
    return by_epochs or 0 < trainer.max_steps <= trainer.global_step


class LastCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` for ``last.ckpt`` (no monitor, one file), throttled to ``every_s``.

    It stays a ``ModelCheckpoint``, so Lightning runs it after every other callback's epoch end (their
    state in the checkpoint is that of the finished epoch) and ``trainer.checkpoint_callbacks`` lists it.
    """

    def __init__(self, dirpath: str, filename: str = "last", every_s: float = 1.0) -> None:
        if float(every_s) < 0:
            raise UserError(
                f"callbacks.last_checkpoint.every_s={every_s} must be >= 0 (0: after every epoch)"
            )
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            monitor=None,
            save_top_k=1,
            every_n_epochs=1,
            enable_version_counter=False,
            # always from on_train_epoch_end, where every_s is checked (with validation less often than every
            # epoch, ModelCheckpoint would otherwise save from on_validation_end, unthrottled)
            save_on_train_epoch_end=True,
        )
        self.every_s = float(every_s)
        self._saved_at: float | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.monotonic()
        if (
            self._saved_at is None
            or now - self._saved_at >= self.every_s
            or is_last_epoch(trainer)
            or trainer.should_stop
        ):
            super().on_train_epoch_end(trainer, pl_module)
            self._saved_at = now
