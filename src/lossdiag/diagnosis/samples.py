"""The per-sample records file of a run, ``<run>/samples.npz``, and its loader :func:`load_samples`.

One uncompressed ``numpy.savez`` archive, rewritten atomically every ``write_every_n_epochs``
validation epochs (callback config, default 5) and once more at the end of training (with the initial/best/last models). ``N`` = val samples, ``Nt`` = train
samples, ``E`` = validation epochs recorded, ``M`` = evaluated models, ``C`` = classes.

=========================== ========== ================================================================
key                         shape      meaning
=========================== ========== ================================================================
``format_version``          ()         1
``classes``                 (C,) str   class names, index = class id
``loss_cap``                ()         the bounded-loss cap of the run (``loss/cap``)
``objective``               () str     the loss the model was trained with (``standard``, ``bounded``;
                                       ``""``: unknown, e.g. a module without ``hparams.loss``)
``val_index``               (N,)       sample index in the val split (row order of every ``val_*``)
``val_target``              (N,)       true class
``val_path``                (N,) str   image file (folder data), ``""`` for built-in data
``epochs``                  (E,)       epoch number of each row of the ``val_*`` (E, N) arrays
``val_loss``                (E, N)     per-sample cross-entropy (float32, from log-softmax)
``val_p_true``              (E, N)     probability of the true class (float32)
``val_pred``                (E, N)     predicted class (int16)
``val_conf``                (E, N)     probability of the predicted class (float32)
``val_<calib>``             (E,)       ``ece``, ``temperature``, ``nll_temperature_scaled``,
                                       ``ece_temperature_scaled`` (temperature fitted and scored on the
                                       same samples, as the ``val/`` scalars) of each epoch; ``nll_crossfit``,
                                       ``ece_crossfit`` (scored out of sample, as the verdict) of the epochs
                                       the verdict may read (at the lowest val loss so far, and the last),
                                       NaN for the others
``train_index/target/path`` (Nt,)      as for val, for the training split
``models``                  (M,) str   evaluated models, e.g. ``initial``, ``best``, ``last``
``model_epoch``             (M,)       epoch the model's weights come from (-1: before training)
``model_{val,train}_<f>``   (M, N|Nt)  ``loss``, ``p_true``, ``pred``, ``conf`` of each model
``model_{val,train}_<calib>`` (M,)     calibration of each model on that split
``dynamics_epochs``         (Et,)      epochs of the training dynamics below
``train_p_given``           (Et, Nt)   probability of the given label in the training step (float16)
``train_margin``            (Et, Nt)   given-label logit minus the largest other logit, same step (float16)
``train_oof_probs``         (Nt, C)    ``suspects.folds=K`` only: every training image's class probabilities
                                       from the one of K extra trainings that held it out (float32)
``oof_folds``               ()         K (absent without ``train_oof_probs``)
``train_folds_early_aum``   (Nt,)      minus the early-window mean margin in the K-1 folds that trained on the
                                       image, averaged (float32)
``val_folds_early_aum``     (N,)       the same over the K folds (each trains on the val split)
=========================== ========== ================================================================

``val/loss`` of epoch ``e`` is ``val_loss[e].mean()``; ``val/acc`` is ``(val_pred[e] == val_target).mean()``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lossdiag.functional.calibration import CALIBRATION_KEYS
from lossdiag.functional.outputs import EVALUATION_FIELDS, Evaluation, stack
from lossdiag.rundir.atomic import atomic_write_bytes
from lossdiag.rundir.paths import SAMPLES_FILE

FORMAT_VERSION = 1
FIELDS = EVALUATION_FIELDS
SPLITS = ("val", "train")


@dataclass
class SplitInfo:
    """What identifies the samples of one split: index, true class, file path."""

    index: np.ndarray
    target: np.ndarray
    path: np.ndarray

    @classmethod
    def create(cls, index, target, paths=None) -> SplitInfo:
        index = np.asarray(index, dtype=np.int64)
        all_paths = list(paths or [])
        path = np.asarray([all_paths[i] if all_paths else "" for i in index], dtype=str)
        return cls(index, np.asarray(target, dtype=np.int64), path)


@dataclass
class Samples:
    """Everything in ``samples.npz``: per-epoch val outputs and per-model val/train outputs."""

    classes: list[str]
    loss_cap: float
    val: SplitInfo
    train: SplitInfo | None = None
    epochs: list[int] = field(default_factory=list)
    val_epochs: list[Evaluation] = field(default_factory=list)  # one per epoch, same order as ``epochs``
    models: dict[str, dict[str, Evaluation]] = field(default_factory=dict)  # name -> split -> outputs
    model_epoch: dict[str, int] = field(default_factory=dict)
    # training dynamics: per epoch, every training sample's p(given label) and margin (train.index order)
    dynamics_epochs: list[int] = field(default_factory=list)
    train_p_given: list[np.ndarray] = field(default_factory=list)
    train_margin: list[np.ndarray] = field(default_factory=list)
    objective: str = ""  # the training loss (standard, bounded); "" when unknown
    # suspects.folds=K: out-of-fold class probabilities of every training sample (train.index order), and K
    train_oof: np.ndarray | None = None
    oof_folds: int = 0
    # and the folds' own training dynamics: minus each image's early-window mean margin, averaged over the folds
    train_folds_aum: np.ndarray | None = None
    val_folds_aum: np.ndarray | None = None

    def add_epoch(self, epoch: int, evaluation: Evaluation) -> None:
        self.epochs.append(int(epoch))
        self.val_epochs.append(evaluation)

    def add_models(self, models: Mapping[str, tuple[int, Mapping[str, Evaluation]]]) -> None:
        """Replace the evaluated models: ``{name: (epoch of its weights, {split: outputs})}``; a model without
        val outputs is left out. The one way both a training run and ``src.evaluate`` record whole models."""
        self.models = {name: dict(splits) for name, (_, splits) in models.items() if "val" in splits}
        self.model_epoch = {name: int(epoch) for name, (epoch, splits) in models.items() if "val" in splits}

    def add_dynamics(self, epoch: int, p_given: np.ndarray, margin: np.ndarray) -> None:
        self.dynamics_epochs.append(int(epoch))
        self.train_p_given.append(np.asarray(p_given, dtype=np.float16))
        self.train_margin.append(np.asarray(margin, dtype=np.float16))

    @property
    def history(self) -> Evaluation:
        """All epochs' val outputs stacked: fields are (E, N), calibration values (E,)."""
        return stack(self.val_epochs)

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {
            "format_version": np.asarray(FORMAT_VERSION),
            "classes": np.asarray(self.classes, dtype=str),
            "loss_cap": np.asarray(self.loss_cap, dtype=np.float64),
            "objective": np.asarray(self.objective, dtype=str),
            "epochs": np.asarray(self.epochs, dtype=np.int64),
            "models": np.asarray(list(self.models), dtype=str),
            "model_epoch": np.asarray([self.model_epoch[m] for m in self.models], dtype=np.int64),
        }
        for split in SPLITS:
            info: SplitInfo | None = getattr(self, split)
            if info is not None:
                arrays.update(
                    {f"{split}_index": info.index, f"{split}_target": info.target, f"{split}_path": info.path}
                )
        if self.val_epochs:
            arrays.update(_flatten("val", self.history))
        if self.dynamics_epochs:
            arrays["dynamics_epochs"] = np.asarray(self.dynamics_epochs, dtype=np.int64)
            arrays["train_p_given"] = np.stack(self.train_p_given)
            arrays["train_margin"] = np.stack(self.train_margin)
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
            evals = [self.models[m][split] for m in self.models if split in self.models[m]]
            if evals and len(evals) == len(self.models):
                arrays.update(_flatten(f"model_{split}", stack(evals)))
        return arrays

    def save(self, path: str | Path, durable: bool = True) -> Path:
        """Write atomically (a reader never sees a half-written file); ``durable=False`` skips the fsync
        (for the rewrites during training: a machine crash loses at most the latest)."""
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
    calibration = {k: arrays[f"{prefix}_{k}"] for k in CALIBRATION_KEYS if f"{prefix}_{k}" in arrays}
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
    """Read ``<run>/samples.npz`` (or the file itself) back into :class:`Samples`."""
    path = Path(run_dir_or_file)
    if path.is_dir():
        path = path / SAMPLES_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: is it a run folder written by src.train or src.evaluate?"
        )
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    splits = {
        s: SplitInfo(arrays[f"{s}_index"], arrays[f"{s}_target"], arrays[f"{s}_path"])
        if f"{s}_index" in arrays
        else None
        for s in SPLITS
    }
    samples = Samples(
        classes=[str(c) for c in arrays["classes"]],
        loss_cap=float(arrays["loss_cap"]),
        val=splits["val"],  # type: ignore[arg-type]
        train=splits["train"],
        epochs=[int(e) for e in arrays["epochs"]],
        objective=str(arrays["objective"]) if "objective" in arrays else "",
    )
    history = _unflatten(arrays, "val")
    if history is not None:
        samples.val_epochs = [history[i] for i in range(len(samples.epochs))]
    if "dynamics_epochs" in arrays:
        samples.dynamics_epochs = [int(e) for e in arrays["dynamics_epochs"]]
        samples.train_p_given = list(arrays["train_p_given"])
        samples.train_margin = list(arrays["train_margin"])
    if "train_oof_probs" in arrays:
        samples.train_oof = arrays["train_oof_probs"]
        samples.oof_folds = int(arrays["oof_folds"])
    samples.train_folds_aum = arrays.get("train_folds_early_aum")
    samples.val_folds_aum = arrays.get("val_folds_early_aum")
    names = [str(m) for m in arrays["models"]]
    for split in SPLITS:
        stacked = _unflatten(arrays, f"model_{split}")
        if stacked is not None:
            for i, name in enumerate(names):
                samples.models.setdefault(name, {})[split] = stacked[i]
    samples.model_epoch = {name: int(e) for name, e in zip(names, arrays["model_epoch"], strict=True)}
    for name in names:
        samples.models.setdefault(name, {})
    return samples
