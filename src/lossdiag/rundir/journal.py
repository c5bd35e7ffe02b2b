"""Append-only journals of per-epoch per-sample records, so checkpoints need not carry the history.

Every epoch adds one fixed-size binary record (a block of epochs per write; no rewrite, no fsync: ~6 KB per
epoch for 449 val samples), so saving ``last.ckpt`` stays cheap however long the run. A resumed run keeps the records of
the epochs before the one it resumes at (:meth:`Journal.restore`): those after it were written by the
interrupted attempt after its last checkpoint, and a record a kill cut short is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lossdiag.functional.calibration import CALIBRATION_KEYS, CROSSFIT_SPLITS, SPLIT_KEYS
from lossdiag.functional.outputs import EVALUATION_FIELDS, Evaluation
from lossdiag.rundir.atomic import atomic_write_bytes


class Journal:
    """Records ``{field: array}`` of fixed dtypes and shapes, one per epoch, appended to ``path``."""

    def __init__(self, path: str | Path, fields: Mapping[str, tuple[str, tuple[int, ...]]]) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(
            [("epoch", "<i8"), *((name, dt, shape) for name, (dt, shape) in fields.items())]
        )

    def append(self, epoch: int, arrays: Mapping[str, np.ndarray]) -> None:
        self.append_many([epoch], {name: np.asarray(values)[None] for name, values in arrays.items()})

    def append_many(self, epochs: list[int], arrays: Mapping[str, np.ndarray]) -> None:
        """One record per epoch of ``epochs``; ``arrays[name]`` holds them along its first axis. One write."""
        records = np.zeros(len(epochs), dtype=self.dtype)
        records["epoch"] = epochs
        for name, values in arrays.items():
            records[name] = values
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as handle:
            handle.write(records.tobytes())

    def read(self) -> list[tuple[int, dict[str, np.ndarray]]]:
        """Every complete record, in file order."""
        if not self.path.is_file():
            return []
        count = self.path.stat().st_size // self.dtype.itemsize
        records = np.fromfile(self.path, dtype=self.dtype, count=count)
        names = [n for n in self.dtype.names if n != "epoch"]
        return [(int(r["epoch"]), {n: np.array(r[n]) for n in names}) for r in records]

    def restore(self, before_epoch: int) -> list[tuple[int, dict[str, np.ndarray]]]:
        """The records of epochs ``< before_epoch`` (last write of each epoch wins); the file keeps only them."""
        kept = {epoch: arrays for epoch, arrays in self.read() if epoch < before_epoch}
        ordered = sorted(kept.items())
        self.reset()
        if ordered:
            self.append_many(
                [epoch for epoch, _ in ordered], {n: np.stack([a[n] for _, a in ordered]) for n in ordered[0][1]}
            )
        return ordered

    def reset(self) -> None:
        """Empty the journal (one an earlier attempt left in the folder); a journal not written yet stays absent."""
        if self.path.exists():
            atomic_write_bytes(self.path, b"")


# -- the two journals of a run ------------------------------------------------------------------
def val_journal(path: str | Path, n: int) -> Journal:
    """Per-epoch val :class:`Evaluation` of ``n`` samples."""
    fields = {
        "loss": ("<f4", (n,)),
        "p_true": ("<f4", (n,)),
        "pred": ("<i2", (n,)),
        "conf": ("<f4", (n,)),
        "calibration": ("<f8", (len(CALIBRATION_KEYS),)),
        "crossfit_splits": ("<f8", (len(SPLIT_KEYS), CROSSFIT_SPLITS)),
    }
    return Journal(path, fields)


def evaluation_record(ev: Evaluation) -> dict[str, np.ndarray]:
    """The journal fields of ``ev`` (one epoch, or several along a leading axis)."""
    record = {name: getattr(ev, name) for name in EVALUATION_FIELDS}
    lead = np.shape(ev.loss)[:-1]
    record["calibration"] = np.stack(
        [
            np.broadcast_to(np.asarray(ev.calibration.get(k, np.nan), dtype=np.float64), lead)
            for k in CALIBRATION_KEYS
        ],
        axis=-1,
    )
    record["crossfit_splits"] = np.stack(
        [
            np.broadcast_to(np.asarray(ev.calibration.get(k, np.nan), dtype=np.float64), (*lead, CROSSFIT_SPLITS))
            for k in SPLIT_KEYS
        ],
        axis=-2,
    )
    return record


def record_evaluation(record: Mapping[str, np.ndarray]) -> Evaluation:
    calibration = {k: np.float64(v) for k, v in zip(CALIBRATION_KEYS, record["calibration"], strict=True)}
    calibration.update(zip(SPLIT_KEYS, np.asarray(record["crossfit_splits"], dtype=np.float64), strict=True))
    return Evaluation(*(record[name] for name in EVALUATION_FIELDS), calibration=calibration)


def dynamics_journal(path: str | Path, n: int) -> Journal:
    """Per-epoch training dynamics of ``n`` training samples: p(given label) and margin, float16."""
    return Journal(path, {"p_given": ("<f2", (n,)), "margin": ("<f2", (n,))})
