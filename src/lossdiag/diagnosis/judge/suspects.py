"""A run's likely label errors: every sample of both splits ranked, as rows of ``suspects.csv``.

The ranking (:func:`lossdiag.functional.suspects.rank_suspects`) uses what the run already recorded: the training
dynamics of every epoch (``samples.train_margin``) and the best model's outputs on the val split (a
``src.evaluate`` folder: the evaluated model's). Nothing is re-run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from lossdiag.diagnosis.samples import Samples
from lossdiag.functional.suspects import Suspects, rank_suspects

SHOWN = 32  # rows of suspects.md
TILES = 9  # images in each split's grid (TensorBoard suspects/<split>, figures/suspects_<split>.png): 3 rows of 3


@dataclass(frozen=True)
class SuspectRow:
    """One row of ``suspects.csv``."""

    rank: int
    split: str
    index: int
    path: str
    given: str
    suspected: str
    score: float
    raw_score: float
    p_given: float
    flagged: bool


SUSPECT_COLUMNS = tuple(f.name for f in fields(SuspectRow))  # suspects.csv's header


REFERENCE_MODELS = ("best_val_acc", "best", "last")  # the first a run has scores the suspects


def _reference_model(samples: Samples, model: str | None = None) -> str | None:
    """The model whose outputs score the val samples and name the class the model prefers."""
    if model is not None:
        return model
    return next((m for m in REFERENCE_MODELS if m in samples.models), None)


def rank_run(samples: Samples, model: str | None = None) -> Suspects | None:
    """The run's suspects (``None`` when it recorded neither training dynamics nor an evaluated model)."""
    ref = _reference_model(samples, model)
    evals = samples.models.get(ref, {}) if ref else {}
    train_eval = evals.get("train")
    dynamics = samples.dynamics_epochs and samples.train is not None and model is None
    val_eval = evals.get("val")
    if not dynamics and val_eval is None:
        return None
    return rank_suspects(
        train_margin=np.stack(samples.train_margin) if dynamics else None,
        train_p_given=train_eval.p_true if dynamics and train_eval is not None else
        (np.asarray(samples.train_p_given[-1], dtype=np.float64) if dynamics else None),
        train_preferred=train_eval.pred if dynamics and train_eval is not None else None,
        val_p_given=val_eval.p_true if val_eval is not None else None,
        val_preferred=val_eval.pred if val_eval is not None else None,
        val_given=samples.val.target if val_eval is not None else None,
    )  # fmt: skip


def suspect_rows(samples: Samples, suspects: Suspects) -> list[SuspectRow]:
    rows = []
    for rank, (split, where) in enumerate(zip(suspects.split, suspects.where, strict=True), start=1):
        info = samples.train if split == "train" else samples.val
        assert info is not None
        i = rank - 1
        preferred = int(suspects.preferred[i])
        rows.append(
            SuspectRow(
                rank=rank,
                split=str(split),
                index=int(info.index[where]),
                path=str(info.path[where]),
                given=samples.classes[int(info.target[where])],
                suspected=samples.classes[preferred] if preferred >= 0 else "",
                score=float(suspects.score[i]),
                raw_score=float(suspects.raw[i]),
                p_given=float(suspects.p_given[i]),
                flagged=bool(suspects.flagged[i]),
            )
        )
    return rows


def wanted_images(suspects: Suspects | None, samples: Samples, shown: int = TILES) -> dict[str, list[int]]:
    """Sample indices (per split) whose images the grids show: each split's ``shown`` most suspect."""
    if suspects is None:
        return {}
    out = {}
    for split in ("train", "val"):
        info = samples.train if split == "train" else samples.val
        if info is not None:
            out[split] = [int(info.index[w]) for w in suspects.top(split, shown)]
    return out


def val_label_suspects(
    samples: Samples,
    kind: str,
    collapsed_classes: Sequence[str] = (),
    model: str | None = None,
    min_epoch: int | None = None,
) -> np.ndarray:
    """The val samples flagged as likely label errors (bool, val row order), confident-learning style.

    Judged under the model the verdict uses: the min-loss epoch (before the rise; a memorised or over-confident
    model would flag its own mistakes), or the evaluated ``model``. A sample is flagged when that model predicts
    another class ``j`` with at least class ``j``'s self-confidence (the mean probability it gives samples labelled
    ``j``: a per-class threshold, as confident learning's) and the recorded epochs up to then mostly agree.
    Nothing is flagged for a model that did not learn, nor for samples of collapsed classes.
    """
    target = np.asarray(samples.val.target)
    flagged = np.zeros(len(target), dtype=bool)
    if kind == "not_learning":
        return flagged
    if model is not None:
        early = [samples.models[model]["val"]]
    else:
        epochs = list(samples.epochs)
        last = epochs.index(min_epoch) if min_epoch in epochs else len(epochs) - 1
        early = samples.val_epochs[: last + 1]
    ref = early[-1]
    counts = np.bincount(target, minlength=len(samples.classes))
    sums = np.bincount(target, weights=np.asarray(ref.p_true, dtype=np.float64), minlength=len(samples.classes))
    with np.errstate(invalid="ignore", divide="ignore"):
        threshold = np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)
    pred = np.asarray(ref.pred, dtype=np.int64)
    agree = np.mean([np.asarray(e.pred) == pred for e in early], axis=0) >= 0.5
    flagged = (pred != target) & (np.asarray(ref.conf) >= threshold[pred]) & agree
    collapsed = np.isin(np.asarray(samples.classes)[target], list(collapsed_classes))
    return flagged & ~collapsed
