"""Give the memory that training frees back to the operating system: :func:`lossdiag.memory.release_free_heap`
every few batches (see :mod:`lossdiag.memory` for why and what it costs)."""

from __future__ import annotations

from typing import Any

import lightning as L

from lossdiag.memory import release_free_heap


class HeapTrim(L.Callback):
    """Every ``every_n_batches`` training and validation batches, and at every epoch's end,
    :func:`~lossdiag.memory.release_free_heap` when more than ``min_free_mb`` is free. The pipeline adds it to
    every run (``lossdiag.app.pipeline.build_trainer``)."""

    def __init__(self, every_n_batches: int = 8, min_free_mb: float = 64) -> None:
        self.every_n_batches = every_n_batches
        self.min_free_bytes = int(min_free_mb * 2**20)
        self.trims = 0

    def _maybe(self, batch_idx: int | None = None) -> None:
        if batch_idx is None or batch_idx % self.every_n_batches == self.every_n_batches - 1:
            self.trims += release_free_heap(self.min_free_bytes)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._maybe(batch_idx)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._maybe(batch_idx)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._maybe()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._maybe()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._maybe()  # what decoding and setting up the data freed
