"""The judge stage: the verdict over a run's recorded samples, as numbers (``diagnosis.json``).

:func:`judge` computes the run statistics once (:mod:`lossdiag.diagnosis.stats`), walks the rules
(:mod:`lossdiag.diagnosis.rules`) and adds where the loss comes from (per-model shares of the worst and the wrong
samples, calibration, the most extreme samples). Pure: every number can be re-derived from ``samples.npz``. Words
live in :mod:`lossdiag.render`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from lossdiag.diagnosis.judge.causes import Cause, decide_cause, sample_groups, split_by_group
from lossdiag.diagnosis.judge.rules import Case, Kind, Rule, decide
from lossdiag.diagnosis.judge.stats import RunFacts, RunStats, run_stats
from lossdiag.diagnosis.judge.suspects import val_label_suspects
from lossdiag.diagnosis.samples import Samples
from lossdiag.functional.breakdown import (
    correct_wrong_breakdown,
    count_above_cap,
    top_count,
    top_share,
    worst_indices,
)
from lossdiag.functional.jsonable import json_ready
from lossdiag.functional.losses import bound_losses
from lossdiag.functional.outputs import Evaluation
from lossdiag.functional.temperature import temperature_status

FORMAT_VERSION = 2  # of diagnosis.json (2: cause, rise_by_group, smoothed rise, repeated cross-fits, "given")
N_EXTREME = 3  # the most extreme samples listed
# the range reported over the cross-fit splits: the middle 90% (a split whose half holds no mistake fits T at its
# bound and scores the other half absurdly; one such split in 50 must not decide what the others agree on)
SPLIT_RANGE = (0.05, 0.95)


@dataclass(frozen=True)
class ModelNumbers:
    """Where one model's mean val loss comes from (shares of the worst samples, of the wrong ones)."""

    loss: float
    acc: float
    n: int
    top1_share: float
    top1_n: int
    top5_share: float
    top5_n: int
    wrong_share: float
    n_wrong: int
    loss_from_wrong: float
    loss_from_correct: float
    conf_wrong_mean: float
    p_true_correct_mean: float
    bounded: float
    n_above_cap: int
    ece: float
    temperature: float  # fitted on all of the split's samples
    # ok, at_bound or not_identifiable (lossdiag.functional.calibration.temperature_status)
    temperature_status: str
    # NLL and ECE after temperature scaling, cross-fitted (no sample scored with its own fit): the median over
    # the random splits, and the range of the middle 90% of them (SPLIT_RANGE)
    nll_crossfit: float
    nll_crossfit_range: tuple[float, float]
    ece_crossfit: float
    ece_crossfit_range: tuple[float, float]
    # the fitted temperature improves the NLL or the ECE out of sample across that range (what "over-confident" needs)
    scaling_helps: bool


@dataclass(frozen=True)
class ExtremeSample:
    """One of the highest-loss val samples of the final model: its given label, the predicted class, and the
    final model's probability of each."""

    index: int
    path: str
    given: str
    predicted: str
    p_given: float
    p_predicted: float
    loss: float
    loss_at_min: float


@dataclass(frozen=True)
class Verdict:
    """Everything ``diagnosis.md`` states, as numbers: the rule that decided, the statistics it looked at, and
    where the final loss comes from. ``at_min`` and the ``rise_from_*`` parts are ``None`` without history."""

    kind: Kind
    rule: Rule
    cause: Cause
    stats: RunStats
    facts: RunFacts
    evaluated_on: str
    objective: str | None
    loss_cap: float
    n_train: int | None
    n_train_above_cap: int | None
    scaling_removes: float | None  # median over the cross-fit splits
    scaling_removes_range: tuple[float, float] | None  # the middle 90% of the splits
    final: ModelNumbers
    at_min: ModelNumbers | None
    rise_from_worst5: float | None
    rise_from_wrong: float | None
    rise_from_rest: float | None
    rise_by_group: dict[str, dict[str, float]] | None  # see lossdiag.diagnosis.judge.causes
    final_loss_by_group: dict[str, dict[str, float]]
    extreme: tuple[ExtremeSample, ...]

    @property
    def history(self) -> bool:
        return self.stats.history

    @property
    def shows_min(self) -> bool:
        """Whether the minimum-loss epoch is another state than the final one (worth its own column)."""
        return self.history and self.stats.min_epoch != self.stats.last_epoch

    def to_dict(self, reason: str, advice: str) -> dict:
        """``diagnosis.json``: the verdict, its words, the statistics, then where the loss comes from.
        JSON-ready: tuples become lists, non-finite floats ``None``."""
        rest = asdict(self)
        for key in ("kind", "rule", "cause", "stats", "facts", "evaluated_on"):
            del rest[key]
        head = {
            "format_version": FORMAT_VERSION,
            "verdict": str(self.kind),
            "rule": str(self.rule),
            "cause": str(self.cause),
            "reason": reason,
            "advice": advice,
            "history": self.history,
            "evaluated_on": self.evaluated_on,
        }
        return json_ready({**head, **asdict(self.stats), **rest})


def model_numbers(ev: Evaluation, target: np.ndarray, cap: float) -> ModelNumbers:
    """Where one evaluation's mean loss comes from (shares of the worst samples, wrong samples)."""
    correct = ev.correct(target)
    parts = {k: float(v) for k, v in correct_wrong_breakdown(ev, target).items()}
    loss = torch.from_numpy(ev.loss.astype(np.float64))
    temperature = _calib(ev, "temperature")
    return ModelNumbers(
        loss=float(loss.mean()),
        acc=float(correct.mean()),
        n=len(loss),
        top1_share=float(top_share(loss, 0.01)),
        top1_n=top_count(len(loss), 0.01),
        top5_share=float(top_share(loss, 0.05)),
        top5_n=top_count(len(loss), 0.05),
        wrong_share=parts["share_from_wrong"],
        n_wrong=int(parts["n_wrong"]),
        loss_from_wrong=parts["loss_from_wrong"],
        loss_from_correct=parts["loss_from_correct"],
        conf_wrong_mean=parts["conf_wrong_mean"],
        p_true_correct_mean=parts["p_true_correct_mean"],
        bounded=float(bound_losses(loss, cap).mean()),
        n_above_cap=int(count_above_cap(loss, cap)),
        ece=_calib(ev, "ece"),
        temperature=temperature,
        temperature_status=temperature_status(temperature, int(correct.sum()), len(loss)),
        nll_crossfit=_calib(ev, "nll_crossfit"),
        nll_crossfit_range=_range(ev, "nll_crossfit_splits"),
        ece_crossfit=_calib(ev, "ece_crossfit"),
        ece_crossfit_range=_range(ev, "ece_crossfit_splits"),
        scaling_helps=_range(ev, "nll_crossfit_splits")[1] < float(loss.mean())
        or _range(ev, "ece_crossfit_splits")[1] < _calib(ev, "ece"),
    )


def _calib(ev: Evaluation, key: str) -> float:
    return float(ev.calibration.get(key, math.nan))


def split_range(values: np.ndarray | float) -> tuple[float, float]:
    """The middle 90% (:data:`SPLIT_RANGE`) of per-split values (NaN when they were not cross-fitted)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 0 or not np.isfinite(values).all():
        return math.nan, math.nan
    low, high = np.quantile(values, SPLIT_RANGE)
    return float(low), float(high)


def _range(ev: Evaluation, key: str) -> tuple[float, float]:
    return split_range(ev.calibration.get(key, math.nan))


def judge(
    samples: Samples,
    model: str | None = None,
    evaluated_on: str = "val split",
    flag_thresholds: np.ndarray | None = None,
    flags_off: str | None = None,
) -> Verdict:
    """The verdict over the recorded epochs of ``samples`` (or, ``model=<name>``, one evaluated model).

    The untrained model's val loss (``models["initial"]``) decides whether val loss ever fell; the final
    model's train losses how many training samples sit above the cap. ``evaluated_on`` says what the
    samples are. ``flag_thresholds`` / ``flags_off`` set which val samples are likely label errors
    (:func:`~.suspects.val_label_suspects`, as ``suspects.csv`` flags them).
    """
    if model is not None:
        evals, epochs, final_model = [samples.models[model]["val"]], [samples.model_epoch[model]], model
        loss, pred = evals[0].loss[None], evals[0].pred[None]
    else:  # the history as the journal holds it: read as the statistics use it
        evals, epochs, final_model = samples.val_epochs, samples.epochs, "last"
        assert samples.val_journal is not None
        records = samples.val_journal.records()
        loss, pred = records["loss"], records["pred"]
    if not len(evals):
        raise ValueError("no validation outputs recorded: nothing to diagnose")
    initial = samples.models.get("initial", {}).get("val") if model is None else None
    train = samples.models.get(final_model, {}).get("train")
    target = np.asarray(samples.val.target)
    stats, facts = run_stats(
        loss,
        pred,
        target,
        samples.classes,
        epochs,
        initial_loss=float(np.mean(initial.loss, dtype=np.float64)) if initial is not None else None,
    )
    row = decide(Case(stats, facts))
    i_min = [int(e) for e in epochs].index(stats.min_epoch)
    last, at_min = evals[len(evals) - 1], evals[i_min]
    final = model_numbers(last, target, samples.loss_cap)
    m = final if i_min == len(evals) - 1 else model_numbers(at_min, target, samples.loss_cap)
    # which samples the rise comes from: per-sample change between the min-loss epoch and the end
    n = len(target)
    delta = (last.loss.astype(np.float64) - at_min.loss.astype(np.float64)) / n
    order = worst_indices(last.loss, max(final.top5_n, N_EXTREME))  # one sort for both lists below
    from_worst5 = float(delta[order[: final.top5_n]].sum())
    history = stats.history
    collapsed = stats.collapsed_classes
    suspected = val_label_suspects(samples, row.kind, collapsed, model, flag_thresholds, flags_off)
    in_collapsed = np.isin(np.asarray(samples.classes)[target], stats.collapsed_classes)
    groups = sample_groups(at_min.correct(target), last.correct(target), in_collapsed, suspected)
    rise_by_group = split_by_group(delta, groups, "rise") if history else None
    removes = _scaling_removes(last, at_min, m, final, stats.rise) if stats.significant_rise else None
    return Verdict(
        kind=row.kind,
        rule=row.rule,
        cause=decide_cause(rise_by_group, stats.significant_rise) if rise_by_group else Cause.NONE,
        stats=stats,
        facts=facts,
        evaluated_on=evaluated_on,
        objective=samples.objective or None,
        loss_cap=float(samples.loss_cap),
        n_train=None if train is None else len(train.loss),
        n_train_above_cap=_above_cap(train, samples.loss_cap),
        scaling_removes=None if removes is None else float(np.median(removes)),
        scaling_removes_range=None if removes is None else split_range(removes),
        final=final,
        at_min=m if history else None,
        rise_from_worst5=from_worst5 if history else None,
        rise_from_wrong=float(delta[~last.correct(target)].sum()) if history else None,
        rise_from_rest=float(delta.sum()) - from_worst5 if history else None,
        rise_by_group=rise_by_group,
        final_loss_by_group=split_by_group(last.loss.astype(np.float64) / n, groups, "loss"),
        extreme=tuple(_extreme(samples, last, at_min, i) for i in order[:N_EXTREME]),
    )


def _above_cap(train: Evaluation | None, cap: float) -> int | None:
    if train is None or not math.isfinite(cap):
        return None
    return int(count_above_cap(torch.as_tensor(np.asarray(train.loss, dtype=np.float64)), cap))


def _extreme(samples: Samples, last: Evaluation, at_min: Evaluation, i: int) -> ExtremeSample:
    return ExtremeSample(
        index=int(samples.val.index[i]),
        path=str(samples.val.path[i]),
        given=samples.classes[int(samples.val.target[i])],
        predicted=samples.classes[int(last.pred[i])],
        p_given=float(last.p_true[i]),
        p_predicted=float(last.conf[i]),
        loss=float(last.loss[i]),
        loss_at_min=float(at_min.loss[i]),
    )


def _scaling_removes(
    last: Evaluation, at_min: Evaluation, m: ModelNumbers, final: ModelNumbers, rise: float | None
) -> np.ndarray | None:
    """Per cross-fit split, the share of the raw rise that temperature scaling removes: ``1 - scaled rise / raw
    rise`` (the same split at both epochs). Above 1 when the scaled NLL fell while the raw one rose, below 0 when it
    rose more than the raw one; ``None`` when a temperature is not usable (at its bound, not identifiable), an
    epoch was not cross-fitted, or there is no rise."""
    usable = all(x.temperature_status == "ok" and math.isfinite(x.nll_crossfit) for x in (final, m))
    if not usable or rise is None or rise <= 0:
        return None
    scaled = [np.asarray(e.calibration.get("nll_crossfit_splits", math.nan), dtype=np.float64) for e in (last, at_min)]
    if not all(np.isfinite(v).all() for v in scaled):
        return None
    return 1.0 - (scaled[0] - scaled[1]) / rise
