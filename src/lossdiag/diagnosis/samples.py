"""What a run records per sample, and its files: ``<run>/samples.npz`` and the journals under ``<run>/records/``.

``samples.npz`` (one uncompressed ``numpy.savez`` archive, written atomically at the end of training and every
``write_every_n_epochs`` validation epochs) holds what is small: the class names, the splits' sample indices,
given labels and file paths, the bounded-loss cap, the objective, and the evaluated models' per-sample outputs.
The per-epoch history lives in the append-only journals the run writes as it goes (:mod:`lossdiag.rundir.journal`):
``records/val_epochs.bin`` (every val sample, every epoch) and ``records/train_dynamics.bin`` (every training
sample, every epoch). :func:`load_samples` maps them: nothing of the history is read until it is used, so a run
of any size loads at once, and ``samples.history.loss[e]`` reads one epoch. ``N`` = val samples, ``Nt`` = train
samples, ``E`` = validation epochs, ``Et`` = epochs of training dynamics, ``M`` = evaluated models, ``C`` = classes;
the full table is in the docs (docs/diagnosis.md, *samples.npz*).

``val/loss`` of epoch ``e`` is ``history.loss[e].mean()``; ``val/acc`` is ``(history.pred[e] == val.target).mean()``.
A ``samples.npz`` of format 1 (the history inside the archive) still loads.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lossdiag.functional.calibration import CALIBRATION_KEYS, SPLIT_KEYS
from lossdiag.functional.outputs import EVALUATION_FIELDS, Evaluation, stack
from lossdiag.rundir.atomic import atomic_write_bytes
from lossdiag.rundir.journal import (
    Journal,
    dynamics_journal,
    evaluation_record,
    record_evaluation,
    val_journal,
)
from lossdiag.rundir.paths import SAMPLES_FILE, TRAIN_JOURNAL, VAL_JOURNAL

FORMAT_VERSION = 2  # 2: the per-epoch history in records/, not in samples.npz
FIELDS = EVALUATION_FIELDS
SPLITS = ("val", "train")


@dataclass
class SplitInfo:
    """What identifies the samples of one split: index, given class (the label in the data), file path."""

    index: np.ndarray
    target: np.ndarray
    path: np.ndarray

    @classmethod
    def create(cls, index, target, paths=None) -> SplitInfo:
        index = np.asarray(index, dtype=np.int64)
        all_paths = list(paths or [])
        path = np.asarray([all_paths[i] if all_paths else "" for i in index], dtype=str)
        return cls(index, np.asarray(target, dtype=np.int64), path)


class EpochRows(Sequence[Evaluation]):
    """The val history as a sequence of one :class:`Evaluation` per epoch, read from the journal when indexed."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def __len__(self) -> int:
        return len(self.journal.records())

    def __getitem__(self, i):  # type: ignore[override]
        records = self.journal.records()
        if isinstance(i, slice):
            return [record_evaluation(r) for r in records[i]]
        return record_evaluation(records[i])


@dataclass
class Samples:
    """Everything a run recorded per sample: per-epoch val outputs and training dynamics (journals, on disk for a
    run), and per-model val/train outputs."""

    classes: list[str]
    loss_cap: float
    val: SplitInfo
    train: SplitInfo | None = None
    models: dict[str, dict[str, Evaluation]] = field(default_factory=dict)  # name -> split -> outputs
    model_epoch: dict[str, int] = field(default_factory=dict)
    objective: str = ""  # the training loss (standard, bounded); "" when unknown
    # suspects.folds=K: out-of-fold class probabilities of every training sample (train.index order), and K
    train_oof: np.ndarray | None = None
    oof_folds: int = 0
    # and the folds' own training dynamics: minus each image's early-window mean margin, averaged over the folds
    train_folds_aum: np.ndarray | None = None
    val_folds_aum: np.ndarray | None = None
    # per-epoch val records (records/val_epochs.bin, or in memory) and training dynamics (records/train_dynamics.bin)
    val_journal: Journal | None = None
    dynamics: Journal | None = None

    def __post_init__(self) -> None:
        if self.val_journal is None:
            self.val_journal = val_journal(None, len(self.val.index), len(self.classes))

    # -- the per-epoch val history ---------------------------------------------------------------------------
    @property
    def epochs(self) -> list[int]:
        assert self.val_journal is not None
        return [int(e) for e in self.val_journal.records()["epoch"]]

    @property
    def val_epochs(self) -> EpochRows:
        """One :class:`Evaluation` per recorded epoch (read when indexed)."""
        assert self.val_journal is not None
        return EpochRows(self.val_journal)

    @property
    def history(self) -> Evaluation:
        """All epochs' val outputs: fields (E, N) (``loss`` and ``pred`` read from the journal as they are used),
        calibration values (E,) and (E, S)."""
        assert self.val_journal is not None
        return record_evaluation(self.val_journal.records())

    def add_epoch(self, epoch: int, evaluation: Evaluation) -> None:
        self.add_epochs([epoch], stack([evaluation]))

    def add_epochs(self, epochs: Sequence[int], evaluations: Evaluation) -> None:
        """Record a block of epochs (``evaluations`` with a leading epoch axis) in one write."""
        assert self.val_journal is not None
        self.val_journal.append_many([int(e) for e in epochs], evaluation_record(evaluations))

    def replace_epoch(self, epoch: int, evaluation: Evaluation) -> None:
        """Overwrite a recorded epoch (e.g. with its cross-fitted calibration, given at the end), in place."""
        assert self.val_journal is not None
        self.val_journal.write_at(self.epochs.index(int(epoch)), evaluation_record(evaluation))

    # -- the training dynamics -------------------------------------------------------------------------------
    @property
    def dynamics_epochs(self) -> list[int]:
        return [] if self.dynamics is None else [int(e) for e in self.dynamics.records()["epoch"]]

    @property
    def train_p_given(self) -> np.ndarray:
        """(Et, Nt) float16: each epoch's probability of the given label in the training step."""
        return self.dynamics.records()["p_given"] if self.dynamics is not None else np.zeros((0, 0), np.float16)

    @property
    def train_margin(self) -> np.ndarray:
        """(Et, Nt) float16: the given label's logit minus the largest other logit, same step."""
        return self.dynamics.records()["margin"] if self.dynamics is not None else np.zeros((0, 0), np.float16)

    def add_dynamics(self, epoch: int, p_given: np.ndarray, margin: np.ndarray) -> None:
        if self.dynamics is None:
            self.dynamics = dynamics_journal(None, len(p_given))
        self.dynamics.append(int(epoch), {"p_given": p_given, "margin": margin})

    # -- whole models ----------------------------------------------------------------------------------------
    def add_models(self, models: Mapping[str, tuple[int, Mapping[str, Evaluation]]]) -> None:
        """Replace the evaluated models: ``{name: (epoch of its weights, {split: outputs})}``; a model without
        val outputs is left out. The one way both a training run and ``src.evaluate`` record whole models."""
        self.models = {name: dict(splits) for name, (_, splits) in models.items() if "val" in splits}
        self.model_epoch = {name: int(epoch) for name, (epoch, splits) in models.items() if "val" in splits}

    # -- files -----------------------------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """What ``samples.npz`` holds (everything but the journals)."""
        arrays: dict[str, np.ndarray] = {
            "format_version": np.asarray(FORMAT_VERSION),
            "classes": np.asarray(self.classes, dtype=str),
            "loss_cap": np.asarray(self.loss_cap, dtype=np.float64),
            "objective": np.asarray(self.objective, dtype=str),
            "models": np.asarray(list(self.models), dtype=str),
            "model_epoch": np.asarray([self.model_epoch[m] for m in self.models], dtype=np.int64),
        }
        for split in SPLITS:
            info: SplitInfo | None = getattr(self, split)
            if info is not None:
                arrays.update(
                    {f"{split}_index": info.index, f"{split}_target": info.target, f"{split}_path": info.path}
                )
        if self.train_oof is not None:
            arrays["train_oof_probs"] = np.asarray(self.train_oof, dtype=np.float32)
            arrays["oof_folds"] = np.asarray(self.oof_folds, dtype=np.int64)
        for key, value in (
            ("train_folds_early_aum", self.train_folds_aum),
            ("val_folds_early_aum", self.val_folds_aum),
        ):
            if value is not None:
                arrays[key] = np.asarray(value, dtype=np.float32)
        for split in SPLITS:
            names = [m for m in self.models if split in self.models[m]]
            if names:
                arrays.update(_flatten(f"model_{split}", stack([self.models[m][split] for m in names])))
        if "model_train_loss" in arrays:  # the rows of model_train_*: the models evaluated on train too
            arrays["train_models"] = np.asarray([m for m in self.models if "train" in self.models[m]], dtype=str)
        return arrays

    def save(self, path: str | Path, durable: bool = True) -> Path:
        """Write ``samples.npz`` atomically (a reader never sees a half-written file; ``durable=False`` skips the
        fsync, for the rewrites during training) and, for journals held in memory, their files beside it."""
        path = Path(path)
        for journal, name in ((self.val_journal, VAL_JOURNAL), (self.dynamics, TRAIN_JOURNAL)):
            if journal is not None and journal.path is None:
                atomic_write_bytes(path.parent / name, journal.records().tobytes(), durable)
        buffer = io.BytesIO()
        np.savez(buffer, **self.to_arrays())
        return atomic_write_bytes(path, buffer.getvalue(), durable)


def _flatten(prefix: str, ev: Evaluation) -> dict[str, np.ndarray]:
    out = {f"{prefix}_{name}": getattr(ev, name) for name in FIELDS}
    out.update({f"{prefix}_{k}": v for k, v in ev.calibration.items()})
    return out


def _unflatten(arrays, prefix: str) -> Evaluation | None:
    if f"{prefix}_loss" not in arrays:
        return None
    calibration = {k: arrays[f"{prefix}_{k}"] for k in (*CALIBRATION_KEYS, *SPLIT_KEYS) if f"{prefix}_{k}" in arrays}
    return Evaluation(*(arrays[f"{prefix}_{name}"] for name in FIELDS), calibration=calibration)


def read_classes(run_dir_or_file: str | Path) -> list[str] | None:
    """Only the class names of ``<run>/samples.npz`` (``None`` when there is no such file)."""
    path = Path(run_dir_or_file)
    if path.is_dir():
        path = path / SAMPLES_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        return [str(c) for c in data["classes"]]


def load_samples(run_dir_or_file: str | Path) -> Samples:
    """Read ``<run>/samples.npz`` (or the file itself) back into :class:`Samples`, the journals beside it mapped
    (read as they are used)."""
    path = Path(run_dir_or_file)
    if path.is_dir():
        path = path / SAMPLES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is it a run folder written by src.train or src.evaluate?")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    splits = {
        s: SplitInfo(arrays[f"{s}_index"], arrays[f"{s}_target"], arrays[f"{s}_path"]) if f"{s}_index" in arrays else None
        for s in SPLITS
    }
    classes = [str(c) for c in arrays["classes"]]
    samples = Samples(
        classes=classes,
        loss_cap=float(arrays["loss_cap"]),
        val=splits["val"],  # type: ignore[arg-type]
        train=splits["train"],
        objective=str(arrays["objective"]) if "objective" in arrays else "",
    )
    if "epochs" in arrays:  # format 1: the history inside the archive
        history = _unflatten(arrays, "val")
        if history is not None:
            samples.add_epochs([int(e) for e in arrays["epochs"]], history)
        for i, e in enumerate(arrays.get("dynamics_epochs", [])):
            samples.add_dynamics(int(e), arrays["train_p_given"][i], arrays["train_margin"][i])
    else:
        samples.val_journal = val_journal(path.parent / VAL_JOURNAL, len(samples.val.index), len(classes))
        if samples.train is not None and (path.parent / TRAIN_JOURNAL).is_file():
            samples.dynamics = dynamics_journal(path.parent / TRAIN_JOURNAL, len(samples.train.index))
    if "train_oof_probs" in arrays:
        samples.train_oof = arrays["train_oof_probs"]
        samples.oof_folds = int(arrays["oof_folds"])
    samples.train_folds_aum = arrays.get("train_folds_early_aum")
    samples.val_folds_aum = arrays.get("val_folds_early_aum")
    names = [str(m) for m in arrays["models"]]
    rows = {"val": names, "train": [str(m) for m in arrays.get("train_models", names)]}  # older files: every model
    for split in SPLITS:
        stacked = _unflatten(arrays, f"model_{split}")
        if stacked is not None:
            for i, name in enumerate(rows[split]):
                samples.models.setdefault(name, {})[split] = stacked[i]
    samples.model_epoch = {name: int(e) for name, e in zip(names, arrays["model_epoch"], strict=True)}
    for name in names:
        samples.models.setdefault(name, {})
    return samples
