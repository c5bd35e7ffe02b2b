"""``<run>/suspects.json`` read back: the per-class thresholds a training run's flags used, for ``src.evaluate``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lossdiag.rundir.paths import SUSPECTS_JSON


def read_thresholds(run_dir: str | Path, model: str, classes: Sequence[str]) -> np.ndarray | None:
    """Model ``model``'s per-class thresholds (in ``classes`` order) from the run's ``suspects.json``; ``None``
    when the file, the model or one of the classes is missing, or the file cannot be read."""
    path = Path(run_dir) / SUSPECTS_JSON
    try:
        data = json.loads(path.read_text())
        stored = dict(zip(data["classes"], data["thresholds"][model], strict=True))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all(c in stored and stored[c] is not None for c in classes):
        return None
    return np.asarray([stored[c] for c in classes], dtype=np.float64)
