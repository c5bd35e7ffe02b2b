"""Stop a run whose training loss turns non-finite, before the bad weights reach a checkpoint.

Per step this costs two tensor ops (no ``.item()``, no device sync): the first non-finite step of
the epoch is remembered in a tensor. It is looked at once per epoch, before validation (so before
``ModelCheckpoint`` saves) and at the end of the training epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from src.errors import UserError


def _saved_paths(callback: Any) -> list[str]:
    return [
        p for p in (getattr(callback, "best_model_path", ""), getattr(callback, "last_model_path", "")) if p
    ]


class NonFiniteLossGuard(L.Callback):
    """Raise :class:`UserError` naming epoch and step when a training loss was NaN or inf.

    The run's checkpoints (``last.ckpt`` of the previous epoch), CSV and TensorBoard files up to
    the previous epoch are kept as they are.
    """

    def __init__(self) -> None:
        self._first_bad: torch.Tensor | None = None
        self._epoch_start_step = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first_bad = torch.full((), -1, dtype=torch.long, device=pl_module.device)
        self._epoch_start_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if self._first_bad is None or not torch.is_tensor(loss):
            return
        first = self._first_bad
        self._first_bad = torch.where(first.lt(0) & ~torch.isfinite(loss.detach()), batch_idx, first)

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._first_bad is None:
            return
        flags = pl_module.all_gather(self._first_bad).flatten()
        bad = flags[flags >= 0]
        if bad.numel() == 0:
            return
        step = int(bad.min())
        self._first_bad = None
        raise UserError(self.message(trainer, step))

    def message(self, trainer: L.Trainer, step: int) -> str:
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        saved = sorted(
            {Path(p) for cb in trainer.checkpoint_callbacks for p in _saved_paths(cb) if Path(p).is_file()}
        )
        kept = (
            f"the checkpoints of the epochs before ({', '.join(map(str, saved))}) are kept"
            if saved
            else ("no checkpoint had been saved yet")
        )
        return (
            f"training loss became NaN/inf in epoch {trainer.current_epoch}, step {step} of that epoch "
            f"(global step {self._epoch_start_step + step}); {kept}: lower optimizer.lr (it was {lr:g}) "
            "or use loss=bounded"
            if lr is not None
            else f"training loss became NaN/inf in epoch {trainer.current_epoch}, step {step}; {kept}"
        )

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self._check(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer, pl_module)
