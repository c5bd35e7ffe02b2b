"""Per-epoch per-sample records on disk: append-only journals of fixed-size binary records, read memory-mapped.

Every epoch adds one fixed-size record (a block of epochs per write; no rewrite, no fsync), so saving
``last.ckpt`` stays cheap however long the run, and the per-epoch history never has to fit in memory: readers map
the file (:meth:`Journal.records`) and touch only the epochs and fields they read. A resumed run keeps the records
of the epochs before the one it resumes at (:meth:`Journal.restore`): those after it were written by the
interrupted attempt after its last checkpoint, and a record a kill cut short is dropped. A journal without a path
keeps its records in memory (an evaluation of one model, tests).

Sizes (the run's val journal, ``records/val_epochs.bin``): per val sample and epoch 8 bytes (loss float32,
prediction int16, confidence float16), plus 0.9 KB per epoch of calibration; the training dynamics
(``records/train_dynamics.bin``): 4 bytes per training sample and epoch (p of the given label and margin, float16).
449 val samples x 100 epochs: 0.44 MB; 1.28 M x 90 epochs: 0.92 GB on disk, nothing of it in memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lossdiag.functional.calibration import CALIBRATION_KEYS, SPLIT_KEYS
from lossdiag.functional.crossfit import CROSSFIT_SPLITS
from lossdiag.functional.outputs import Evaluation
from lossdiag.rundir.atomic import atomic_write_bytes


class Journal:
    """Records ``{field: array}`` of fixed dtypes and shapes, one per epoch, appended to ``path`` (or, without a
    path, kept in memory)."""

    def __init__(self, path: str | Path | None, fields: Mapping[str, tuple[str, tuple[int, ...]]]) -> None:
        self.path = Path(path) if path is not None else None
        self.dtype = np.dtype([("epoch", "<i8"), *((name, dt, shape) for name, (dt, shape) in fields.items())])
        self._memory = np.zeros(0, dtype=self.dtype)
        self._mapped: np.ndarray | None = None  # the file's records, mapped while the file keeps its size

    def append(self, epoch: int, arrays: Mapping[str, np.ndarray]) -> None:
        self.append_many([epoch], {name: np.asarray(values)[None] for name, values in arrays.items()})

    def append_many(self, epochs: list[int], arrays: Mapping[str, np.ndarray]) -> None:
        """One record per epoch of ``epochs``; ``arrays[name]`` holds them along its first axis. One write."""
        records = np.zeros(len(epochs), dtype=self.dtype)
        records["epoch"] = epochs
        for name, values in arrays.items():
            records[name] = values
        if self.path is None:
            self._memory = np.concatenate([self._memory, records])
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as handle:
            handle.write(records.tobytes())
        self._mapped = None

    def records(self) -> np.ndarray:
        """Every complete record, in file order: a read-only memory map (nothing read until used); ``records()[name]``
        is a (records, *shape) view of one field."""
        if self.path is None:
            return self._memory
        count = self.path.stat().st_size // self.dtype.itemsize if self.path.is_file() else 0
        if count == 0:
            return np.zeros(0, dtype=self.dtype)
        if self._mapped is None or len(self._mapped) != count:
            self._mapped = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(count,))
        return self._mapped

    def write_at(self, row: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Overwrite the fields ``arrays`` of record ``row`` in place (the rest of the record is kept)."""
        if self.path is None:
            for name, values in arrays.items():
                self._memory[name][row] = values
            return
        record = np.array(self.records()[row : row + 1])  # a writable copy, changed and written back
        for name, values in arrays.items():
            record[name][0] = values
        with self.path.open("r+b") as handle:
            handle.seek(row * self.dtype.itemsize)
            handle.write(record.tobytes())
        self._mapped = None

    def read(self) -> list[tuple[int, dict[str, np.ndarray]]]:
        """Every complete record, in file order, copied out."""
        names = [n for n in self.dtype.names if n != "epoch"]
        return [(int(r["epoch"]), {n: np.array(r[n]) for n in names}) for r in self.records()]

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
        self._memory, self._mapped = np.zeros(0, dtype=self.dtype), None
        if self.path is not None and self.path.exists():
            atomic_write_bytes(self.path, b"")


# -- the two journals of a run ------------------------------------------------------------------
def val_journal(path: str | Path | None, n: int, n_classes: int) -> Journal:
    """Per-epoch val :class:`Evaluation` of ``n`` samples: the loss in float32 (its mean is ``val/loss``), the
    prediction, the confidence in float16 (3 significant digits: what figures and tables show), the calibration in
    float64. The probability of the given label is not stored: it is ``exp(-loss)``."""
    fields = {
        "loss": ("<f4", (n,)),
        "pred": ("<i2" if n_classes <= np.iinfo(np.int16).max else "<i4", (n,)),
        "conf": ("<f2", (n,)),
        "calibration": ("<f8", (len(CALIBRATION_KEYS),)),
        "crossfit_splits": ("<f8", (len(SPLIT_KEYS), CROSSFIT_SPLITS)),
    }
    return Journal(path, fields)


def evaluation_record(ev: Evaluation) -> dict[str, np.ndarray]:
    """The journal fields of ``ev`` (one epoch, or several along a leading axis)."""
    lead = np.shape(ev.loss)[:-1]

    def values(keys: tuple[str, ...], shape: tuple[int, ...]) -> np.ndarray:
        return np.stack(
            [np.broadcast_to(np.asarray(ev.calibration.get(k, np.nan), dtype=np.float64), shape) for k in keys],
            axis=len(lead),
        )

    return {
        "loss": ev.loss,
        "pred": ev.pred,
        "conf": ev.conf,
        "calibration": values(CALIBRATION_KEYS, lead),
        "crossfit_splits": values(SPLIT_KEYS, (*lead, CROSSFIT_SPLITS)),
    }


def record_evaluation(record: Mapping[str, np.ndarray] | np.ndarray) -> Evaluation:
    """The :class:`Evaluation` of journal records (one, or several along a leading axis). Fields are views of the
    records where they can be (the loss, the prediction); ``p_true`` is computed from the loss."""
    loss = record["loss"]
    calibration = {k: record["calibration"][..., i] for i, k in enumerate(CALIBRATION_KEYS)}
    calibration.update({k: record["crossfit_splits"][..., i, :] for i, k in enumerate(SPLIT_KEYS)})
    return Evaluation(
        loss=loss,
        p_true=np.exp(-np.asarray(loss, dtype=np.float32)),
        pred=record["pred"],
        conf=np.asarray(record["conf"], dtype=np.float32),
        calibration=calibration,
    )


def dynamics_journal(path: str | Path | None, n: int) -> Journal:
    """Per-epoch training dynamics of ``n`` training samples: p(given label) and margin, float16."""
    return Journal(path, {"p_given": ("<f2", (n,)), "margin": ("<f2", (n,))})
