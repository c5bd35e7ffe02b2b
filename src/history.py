"""Read a run's per-epoch metric history from the files it wrote (no TensorBoard needed)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

METRICS_CSV = Path("csv") / "metrics.csv"


def read_history(run_dir: str | Path) -> dict[str, list[float]]:
    """``{metric: [value per epoch]}`` from ``<run_dir>/csv/metrics.csv``, plus ``"epoch"``.

    Lightning writes several rows per epoch (train and val metrics are logged at different
    times); they are merged per epoch, keeping the last value seen. Missing values are ``nan``.
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
            merged.update({k: float(v) for k, v in row.items() if v not in ("", None) and k not in ("epoch", "step")})
    epochs = sorted(by_epoch)
    keys = sorted({k for values in by_epoch.values() for k in values})
    history: dict[str, list[float]] = {"epoch": [float(e) for e in epochs]}
    for key in keys:
        history[key] = [by_epoch[e].get(key, math.nan) for e in epochs]
    return history
