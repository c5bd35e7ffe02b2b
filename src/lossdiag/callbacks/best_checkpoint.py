"""``checkpoints/<filename>.ckpt``: the weights of the epoch with the best monitored value (``best_val_acc``:
``val/acc``, ``min_val_loss``: ``val/loss``).

Lightning's ``ModelCheckpoint`` can only monitor what went through ``self.log``, and one ``self.log``
call costs ~0.4 ms per epoch here (Lightning moves its result collection to the device on every call),
5% of an epoch of the 150-digit default run. The module already has every epoch value, gathered and
de-duplicated, in ``epoch_values``; this checkpoint reads the monitored one there (or, for other
modules, from ``trainer.callback_metrics``) and saves with the public ``trainer.save_checkpoint``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

from lossdiag.errors import UserError

MODES = ("max", "min")


class BestCheckpoint(Checkpoint):
    """Save ``<dirpath>/<filename>.ckpt`` at the end of each training epoch whose validation's ``monitor`` beats
    every earlier one (strictly: ``mode="max"`` higher, ``"min"`` lower); a ``monitor`` the module does not
    report is a one-line error at the first validation. ``best_model_path`` and ``best_model_score`` name
    it, as ``ModelCheckpoint``'s do; a resumed run keeps them (they are in the checkpoint)."""

    def __init__(
        self, dirpath: str, filename: str = "best", monitor: str = "val/acc", mode: str = "max"
    ) -> None:
        if mode not in MODES:
            raise UserError(f"callbacks.checkpoint.mode={mode} is not one of {', '.join(MODES)}")
        self.dirpath = Path(dirpath)
        self.filename = filename
        self.monitor = monitor
        self.mode = mode
        self.best_model_score: float | None = None
        self.best_model_path = ""
        self._latest: float | None = None  # the monitored value of this epoch's validation

    def _value(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        values = getattr(pl_module, "epoch_values", None)
        if isinstance(values, dict) and self.monitor in values:
            return float(values[self.monitor])
        logged = trainer.callback_metrics.get(self.monitor)
        if logged is None:
            known = sorted({*(values or {}), *trainer.callback_metrics})
            raise UserError(
                f"callbacks.checkpoint.monitor={self.monitor} is not a value the module reports after validation: "
                f"use one of {', '.join(known) or '(none)'}"
            )
        return float(logged)

    def _better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best_model_score is None:
            return True
        return value > self.best_model_score if self.mode == "max" else value < self.best_model_score

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._latest = self._value(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # at the end of the training epoch, as ModelCheckpoint does: after every other callback's epoch end and
        # the epoch's scheduler step, so the checkpoint is the finished epoch
        value, self._latest = self._latest, None
        better = value is not None and self._better(value)
        if not trainer.strategy.reduce_boolean_decision(
            better, all=True
        ):  # every process agrees, or none saves
            return
        path = self.dirpath / f"{self.filename}.ckpt"
        self.best_model_score, self.best_model_path = value, str(path)
        trainer.save_checkpoint(path, weights_only=False)  # the whole state: a resume may start from it

    @property
    def state_key(self) -> str:
        # one per monitored value and file, so several (val/acc, val/loss) can live in one Trainer and its checkpoints
        return f"{type(self).__qualname__}{{monitor={self.monitor}, filename={self.filename}}}"

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "best_model_score": self.best_model_score,
            "best_model_path": self.best_model_path,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("monitor") == self.monitor:
            self.best_model_score = state_dict.get("best_model_score")
            self.best_model_path = state_dict.get("best_model_path", "")
