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

from lossdiag.diagnosis.judge.rules import Case, Kind, Rule, decide
from lossdiag.diagnosis.judge.stats import RunFacts, RunStats, run_stats
from lossdiag.diagnosis.samples import Samples
from lossdiag.functional.breakdown import (
    correct_wrong_breakdown,
    count_above_cap,
    top_count,
    top_share,
    worst_indices,
)
from lossdiag.functional.calibration import temperature_status
from lossdiag.functional.jsonable import json_ready
from lossdiag.functional.losses import bound_losses
from lossdiag.functional.outputs import Evaluation

FORMAT_VERSION = 1  # of diagnosis.json
N_EXTREME = 3  # the most extreme samples listed


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
    nll_crossfit: float  # NLL after temperature scaling, cross-fitted (no sample scored with its own fit)
    ece_crossfit: float  # ECE after temperature scaling, cross-fitted


@dataclass(frozen=True)
class ExtremeSample:
    """One of the highest-loss val samples of the final model."""

    index: int
    path: str
    true: str
    pred: str
    p_true: float
    conf: float
    loss: float
    loss_at_min: float


@dataclass(frozen=True)
class Verdict:
    """Everything ``diagnosis.md`` states, as numbers: the rule that decided, the statistics it looked at, and
    where the final loss comes from. ``at_min`` and the ``rise_from_*`` parts are ``None`` without history."""

    kind: Kind
    rule: Rule
    stats: RunStats
    facts: RunFacts
    evaluated_on: str
    objective: str | None
    loss_cap: float
    n_train: int | None
    n_train_above_cap: int | None
    scaling_removes: float | None
    final: ModelNumbers
    at_min: ModelNumbers | None
    rise_from_worst5: float | None
    rise_from_wrong: float | None
    rise_from_rest: float | None
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
        for key in ("kind", "rule", "stats", "facts", "evaluated_on"):
            del rest[key]
        head = {
            "format_version": FORMAT_VERSION,
            "verdict": str(self.kind),
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
        ece_crossfit=_calib(ev, "ece_crossfit"),
    )


def _calib(ev: Evaluation, key: str) -> float:
    return float(ev.calibration.get(key, math.nan))


def judge(samples: Samples, model: str | None = None, evaluated_on: str = "val split") -> Verdict:
    """The verdict over the recorded epochs of ``samples`` (or, ``model=<name>``, one evaluated model).

    The untrained model's val loss (``models["initial"]``) decides whether val loss ever fell; the final
    model's train losses how many training samples sit above the cap. ``evaluated_on`` says what the
    samples are.
    """
    if model is not None:
        evals, epochs, final_model = [samples.models[model]["val"]], [samples.model_epoch[model]], model
    else:
        evals, epochs, final_model = samples.val_epochs, samples.epochs, "last"
    if not evals:
        raise ValueError("no validation outputs recorded: nothing to diagnose")
    initial = samples.models.get("initial", {}).get("val") if model is None else None
    train = samples.models.get(final_model, {}).get("train")
    target = np.asarray(samples.val.target)
    stats, facts = run_stats(
        np.stack([e.loss for e in evals]),
        np.stack([e.pred for e in evals]),
        target,
        samples.classes,
        epochs,
        initial_loss=float(np.mean(initial.loss, dtype=np.float64)) if initial is not None else None,
    )
    row = decide(Case(stats, facts))
    last, at_min = evals[-1], evals[[int(e) for e in epochs].index(stats.min_epoch)]
    final = model_numbers(last, target, samples.loss_cap)
    m = final if at_min is last else model_numbers(at_min, target, samples.loss_cap)
    # which samples the rise comes from: per-sample change between the min-loss epoch and the end
    delta = (last.loss.astype(np.float64) - at_min.loss.astype(np.float64)) / len(target)
    order = worst_indices(last.loss, max(final.top5_n, N_EXTREME))  # one sort for both lists below
    from_worst5 = float(delta[order[: final.top5_n]].sum())
    history = stats.history
    return Verdict(
        kind=row.kind,
        rule=row.rule,
        stats=stats,
        facts=facts,
        evaluated_on=evaluated_on,
        objective=samples.objective or None,
        loss_cap=float(samples.loss_cap),
        n_train=None if train is None else len(train.loss),
        n_train_above_cap=_above_cap(train, samples.loss_cap),
        scaling_removes=_scaling_removes(final, m, stats.rise) if stats.significant_rise else None,
        final=final,
        at_min=m if history else None,
        rise_from_worst5=from_worst5 if history else None,
        rise_from_wrong=float(delta[~last.correct(target)].sum()) if history else None,
        rise_from_rest=float(delta.sum()) - from_worst5 if history else None,
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
        true=samples.classes[int(samples.val.target[i])],
        pred=samples.classes[int(last.pred[i])],
        p_true=float(last.p_true[i]),
        conf=float(last.conf[i]),
        loss=float(last.loss[i]),
        loss_at_min=float(at_min.loss[i]),
    )


def _scaling_removes(final: ModelNumbers, at_min: ModelNumbers, rise: float | None) -> float | None:
    """Share of the raw rise that cross-fitted temperature scaling removes: ``1 - scaled rise / raw rise``.

    Above 1 when the scaled NLL fell while the raw one rose, below 0 when the scaled NLL rose more than the
    raw one; ``None`` when a temperature is not usable (at its bound, not identifiable) or there is no rise.
    """
    usable = all(m.temperature_status == "ok" and math.isfinite(m.nll_crossfit) for m in (final, at_min))
    if not usable or rise is None or rise <= 0:
        return None
    return 1.0 - (final.nll_crossfit - at_min.nll_crossfit) / rise
