"""Timing helpers: wall and CPU time per epoch, for plain loops and for Lightning runs (a callback)."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import lightning as L


def now() -> tuple[float, float]:
    """``(wall, cpu)`` seconds. CPU time is this process's, all threads (e.g. TensorBoard's writer) included:
    unlike wall time it does not grow when other processes take the cores, so it compares runs fairly on a
    busy machine."""
    return time.perf_counter(), time.process_time()


def spans(marks: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds between consecutive ``now()`` marks."""
    pairs = list(itertools.pairwise(marks))
    return [b[0] - a[0] for a, b in pairs], [b[1] - a[1] for a, b in pairs]


class EpochTimer(L.Callback):
    """Time from one ``on_train_epoch_start`` to the next (the last one ends at ``on_train_end``).

    That span holds everything the user pays for an epoch: the training steps, validation, every
    epoch-end hook (metrics, loggers, checkpoints, diagnostics). The times are written as JSON
    ``{"epoch_s": [...], "epoch_cpu_s": [...]}`` to ``record`` at the end of training, so a run started
    from a config (``+callbacks.timer._target_=benchmarks.timing.EpochTimer``) can be read back.
    """

    def __init__(self, record: str) -> None:
        self.record = Path(record)
        self.marks: list[tuple[float, float]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.marks.append(now())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.marks.append(now())
        wall, cpu = spans(self.marks)
        self.record.parent.mkdir(parents=True, exist_ok=True)
        self.record.write_text(json.dumps({"epoch_s": wall, "epoch_cpu_s": cpu}))


class FitMarks(L.Callback):
    """Wall-clock timestamps (``time.time()``, comparable across processes) of a run's milestones, written as JSON
    ``{"first_batch": t, "epochs": [[start, end], ...], "train_end": t}`` to ``record`` when training ends.

    An epoch spans ``on_train_epoch_start`` to the next one (the last ends at ``on_train_end``): the training
    steps, validation and every epoch-end hook. What follows ``train_end`` (the end-of-fit evaluations,
    reports, figures) lasts until the process exits, which whoever started it can time.
    """

    def __init__(self, record: str) -> None:
        self.record = Path(record)
        self.first_batch: float | None = None
        self.starts: list[float] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        if self.first_batch is None:
            self.first_batch = time.time()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.starts.append(time.time())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        end = time.time()
        bounds = [*self.starts, end]
        marks = {
            "first_batch": self.first_batch,
            "epochs": list(itertools.pairwise(bounds)),
            "train_end": end,
        }
        self.record.parent.mkdir(parents=True, exist_ok=True)
        self.record.write_text(json.dumps(marks))
