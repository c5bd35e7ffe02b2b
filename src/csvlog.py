"""A CSV logger that continues ``<run>/csv/metrics.csv`` when a run is resumed.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts. This one keeps it:
when the run logs its first epoch ``e``, rows of epochs ``>= e`` (written after the checkpoint the
run resumed from, by the attempt that was interrupted) and rows a kill left half-written are
dropped, and the file is rewritten atomically; new rows are appended as usual.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from src.fileio import atomic_write_text


def _complete(row: dict[str, Any]) -> bool:
    """A row every field of which was written (a killed append may leave a short or garbled one)."""
    if None in row or any(v is None for v in row.values()):
        return False
    try:
        [float(v) for v in row.values() if v != ""]
    except ValueError:
        return False
    return True


def _write_rows(path: str, fieldnames: list[str], rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


class ResumableExperimentWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self._continued = False

    def _check_log_dir_exists(self) -> None:
        """Keep the existing file (Lightning's writer deletes it); stale rows go at the first log."""

    def _continue_from(self, epoch: float) -> None:
        self._continued = True
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            fieldnames = list(reader.fieldnames or [])
        kept = [r for r in rows if _complete(r) and r.get("epoch") and float(r["epoch"]) < epoch]
        if not kept:
            self._fs.rm_file(self.metrics_file_path)
            return
        self.metrics_keys = sorted(fieldnames)
        _write_rows(self.metrics_file_path, self.metrics_keys, kept)

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        if not self._continued and "epoch" in metrics_dict:
            self._continue_from(float(metrics_dict["epoch"]))
        super().log_metrics(metrics_dict, step)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if _complete(r)]
        _write_rows(self.metrics_file_path, fieldnames, rows)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives (and is continued by) a resumed run."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ResumableExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ResumableExperimentWriter(log_dir=self.log_dir)
        return self._experiment
