"""``suspects.folds=K``: K extra trainings for out-of-fold probabilities of every training image.

The run's training split is cut into K stratified folds (seeded by ``seed``). Fold ``k`` trains the run's own
configuration (data, model, loss, optimizer, epochs, seed) on the other K-1 folds plus the run's val split (which
the run itself held out: reusing it keeps each fold's training set about as large as the run's) and predicts the
held-out fold after every epoch, keeping the epoch of the best held-out accuracy (as the run keeps
``best_val_acc.ckpt``: better than the last epoch where the model overfits, benchmarks/suspects_prototype.py). It
also keeps its own training dynamics: minus the early-window mean margin of every image it trained on. cleanlab
scores these out-of-fold probabilities and the suspects combine them with the run's own dynamics
(:mod:`lossdiag.diagnosis.judge.suspects`).

Each fold is written atomically to ``<run>/suspects_folds/fold_<k>.npz`` as soon as it finishes, with a
fingerprint of the split and the configuration it was made for: a killed run, continued with
``python -m src.train resume=<run>``, keeps the finished folds and trains only the others. With ``launcher=joblib``
the folds run as parallel joblib jobs (``hydra.launcher.n_jobs`` at a time, -1: one per core), as a sweep's jobs
would; inside a sweep (the sweep's jobs are already the parallel units) and with any other launcher they run one
after another in the run's own process. One console line per finished fold.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from omegaconf import DictConfig, OmegaConf

from lossdiag.app.validate import suspects_folds
from lossdiag.callbacks.console import announce
from lossdiag.callbacks.guards import NonFiniteLossGuard
from lossdiag.data.datamodules import InMemoryDataModule
from lossdiag.data.splits import concatenate, take
from lossdiag.errors import UserError
from lossdiag.functional.softmax import class_softmax
from lossdiag.functional.suspects import early_aum, early_window_end, given_label_dynamics
from lossdiag.rundir.folds import FoldResult, load_fold, save_fold
from lossdiag.rundir.paths import FOLDS_DIR, display_path

log = logging.getLogger(__name__)
# what a fold's training depends on: a resumed run redoes the folds when any of it changed
PLAN_KEYS = ("data", "model", "loss", "optimizer", "scheduler", "trainer", "seed")
JOBLIB_LAUNCHER = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


@dataclass(frozen=True)
class FoldPlan:
    """The K folds of a run's training split: each fold's held-out positions, and the plan's fingerprint."""

    folds: int
    held: list[np.ndarray]
    n_train: int
    n_classes: int
    fingerprint: str


def plan_folds(cfg: DictConfig, train_y: np.ndarray, n_classes: int) -> FoldPlan:
    """Stratified, seeded folds of the training split; the smallest class must have an image in every fold."""
    from sklearn.model_selection import StratifiedKFold

    folds = suspects_folds(cfg)
    counts = np.bincount(train_y, minlength=n_classes)
    smallest = int(counts[counts > 0].min())
    if smallest < folds:
        raise UserError(
            f"suspects.folds={folds} needs at least {folds} training images of every class, and one class has "
            f"{smallest}: lower suspects.folds (or add images)"
        )
    split = StratifiedKFold(folds, shuffle=True, random_state=int(cfg.seed)).split(
        np.zeros(len(train_y)), train_y
    )
    held = [np.sort(h) for _, h in split]
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    what = {key: resolved.get(key) for key in PLAN_KEYS}
    digest = hashlib.sha1(json.dumps([folds, what], sort_keys=True, default=str).encode())
    digest.update(np.ascontiguousarray(train_y, dtype=np.int64).tobytes())
    return FoldPlan(folds, held, len(train_y), n_classes, digest.hexdigest())


def fold_datamodule(dm: InMemoryDataModule, held: np.ndarray) -> InMemoryDataModule:
    """``dm`` with the held-out fold as its val split and the rest of train plus the run's val split as train."""
    assert dm.train is not None and dm.val is not None
    rest = np.setdiff1d(np.arange(len(dm.train)), held)
    fold = copy.copy(dm)
    fold.train = concatenate([take(dm.train, rest), dm.val])
    fold.val = take(dm.train, held)
    return fold


class FoldDynamics(L.Callback):
    """What a fold keeps of its training, from the module's gathered records: every epoch's training-step margins
    of its training images and held-out mean loss (which places its early window), and the held-out class
    probabilities of the epoch with the best held-out accuracy (the first on ties), as ``best_val_acc.ckpt`` is
    chosen."""

    def __init__(self) -> None:
        self.train_epochs: list[int] = []
        self.margins: list[np.ndarray] = []
        self.val_epochs: list[int] = []
        self.val_loss: list[float] = []
        self.best_accuracy = -1.0
        self.best_probs: np.ndarray | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rec = pl_module.epoch_records("train")  # type: ignore[operator]
        self.train_epochs.append(trainer.current_epoch)
        self.margins.append(given_label_dynamics(rec.logits, rec.target)[1].cpu().numpy().astype(np.float16))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        rec = pl_module.epoch_records("val")  # type: ignore[operator]
        self.val_epochs.append(trainer.current_epoch)
        self.val_loss.append(float(rec.cross_entropy.mean()))
        probs = class_softmax(rec.logits.detach().double()).cpu()
        accuracy = float((probs.argmax(1) == rec.target.cpu()).double().mean())
        if accuracy > self.best_accuracy:
            self.best_accuracy, self.best_probs = accuracy, probs.float().numpy()

    def early_aum(self) -> np.ndarray:
        """Minus each training image's mean margin over the fold's early window (higher = more suspect)."""
        _, end = early_window_end(self.train_epochs, self.val_epochs, self.val_loss)
        return early_aum(np.stack(self.margins), sum(e <= end for e in self.train_epochs))


def train_fold(cfg: DictConfig, dm: InMemoryDataModule, plan: FoldPlan, fold: int) -> FoldResult:
    """Fold ``fold``'s training (the run's configuration; no loggers, checkpoints or diagnosis): the held-out
    probabilities of its best epoch and its training images' early-window AUM."""
    from lossdiag.app.pipeline import build_module, build_trainer

    start = time.perf_counter()
    data = fold_datamodule(dm, plan.held[fold])
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    module = build_module(cfg, data)
    dynamics = FoldDynamics()
    trainer = build_trainer(
        cfg, callbacks=[dynamics, NonFiniteLossGuard()], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    if trainer.world_size > 1:
        raise UserError(
            "suspects.folds trains in the run's own process: use a single-device trainer (trainer.devices=1)"
        )
    trainer.fit(module, datamodule=data)
    assert dynamics.best_probs is not None
    seconds = time.perf_counter() - start
    return FoldResult(fold, plan.held[fold], dynamics.best_probs, dynamics.early_aum(), seconds,
                      dynamics.best_accuracy, plan.fingerprint)  # fmt: skip


def _fold_job(config: dict[str, Any], plan: FoldPlan, fold: int, run_dir: str) -> FoldResult:
    """One fold in a joblib worker: the data rebuilt from the configuration, the result saved where it ran."""
    from lossdiag.app.console import quiet_spawned_process
    from lossdiag.app.pipeline import build_datamodule, prepare

    cfg = OmegaConf.create(config)
    quiet_spawned_process()  # as the run logs: plain lines, Lightning's into its train.log only
    prepare(cfg)
    dm = build_datamodule(cfg)
    if dm.train is None or len(dm.train) != plan.n_train:
        raise RuntimeError("the rebuilt training split differs from the run's: the folds cannot be matched")
    result = train_fold(cfg, dm, plan, fold)
    save_fold(run_dir, result)
    return result


def parallel_jobs(cfg: DictConfig) -> int:
    """How many folds run at once: ``hydra.launcher.n_jobs`` with ``launcher=joblib`` outside a sweep, else 1."""
    from hydra.core.hydra_config import HydraConfig

    from lossdiag.app.resolvers import in_multirun

    if not HydraConfig.initialized() or in_multirun():
        return 1
    launcher = HydraConfig.get().launcher
    if launcher.get("_target_") != JOBLIB_LAUNCHER:
        return 1
    n_jobs = int(launcher.get("n_jobs") or 1)
    return max(1, (os.cpu_count() or 1) + 1 + n_jobs if n_jobs < 0 else n_jobs)


def _run_folds(cfg: DictConfig, dm: InMemoryDataModule, plan: FoldPlan, todo: list[int], run_dir: Path,
               jobs: int) -> Iterator[FoldResult]:  # fmt: skip
    """Each fold of ``todo`` trained and saved, yielded as it finishes."""
    if jobs <= 1:
        for fold in todo:
            result = train_fold(cfg, dm, plan, fold)
            save_fold(run_dir, result)
            yield result
        return
    from joblib import Parallel, delayed

    config = OmegaConf.to_container(cfg, resolve=True)
    parallel = Parallel(n_jobs=jobs, backend="loky", return_as="generator_unordered")
    yield from parallel(delayed(_fold_job)(config, plan, fold, str(run_dir)) for fold in todo)


@dataclass(frozen=True)
class CrossValidation:
    """What the K folds give the suspects: out-of-fold probabilities ``(Nt, C)`` of every training image, and the
    folds' own early-window AUM of the images they trained on, averaged per image (train: over K-1 folds, val:
    over K)."""

    folds: int
    oof: np.ndarray
    train_aum: np.ndarray
    val_aum: np.ndarray


def cross_validate(cfg: DictConfig, dm: InMemoryDataModule, run_dir: str | Path) -> CrossValidation:
    """:class:`CrossValidation` of the run's training split; finished folds of an earlier attempt (same plan) are
    kept, the others trained and saved one by one."""
    assert dm.train is not None and dm.val is not None
    run_dir = Path(run_dir)
    plan = plan_folds(cfg, dm.train.y.numpy(), dm.num_classes)
    done = {k: r for k in range(plan.folds) if (r := load_fold(run_dir, k, plan.fingerprint)) is not None}
    todo = [k for k in range(plan.folds) if k not in done]
    jobs = min(parallel_jobs(cfg), len(todo)) if todo else 1
    where = display_path(run_dir / FOLDS_DIR)
    kept = f"; {len(done)} kept from an earlier attempt" if done else ""
    how = f", {jobs} at a time (launcher=joblib)" if jobs > 1 else ""
    announce(
        log,
        f"suspects.folds={plan.folds}: {len(todo)} extra training(s) to go, each holding out a fold of the "
        f"{plan.n_train} training images{how}{kept} ({where})",
    )
    for result in _run_folds(cfg, dm, plan, todo, run_dir, jobs):
        done[result.fold] = result
        announce(
            log,
            f"suspects.folds: fold {result.fold + 1}/{plan.folds} done in {result.seconds:.1f} s (held-out accuracy "
            f"{result.accuracy:.3f} on {len(result.held)} images; {len(done)} of {plan.folds} done)",
        )
    return combine_folds(plan, list(done.values()), len(dm.val))


def combine_folds(plan: FoldPlan, results: list[FoldResult], n_val: int) -> CrossValidation:
    """The folds' results as one :class:`CrossValidation` (a fold trained on the rest of train, then all of val)."""
    oof = np.zeros((plan.n_train, plan.n_classes), dtype=np.float32)
    aum_sum, count = np.zeros(plan.n_train + n_val), np.zeros(plan.n_train + n_val)
    for result in results:
        oof[result.held] = result.probs
        fit = np.concatenate(
            [np.setdiff1d(np.arange(plan.n_train), result.held), plan.n_train + np.arange(n_val)]
        )
        aum_sum[fit] += result.early_aum
        count[fit] += 1
    aum = (aum_sum / np.maximum(count, 1)).astype(np.float32)
    return CrossValidation(plan.folds, oof, aum[: plan.n_train], aum[plan.n_train :])
