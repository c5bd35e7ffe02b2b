"""A run's likely label errors: every sample of both splits ranked, and flagged where the model can judge.

The ranking uses what the run recorded (nothing is re-run), read before the model memorises: the *early window*
is twice the epochs up to the val-loss minimum (:func:`~lossdiag.functional.suspects.early_window`).

- Training images: minus the area under the margin of their own training steps over the early window
  (:func:`~lossdiag.functional.suspects.early_aum`); with ``suspects.folds=K`` (``samples.train_oof``) that AUM
  averaged with the K-1 folds' that also trained on the image, combined with cleanlab's label quality on the
  out-of-fold probabilities (:data:`FOLDS_WEIGHT` on the folds).
- Validation images: ``p_given`` under the reference model (:func:`reference_model`; ``src.evaluate``: the
  evaluated one) averaged with its mean over the early window (:func:`~lossdiag.functional.suspects.val_suspicion`); with
  ``suspects.folds=K`` combined with the K folds' early-window AUM (each fold trains on the val split).

Flags mean label noise, not training state: none when the verdict is ``not_learning``, none for images labelled
with a collapsed class, and thresholds calibrated per class (confident learning: ``t[c]`` = mean ``p_given`` of
the val images labelled ``c``). A val image is flagged when the model prefers another class ``j`` with
``p(j) >= t[j]``; a training image when, over the early window, another class out-scored its label by more
than the images of its class usually trail (:func:`~lossdiag.functional.suspects.train_flags`), or, with folds,
when cleanlab's ``find_label_issues`` (confident learning) finds it on the out-of-fold probabilities and its
dynamics agree (it is in the most suspect :data:`DYNAMICS_AGREE` of its split). ``src.evaluate`` flags with the
thresholds its training run stored (``suspects.json``). The flagged val samples are the verdict's
``suspected_label_error`` group (:func:`val_label_suspects`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from lossdiag.diagnosis.judge.stats import mean_losses
from lossdiag.diagnosis.samples import Samples
from lossdiag.functional.jsonable import json_ready
from lossdiag.functional.outputs import Evaluation
from lossdiag.functional.suspects import (
    CLEANLAB,
    CONFIDENT_OTHER,
    EARLY_DYNAMICS,
    SplitScores,
    Suspects,
    class_thresholds,
    cleanlab_issues,
    combine,
    confident_other,
    early_aum,
    early_window_end,
    merge_splits,
    quantile,
    train_flags,
    val_suspicion,
)

SHOWN = 32  # rows of suspects.md
TILES = 9  # images in each split's grid (TensorBoard suspects/<split>, figures/suspects_<split>.png): 3 rows of 3
# share of the cross-validated signal in a training image's score (benchmarks/suspects_prototype.py)
FOLDS_WEIGHT = 0.5
# a cleanlab issue is flagged when the dynamics put it in this most suspect share of its split
DYNAMICS_AGREE = 0.25
NOT_LEARNING = "not_learning"  # why flags are off: the verdict says the model did not learn
NO_THRESHOLDS = "no_thresholds"  # src.evaluate on another folder without the training run's thresholds


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
    early_p_given: float
    oof_p_given: float
    ranked_by: str
    flagged: bool
    flag_rule: str


SUSPECT_COLUMNS = tuple(f.name for f in fields(SuspectRow))  # suspects.csv's header


@dataclass(frozen=True)
class FlagGate:
    """Where flags may fall: nowhere (``off`` says why), or everywhere but the images labelled ``excluded``."""

    off: str | None
    excluded: tuple[str, ...]

    def allows(self, given: np.ndarray, classes: Sequence[str]) -> np.ndarray:
        if self.off is not None:
            return np.zeros(len(given), dtype=bool)
        ids = [classes.index(c) for c in self.excluded if c in classes]
        return ~np.isin(np.asarray(given), ids)


def flag_gate(
    verdict_kind: str | None, collapsed_classes: Sequence[str] = (), off: str | None = None
) -> FlagGate:
    """No flags when the verdict is ``not_learning`` (or ``off`` names another reason); none inside collapsed
    classes (recall 0 beyond chance: the model cannot judge an image it never assigns to its label)."""
    if off is None and verdict_kind is not None and str(verdict_kind) == NOT_LEARNING:
        off = NOT_LEARNING
    return FlagGate(off, tuple(collapsed_classes))


@dataclass(frozen=True)
class RunSuspects:
    """The ranked suspects and how they were made (what ``suspects.md`` and ``suspects.json`` say)."""

    suspects: Suspects
    gate: FlagGate
    min_epoch: int | None  # the val-loss minimum the early window ends at (None: one evaluated model)
    window_end: int | None  # the last epoch of the early window
    folds: int  # K of suspects.folds (0: one training)
    thresholds: np.ndarray | None  # the val flags' per-class thresholds
    thresholds_from: str  # the model whose val outputs are judged ("best_val_acc", ...; src.evaluate: the evaluated)


REFERENCE_MODELS = ("best_val_acc", "best", "last")  # the first a run has scores the suspects


def reference_model(samples: Samples, model: str | None = None) -> str | None:
    """The model whose outputs score the val samples and name the class the model prefers: ``model``, else the
    best-accuracy one (``best_val_acc``; ``best`` in older runs), else ``last``; ``None`` when none was evaluated
    (then the epoch of the lowest val loss)."""
    if model is not None:
        return model
    return next((m for m in REFERENCE_MODELS if m in samples.models), None)


def _val_outputs(samples: Samples, model: str | None) -> Evaluation | None:
    """The reference model's val outputs; with no whole model evaluated (``reports=false``, a bare record) the
    epoch of the lowest val loss (before the rise: a memorised or over-confident epoch flags its own mistakes)."""
    ref = reference_model(samples, model)
    ev = samples.models.get(ref, {}).get("val") if ref else None
    if ev is None and model is None and (early := early_epochs(samples)) is not None:
        return samples.val_epochs[samples.epochs.index(early[0])]
    return ev


def early_epochs(samples: Samples) -> tuple[int, int] | None:
    """``(min_epoch, window_end)``: the epoch of the lowest mean val loss and the last epoch of the early window
    (up to it, at least ``MIN_WINDOW`` epochs of training dynamics); ``None`` without recorded epochs."""
    if samples.val_journal is None or not len(samples.val_epochs):
        return None
    loss = samples.val_journal.records()["loss"]  # (E, N), streamed in blocks of epochs
    return early_window_end(samples.dynamics_epochs, samples.epochs, mean_losses(loss))


def _early_p_given(samples: Samples, window_end: int) -> np.ndarray:
    """Each val sample's mean p(given) over the recorded epochs of the early window (only those epochs are read)."""
    assert samples.val_journal is not None
    window = sum(e <= window_end for e in samples.epochs)
    loss = samples.val_journal.records()["loss"][:window]
    return np.exp(-np.asarray(loss, dtype=np.float64)).mean(axis=0)


def model_thresholds(samples: Samples) -> dict[str, list[float]]:
    """Every evaluated model's per-class thresholds on the val split (what ``suspects.json`` stores)."""
    return {
        name: class_thresholds(splits["val"].p_true, samples.val.target, len(samples.classes)).tolist()
        for name, splits in samples.models.items()
        if "val" in splits
    }


def val_label_suspects(
    samples: Samples,
    verdict_kind: str | None,
    collapsed_classes: Sequence[str] = (),
    model: str | None = None,
    thresholds: np.ndarray | None = None,
    flags_off: str | None = None,
) -> np.ndarray:
    """The val samples flagged as likely label errors, ``(N_val,)`` bool in val row order: the ``flagged`` val
    rows of ``suspects.csv`` (the verdict's ``suspected_label_error`` group).

    Under ``model`` (default: :func:`reference_model`), with ``thresholds`` per class (default:
    calibrated on these val outputs), gated by the verdict (``verdict_kind``, ``collapsed_classes``: names;
    ``flags_off``: none, for that reason).
    """
    ev = _val_outputs(samples, model)
    target = np.asarray(samples.val.target)
    gate = flag_gate(verdict_kind, collapsed_classes, flags_off)
    if ev is None:
        return np.zeros(len(target), dtype=bool)
    return _val_flags(ev, target, samples.classes, gate, thresholds)


def _val_flags(
    ev: Evaluation, target: np.ndarray, classes: Sequence[str], gate: FlagGate, thresholds: np.ndarray | None
) -> np.ndarray:
    t = thresholds if thresholds is not None else class_thresholds(ev.p_true, target, len(classes))
    return confident_other(ev.pred, ev.conf, target, t) & gate.allows(target, classes)


def _rules(flagged: np.ndarray, rule: str) -> np.ndarray:
    return np.where(flagged, rule, "")


def _train_scores(samples: Samples, window_end: int, gate: FlagGate) -> tuple[SplitScores, np.ndarray | None]:
    """The training images scored by their early dynamics (with folds: over every training that learned them), and
    with folds their out-of-fold suspicion (``1 -`` cleanlab's label quality), else ``None``."""
    assert samples.train is not None
    target = np.asarray(samples.train.target)
    window = sum(e <= window_end for e in samples.dynamics_epochs)
    margin = np.asarray(samples.train_margin[:window], dtype=np.float64)
    p = np.asarray(samples.train_p_given[:window], dtype=np.float64)
    raw = early_aum(margin, window)
    ref = samples.models.get(reference_model(samples) or "", {}).get("train")
    n = len(target)
    p_given = ref.p_true.astype(np.float64) if ref is not None else np.full(n, np.nan)
    preferred = ref.pred.astype(np.int64) if ref is not None else np.full(n, -1)
    allowed = gate.allows(target, samples.classes)
    oof_p, ranked_by, held = np.full(n, np.nan), "early_aum", None
    if samples.train_folds_aum is not None:  # the mean over every training that learned the image: K of them
        k = samples.oof_folds
        raw = (raw + (k - 1) * np.asarray(samples.train_folds_aum, dtype=np.float64)) / k
    rule = _rules(train_flags(-raw[None], target, len(samples.classes)) & allowed, EARLY_DYNAMICS)
    if samples.train_oof is not None:
        oof = np.asarray(samples.train_oof, dtype=np.float64)
        quality, issues = cleanlab_issues(target, oof)
        agree = quantile(raw) > 1.0 - DYNAMICS_AGREE
        held = 1.0 - quality
        oof_p, preferred = oof[np.arange(n), target], oof.argmax(axis=1)
        rule = np.where((rule == "") & issues & agree & allowed, CLEANLAB, rule)
        ranked_by = f"early_aum+cleanlab_{samples.oof_folds}_folds"
    return SplitScores("train", raw, p_given, p.mean(axis=0), oof_p, preferred, rule, ranked_by), held


def _val_scores(
    samples: Samples, ev: Evaluation, p_early: np.ndarray, gate: FlagGate, t: np.ndarray | None, early: bool
) -> SplitScores:
    target = np.asarray(samples.val.target)
    p = ev.p_true.astype(np.float64)
    rule = _rules(_val_flags(ev, target, samples.classes, gate, t), CONFIDENT_OTHER)
    ranked_by = "p_given+early_p_given" if early else "p_given"
    return SplitScores("val", val_suspicion(p, p_early), p, p_early, np.full(len(p), np.nan), ev.pred.astype(np.int64),
                       rule, ranked_by)  # fmt: skip


def _on_one_scale(
    train: SplitScores, held: np.ndarray, val: SplitScores, val_aum: np.ndarray, folds: int
) -> list[SplitScores]:
    """With folds both splits have the same two signals, so one score ranks them together (no per-split merge):
    the dynamics (train: every training that learned the image; val: the K folds, which all trained on it) and a
    held-out view (train: out of fold; val: the run's own model), each as a quantile over every image,
    :data:`FOLDS_WEIGHT` on the held-out one."""
    n = len(train.raw)
    dynamics = np.concatenate([train.raw, np.asarray(val_aum, dtype=np.float64)])
    combined = combine(quantile(dynamics), quantile(np.concatenate([held, val.raw])), FOLDS_WEIGHT)
    val_by = f"{val.ranked_by}+early_aum_{folds}_folds"
    return [replace(train, raw=combined[:n]), replace(val, raw=combined[n:], ranked_by=val_by)]


def _judgeable_first(ranked: Suspects, samples: Samples, gate: FlagGate) -> Suspects:
    """The images of classes the model cannot judge (collapsed: never flagged) after every other image, each part
    in its own order: their low p(given) says the class collapsed, not that the label is wrong."""
    if gate.off is not None or not gate.excluded:
        return ranked
    given = np.empty(len(ranked.split), dtype=np.int64)
    for name, info in (("val", samples.val), ("train", samples.train)):
        rows = ranked.split == name
        if info is not None and rows.any():
            given[rows] = np.asarray(info.target)[ranked.where[rows]]
    order = np.argsort(~gate.allows(given, samples.classes), kind="stable")
    return Suspects(**{f.name: getattr(ranked, f.name)[order] for f in fields(Suspects)})


def rank_run(
    samples: Samples,
    model: str | None = None,
    verdict_kind: str | None = None,
    collapsed_classes: Sequence[str] = (),
    thresholds: np.ndarray | None = None,
    flags_off: str | None = None,
) -> RunSuspects | None:
    """The run's suspects (``None`` when it recorded neither training dynamics nor val outputs).

    ``model`` is the evaluated model (``src.evaluate``: no training dynamics then), ``verdict_kind`` and
    ``collapsed_classes`` gate the flags (:func:`flag_gate`; ``flags_off`` turns them off with that reason),
    ``thresholds`` are the val flags' per-class thresholds (default: calibrated on this val split). The order
    of the list depends on neither.
    """
    gate = flag_gate(verdict_kind, collapsed_classes, flags_off)
    early = early_epochs(samples) if model is None else None
    train = held = None
    if model is None and early is not None and samples.dynamics_epochs and samples.train is not None:
        train, held = _train_scores(samples, early[1], gate)
    ev = _val_outputs(samples, model)
    target = np.asarray(samples.val.target)
    t = (
        thresholds
        if thresholds is not None or ev is None
        else class_thresholds(ev.p_true, target, len(samples.classes))
    )
    val = None
    if ev is not None:
        p_early = ev.p_true.astype(np.float64) if early is None else _early_p_given(samples, early[1])
        val = _val_scores(samples, ev, p_early, gate, t, early is not None)
    if train is not None and held is not None and val is not None and samples.val_folds_aum is not None:
        ranked = merge_splits(
            _on_one_scale(train, held, val, samples.val_folds_aum, samples.oof_folds), one_scale=True
        )
    elif train is not None or val is not None:
        if train is not None and held is not None:  # folds without a val split to rank with
            train = replace(train, raw=combine(quantile(train.raw), quantile(held), FOLDS_WEIGHT))
        ranked = merge_splits([part for part in (train, val) if part is not None])
    else:
        return None
    return RunSuspects(
        suspects=_judgeable_first(ranked, samples, gate),
        gate=gate,
        min_epoch=early[0] if early else None,
        window_end=early[1] if early else None,
        folds=samples.oof_folds if held is not None else 0,
        thresholds=t,
        thresholds_from=reference_model(samples, model) or "lowest-val-loss epoch's",
    )


def suspect_rows(samples: Samples, ranked: Suspects) -> list[SuspectRow]:
    rows = []
    for i, (split, where) in enumerate(zip(ranked.split, ranked.where, strict=True)):
        info = samples.train if split == "train" else samples.val
        assert info is not None
        preferred = int(ranked.preferred[i])
        rows.append(
            SuspectRow(
                rank=i + 1,
                split=str(split),
                index=int(info.index[where]),
                path=str(info.path[where]),
                given=samples.classes[int(info.target[where])],
                suspected=samples.classes[preferred] if preferred >= 0 else "",
                score=float(ranked.score[i]),
                raw_score=float(ranked.raw[i]),
                p_given=float(ranked.p_given[i]),
                early_p_given=float(ranked.early_p_given[i]),
                oof_p_given=float(ranked.oof_p_given[i]),
                ranked_by=str(ranked.ranked_by[i]),
                flagged=bool(ranked.flag_rule[i] != ""),
                flag_rule=str(ranked.flag_rule[i]),
            )
        )
    return rows


def wanted_images(run: RunSuspects | None, samples: Samples, shown: int = TILES) -> dict[str, list[int]]:
    """Sample indices (per split) whose images the grids show: each split's ``shown`` most suspect."""
    if run is None:
        return {}
    out = {}
    for split in ("train", "val"):
        info = samples.train if split == "train" else samples.val
        if info is not None:
            out[split] = [int(info.index[w]) for w in run.suspects.top(split, shown)]
    return out



def suspects_record(samples: Samples, run: RunSuspects, rows: Sequence[SuspectRow]) -> dict[str, Any]:
    """``suspects.json``: the per-class thresholds of every model (``src.evaluate`` flags with them) and how the
    list was made."""
    return json_ready(
        {
            "format_version": 1,
            "classes": samples.classes,
            "thresholds": model_thresholds(samples),
            "thresholds_from": run.thresholds_from,
            "min_epoch": run.min_epoch,
            "early_window_end": run.window_end,
            "folds": run.folds,
            "flags_off": run.gate.off,
            "flags_excluded_classes": list(run.gate.excluded),
            "flagged": {s: sum(r.flagged for r in rows if r.split == s) for s in ("train", "val")},
        }
    )
