"""Stop a run whose training loss turns non-finite, before the bad weights reach a checkpoint.

Per step this costs a list append (no tensor op, no ``.item()``, no device sync): the epoch's losses are
looked at together once per epoch, before validation (so before a checkpoint is saved) and at the
end of the training epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from lossdiag.errors import UserError


def _saved_paths(callback: Any) -> list[str]:
    return [
        p for p in (getattr(callback, "best_model_path", ""), getattr(callback, "last_model_path", "")) if p
    ]


class NonFiniteLossGuard(L.Callback):
    """Raise :class:`UserError` naming epoch and step when a training loss was NaN or inf.

    The run's checkpoints (``last.ckpt`` as last saved, at most ``every_s`` before), CSV and TensorBoard files
    up to the previous epoch are kept as they are.
    """

    def __init__(self) -> None:
        self._losses: list[torch.Tensor] | None = None  # this epoch's training losses
        self._batches: list[int] = []  # and their batch indices
        self._epoch_start_step = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._losses, self._batches = [], []
        self._epoch_start_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if self._losses is None or not torch.is_tensor(loss):
            return
        self._losses.append(loss.detach().reshape(()))
        self._batches.append(batch_idx)

    def _first_bad(self, device: torch.device) -> torch.Tensor:
        """The first batch index of this epoch whose loss was NaN/inf, or -1 (a 0-d tensor on ``device``)."""
        if not self._losses:
            return torch.full((), -1, dtype=torch.long, device=device)
        bad = ~torch.isfinite(torch.stack(self._losses).float())
        index = torch.tensor(self._batches, device=bad.device)
        first = torch.where(bad, index, torch.iinfo(torch.long).max).min()
        return torch.where(bad.any(), first, -1).to(device)

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._losses is None:
            return
        flags = pl_module.all_gather(self._first_bad(pl_module.device)).flatten()
        bad = flags[flags >= 0]
        if bad.numel() == 0:
            self._losses, self._batches = [], []  # checked: the next check looks only at later steps
            return
        step = int(bad.min())
        self._losses = None
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
