"""``<run>/suspects_folds/fold_<k>.npz``: one finished fold of ``suspects.folds=K``, written atomically.

Each file holds the held-out training images' class probabilities (``probs`` (n, C) float32, rows in the order of
``held``, positions in the run's training split), the fold's own early-window AUM of the images it trained on
(``early_aum``: the rest of the training split in order, then the val split) and the ``plan`` fingerprint of the
split and configuration it was made for; a resumed run keeps the files whose fingerprint still matches and trains only the other folds.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lossdiag.rundir.atomic import atomic_write_bytes
from lossdiag.rundir.paths import FOLDS_DIR


@dataclass(frozen=True)
class FoldResult:
    """One fold: which training images it held out, their probabilities, and how its training went."""

    fold: int
    held: np.ndarray  # positions in the run's training split
    probs: np.ndarray  # (len(held), C) float32
    # the fold's training images (the rest of train, then val): minus their early mean margin
    early_aum: np.ndarray
    seconds: float
    accuracy: float  # on the held-out images' given labels
    plan: str  # fingerprint of the split and configuration


def fold_path(run_dir: str | Path, fold: int) -> Path:
    return Path(run_dir) / FOLDS_DIR / f"fold_{fold}.npz"


def save_fold(run_dir: str | Path, result: FoldResult) -> Path:
    """Write ``result`` to its :func:`fold_path` atomically (a killed run never leaves half a fold)."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        fold=np.asarray(result.fold),
        held=np.asarray(result.held, dtype=np.int64),
        probs=np.asarray(result.probs, dtype=np.float32),
        early_aum=np.asarray(result.early_aum, dtype=np.float32),
        seconds=np.asarray(result.seconds),
        accuracy=np.asarray(result.accuracy),
        plan=np.asarray(result.plan),
    )
    return atomic_write_bytes(fold_path(run_dir, result.fold), buffer.getvalue())


def load_fold(run_dir: str | Path, fold: int, plan: str) -> FoldResult | None:
    """The finished fold ``fold`` of this ``plan``; ``None`` when absent, unreadable or made for another plan."""
    path = fold_path(run_dir, fold)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["plan"]) != plan or int(data["fold"]) != fold:
                return None
            return FoldResult(
                fold, data["held"], data["probs"], data["early_aum"], float(data["seconds"]),
                float(data["accuracy"]), plan,
            )  # fmt: skip
    except (OSError, KeyError, ValueError):
        return None
