"""A callback that records the wall time of every epoch of a Lightning run (train + val + epoch-end work)."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import lightning as L


class EpochTimer(L.Callback):
    """Wall time from one ``on_train_epoch_start`` to the next (the last one ends at ``on_train_end``).

    That span holds everything the user pays for an epoch: the training steps, validation, every
    epoch-end hook (metrics, loggers, checkpoints, diagnostics). The times are written as JSON
    ``{"epoch_s": [...]}`` to ``record`` at the end of training, so a run started from a config
    (``+callbacks.timer._target_=benchmarks.timing.EpochTimer``) can be read back.
    """

    def __init__(self, record: str) -> None:
        self.record = Path(record)
        self.starts: list[float] = []
        self.end: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.end = time.perf_counter()
        self.record.parent.mkdir(parents=True, exist_ok=True)
        self.record.write_text(json.dumps({"epoch_s": self.epoch_seconds()}))

    def epoch_seconds(self) -> list[float]:
        marks = [*self.starts, self.end] if self.end is not None else self.starts
        return [b - a for a, b in itertools.pairwise(marks)]
