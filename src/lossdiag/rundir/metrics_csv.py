"""``<run>/csv/metrics.csv``: one row per logged record of epoch-level metrics, continued by a resumed run.

:class:`MetricsCSV` writes the file (Lightning's ``CSVLogger`` would delete an existing one at start);
:func:`read_history` reads it back merged per epoch. When a run resumes and logs its first epoch ``e``,
rows of epochs ``>= e`` (written after the checkpoint it resumed from, by the attempt that was
interrupted) and rows a kill left half-written are dropped, and the file is rewritten atomically;
new rows are appended.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lossdiag.rundir.atomic import atomic_write_text
from lossdiag.rundir.paths import METRICS_CSV


def _complete(row: dict[str, Any]) -> bool:
    """A row every field of which was written (a killed append may leave a short or garbled one)."""
    if None in row or any(v is None for v in row.values()):
        return False
    try:
        [float(v) for v in row.values() if v != ""]
    except ValueError:
        return False
    return True


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        return [], []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [r for r in reader if _complete(r)]
        return list(reader.fieldnames or []), rows


class MetricsCSV:
    """Appends records ``{"epoch": e, "step": s, metric: value, ...}``; new columns rewrite the file once."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.fieldnames: list[str] = []
        self._started = False
        self._handle: Any = None  # kept open for appends; closed before any rewrite

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        self.close()
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.fieldnames, restval="")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buffer.getvalue())

    def _start(self, epoch: float) -> None:
        """Keep the complete rows of epochs before ``epoch`` (a resumed run), drop the rest."""
        self._started = True
        fieldnames, rows = _read_rows(self.path)
        kept = [r for r in rows if r.get("epoch") and float(r["epoch"]) < epoch]
        if kept:
            self.fieldnames = fieldnames
            self._rewrite(kept)
        else:
            self.close()
            self.path.unlink(missing_ok=True)

    def append(self, record: Mapping[str, float]) -> None:
        if not self._started:
            self._start(float(record.get("epoch", 0.0)))
        row = {k: repr(float(v)) for k, v in record.items()}
        if not row.keys() <= set(self.fieldnames) or not self.path.is_file():
            _, rows = _read_rows(self.path)
            self.fieldnames = sorted({*self.fieldnames, *row})
            self._rewrite([*rows, row])
            return
        if self._handle is None:
            self._handle = self.path.open("a")
        # values are plain numbers: no quoting needed; flushed per row, so a reader or a kill sees whole rows
        self._handle.write(",".join(row.get(k, "") for k in self.fieldnames) + "\n")
        self._handle.flush()


def read_history(run_dir: str | Path) -> dict[str, list[float]]:
    """``{metric: [value per epoch]}`` from ``<run_dir>/csv/metrics.csv``, plus ``"epoch"``.

    Several records are written per epoch (train and val metrics are logged at different times);
    they are merged per epoch, keeping the last value seen. Missing values are ``nan``.
    """
    path = Path(run_dir) / METRICS_CSV
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a run folder written by src.train?")
    by_epoch: dict[int, dict[str, float]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if not row.get("epoch"):
                continue
            merged = by_epoch.setdefault(int(float(row["epoch"])), {})
            merged.update(
                {k: float(v) for k, v in row.items() if v not in ("", None) and k not in ("epoch", "step")}
            )
    epochs = sorted(by_epoch)
    keys = sorted({k for values in by_epoch.values() for k in values})
    history: dict[str, list[float]] = {"epoch": [float(e) for e in epochs]}
    for key in keys:
        history[key] = [by_epoch[e].get(key, math.nan) for e in epochs]
    return history


def last_values(history: Mapping[str, list[float]]) -> dict[str, float]:
    """The last finite value of every metric of a history (what a run ended with)."""
    out = {}
    for key, values in history.items():
        finite = [v for v in values if math.isfinite(v)]
        if key != "epoch" and finite:
            out[key] = finite[-1]
    return out
