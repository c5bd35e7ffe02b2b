"""``optimizer.lr=auto``: a learning-rate range test on the run's network and training data, before training.

:func:`find_learning_rate` runs the test (:mod:`lossdiag.models.lr_range_test`; the choice is
:func:`lossdiag.functional.learning_rate.suggest`) or takes its result from the cache (``lr_find.cache_dir``),
keyed by everything it depends on: the model config, the training data (a hash of its pixels and labels), the
batch size and augmentation, the optimizer's settings other than ``lr``, the seed and the test's own settings.
:func:`record_learning_rate` writes the curve into the run folder and says the value in one line; its callback
(:class:`lossdiag.callbacks.lr_find.RangeTestFigure`) draws the figure into the run folder and TensorBoard.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lossdiag.callbacks.lr_find import RangeTestFigure
from lossdiag.data.datamodules import InMemoryDataModule
from lossdiag.errors import UserError
from lossdiag.functional.learning_rate import SKIP_START, Suggestion, suggest
from lossdiag.models.lr_range_test import range_test
from lossdiag.rundir.lr_find import cache_key, exclusive, read_cached, write_cached, write_lr_find
from lossdiag.rundir.paths import LR_FIND_CSV, LR_FIND_FIGURE, display_path, figure_path

VERSION = 1  # part of the cache key: raise it when the test or the choice changes
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoundLR:
    """The choice, the curve it was read from, and where the curve came from."""

    choice: Suggestion
    lrs: list[float] = field(repr=False)
    losses: list[float] = field(repr=False)
    seconds: float = 0.0
    cached: Path | None = None  # the cache file it was read from; None when measured by this run

    @property
    def lr(self) -> float:
        return self.choice.lr


def _choose(lrs: list[float], losses: list[float], min_lr: float, max_lr: float) -> Suggestion:
    """:func:`suggest`, or a one-line :class:`UserError` when the curve says nothing (a loss that barely moved up
    to the largest rate asks for larger rates, as the diagnosis's advice does for a run whose loss barely moved)."""
    if len(lrs) <= SKIP_START:
        raise UserError(
            f"optimizer.lr=auto: the range test's loss diverged within {len(lrs)} steps, at lr {lrs[-1]:.3g}: "
            f"lower lr_find.min_lr (now {min_lr:g}) or give optimizer.lr=<number>"
        )
    choice = suggest(lrs, losses)
    if not choice.conclusive:
        top = lrs[-1] >= 0.99 * max_lr  # the whole range was tried: the loss may fall at larger rates
        fix = f"raise lr_find.max_lr (now {max_lr:g}) or give" if top else "give"
        raise UserError(
            f"optimizer.lr=auto: the range test's smoothed loss fell only {choice.fall:.1%} between lr {min_lr:g} "
            f"and {lrs[-1]:.3g} (the model hardly learns): {fix} optimizer.lr=<number>"
        )
    return choice


def data_fingerprint(datamodule: InMemoryDataModule) -> str:
    """A hash of the training split as stored (pixels, labels, scale): the data's identity for the cache."""
    train = datamodule.train
    assert train is not None
    digest = hashlib.sha256(f"{train.scale}".encode())
    for tensor in (train.x, train.y):
        if not isinstance(tensor, torch.Tensor):
            tensor.fingerprint(digest)  # images memory-mapped or decoded on the fly: what they come from
            continue
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(memoryview(array).cast("B"))  # no copy: hashed where it lies
    return digest.hexdigest()


def identity(cfg: DictConfig, datamodule: InMemoryDataModule, processes: int = 1) -> dict[str, Any]:
    """Everything the range test's result depends on (the cache key's contents)."""
    optimizer = OmegaConf.to_container(cfg.optimizer, resolve=True)
    assert isinstance(optimizer, dict)
    optimizer.pop("lr", None)
    settings = {
        k: v for k, v in OmegaConf.to_container(cfg.lr_find, resolve=True).items() if k != "cache_dir"
    }  # type: ignore[union-attr]
    return {
        "version": VERSION,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": data_fingerprint(datamodule),
        "batch_size": datamodule.batch_size * processes,
        "augment": datamodule.augment,
        "optimizer": optimizer,
        "seed": int(cfg.seed),
        "settings": settings,
    }


def _measure(
    cfg: DictConfig,
    net: torch.nn.Module,
    datamodule: InMemoryDataModule,
    device: torch.device,
    processes: int = 1,
) -> FoundLR:
    settings = cfg.lr_find
    # one process, the global batch: the batches of the ranks of a multi-process run together (each steps on
    # their averaged gradient), and exactly those samples, as they deal the shuffled order out round-robin
    whole = copy.copy(datamodule)
    whole.batch_size = datamodule.batch_size * processes
    loader = whole.train_dataloader()

    def batches(epoch: int) -> Any:
        loader.sampler.set_epoch(epoch)  # each pass shuffled as training's epoch of that number is
        return loader

    start = time.perf_counter()
    curve = range_test(
        net,
        instantiate(cfg.optimizer, lr=float(settings.min_lr)),
        batches,
        float(settings.min_lr),
        float(settings.max_lr),
        int(settings.steps),
        int(cfg.seed),
        device,
    )
    seconds = time.perf_counter() - start
    choice = _choose(curve.lrs, curve.losses, float(settings.min_lr), float(settings.max_lr))
    return FoundLR(choice, curve.lrs, curve.losses, seconds)


def find_learning_rate(
    cfg: DictConfig,
    net: torch.nn.Module,
    datamodule: InMemoryDataModule,
    device: torch.device | str = "cpu",
    processes: int = 1,
) -> FoundLR:
    """The range test's choice for ``net`` on ``datamodule``'s training data: from the cache, else measured.

    ``processes``: how many processes train (each with ``data.batch_size``); the test steps on their global batch.
    """
    cache_dir = cfg.lr_find.get("cache_dir")
    if not cache_dir:
        return _measure(cfg, net, datamodule, torch.device(device), processes)
    key = identity(cfg, datamodule, processes)
    path = Path(str(cache_dir)) / f"{cache_key(key)}.json"
    with exclusive(path):  # a sweep's jobs with the same key: the first measures, the others read
        entry = read_cached(path)
        if entry is not None:  # the curve is the result; the choice is read off it again
            lrs, losses = list(entry["lrs"]), list(entry["losses"])
            choice = _choose(lrs, losses, float(cfg.lr_find.min_lr), float(cfg.lr_find.max_lr))
            return FoundLR(choice, lrs, losses, cached=path)
        found = _measure(cfg, net, datamodule, torch.device(device), processes)
        write_cached(
            path,
            {"lr": found.lr, "lrs": found.lrs, "losses": found.losses, "seconds": round(found.seconds, 3), "identity": key},
        )  # fmt: skip
    return found


def describe(found: FoundLR) -> str:
    """The console line (and TensorBoard text) saying what ``auto`` chose and how."""
    how = (
        f"cached in {display_path(found.cached)}"
        if found.cached is not None
        else f"{len(found.lrs)} steps in {found.seconds:.1f} s"
    )
    rule = (
        f"lowest smoothed loss at lr {found.choice.at:.3g}, / 10"
        if found.choice.rule == "min"
        else f"the loss never turned up to lr {found.lrs[-1]:.3g}: its steepest fall, at lr {found.choice.at:.3g}"
    )
    return (
        f"optimizer.lr=auto: {found.lr:g} (learning-rate range test, {how}: {rule}, on the 1-2-5 grid; "
        f"curve in {LR_FIND_CSV} and {figure_path('', LR_FIND_FIGURE)})"
    )


def record_learning_rate(found: FoundLR, run_dir: str | Path) -> RangeTestFigure:
    """Write the curve into ``run_dir`` (``lr_find.csv``) and log :func:`describe`; return the callback that
    draws the figure (``figures/lr_find.png`` and TensorBoard) in the training process (rank 0)."""
    summary = describe(found)
    marker = "lowest smoothed loss" if found.choice.rule == "min" else "steepest fall"
    write_lr_find(run_dir, found.lrs, found.losses)
    log.info(summary)
    return RangeTestFigure(run_dir, found.lrs, found.losses, (found.choice.at, marker), found.lr, summary)
