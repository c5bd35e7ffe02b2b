"""``optimizer.lr=auto``'s files: the range test's curve in the run folder, and its cache across runs.

A run writes ``lr_find.csv`` (lr, loss, smoothed loss per step; the figure, ``figures/lr_find.png`` and its
TensorBoard image, is drawn by :class:`lossdiag.callbacks.lr_find.RangeTestFigure`). The cache holds one JSON
file per key (``<cache_dir>/<key>.json``, written atomically); jobs of a sweep that would measure the same key
wait on a lock file for the first one's result instead of measuring it again.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from lossdiag.functional.learning_rate import smooth
from lossdiag.rundir.atomic import atomic_write_text
from lossdiag.rundir.paths import LR_FIND_CSV


def cache_key(identity: Mapping[str, Any]) -> str:
    """A short stable hash of ``identity`` (plain JSON values: model config, data fingerprint, optimizer, ...)."""
    text = json.dumps(identity, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def read_cached(path: Path) -> dict[str, Any] | None:
    """The cached result at ``path``; ``None`` if there is none (or it cannot be read: it is measured again)."""
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or not {"lrs", "losses"} <= entry.keys():
        return None
    return entry


def write_cached(path: Path, entry: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(entry, indent=1) + "\n")


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (POSIX ``flock``; elsewhere no lock: at worst measured twice)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def write_lr_find(run_dir: str | Path, lrs: Sequence[float], losses: Sequence[float]) -> None:
    """``lr_find.csv`` in ``run_dir``: each step's rate, loss and smoothed loss."""
    buffer = io.StringIO()
    table = csv.writer(buffer, lineterminator="\n")
    table.writerow(["step", "lr", "loss", "loss_smoothed"])
    for step, (lr, loss, sm) in enumerate(zip(lrs, losses, smooth(losses), strict=True)):
        table.writerow([step, f"{lr:.6g}", f"{loss:.6g}", f"{sm:.6g}"])
    atomic_write_text(Path(run_dir) / LR_FIND_CSV, buffer.getvalue())
