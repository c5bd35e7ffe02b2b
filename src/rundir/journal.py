"""An append-only journal of per-epoch per-sample records, so checkpoints need not carry the history.

Every epoch appends one fixed-size binary record (no rewrite, no fsync: ~6 KB for 449 samples), so
saving ``last.ckpt`` every epoch stays cheap however long the run. A resumed run keeps the records of
the epochs before the one it resumes at (:meth:`Journal.restore`): those after it were written by the
interrupted attempt after its last checkpoint, and a record a kill cut short is dropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from src.functional.outputs import CALIBRATION_KEYS, Evaluation
from src.rundir.atomic import atomic_write_bytes


def _dtype(n: int) -> np.dtype:
    return np.dtype(
        [
            ("epoch", "<i8"),
            ("loss", "<f4", (n,)),
            ("p_true", "<f4", (n,)),
            ("pred", "<i2", (n,)),
            ("conf", "<f4", (n,)),
            ("calibration", "<f8", (len(CALIBRATION_KEYS),)),
        ]
    )


class Journal:
    """The per-epoch val records of ``n`` samples, appended to ``path``."""

    def __init__(self, path: str | Path, n: int) -> None:
        self.path = Path(path)
        self.dtype = _dtype(n)

    def append(self, epoch: int, ev: Evaluation) -> None:
        record = np.zeros((), dtype=self.dtype)
        record["epoch"] = epoch
        for name in ("loss", "p_true", "pred", "conf"):
            record[name] = getattr(ev, name)
        record["calibration"] = [float(ev.calibration.get(k, np.nan)) for k in CALIBRATION_KEYS]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as handle:
            handle.write(record.tobytes())

    def read(self) -> list[tuple[int, Evaluation]]:
        """Every complete record, in file order."""
        if not self.path.is_file():
            return []
        count = self.path.stat().st_size // self.dtype.itemsize
        records = np.fromfile(self.path, dtype=self.dtype, count=count)
        return [
            (
                int(r["epoch"]),
                Evaluation(
                    r["loss"].copy(), r["p_true"].copy(), r["pred"].copy(), r["conf"].copy(),
                    calibration={k: np.float64(v) for k, v in zip(CALIBRATION_KEYS, r["calibration"], strict=True)},
                ),
            )
            for r in records
        ]

    def restore(self, before_epoch: int) -> list[tuple[int, Evaluation]]:
        """The records of epochs ``< before_epoch`` (last write of each epoch wins); the file keeps only them."""
        kept: dict[int, Evaluation] = {}
        for epoch, ev in self.read():
            if epoch < before_epoch:
                kept[epoch] = ev
        ordered = sorted(kept.items())
        self.reset()
        for epoch, ev in ordered:
            self.append(epoch, ev)
        return ordered

    def reset(self) -> None:
        atomic_write_bytes(self.path, b"")
