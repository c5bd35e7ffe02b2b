"""The verdict's numbers: what kind of run this is and where its val loss comes from, from per-sample records.

Pure (numpy/torch): the inputs are the per-epoch (or per-model) :class:`~lossdiag.functional.outputs.Evaluation`
of the val split, so every number can be re-derived from ``samples.npz``. ``verdict`` is the kind of run
decided by :func:`lossdiag.functional.run_kinds.classify_run` (``phenomenon``, ``overfitting``, ``no_rise``,
``inconclusive``, ``not_learning``, ``partial_collapse``), or ``single_evaluation`` for one model with no
history (``src.evaluate``) that is neither ``not_learning`` nor ``partial_collapse``.
:mod:`lossdiag.render.diagnosis` puts them into words; ``diagnosis.json`` is :meth:`VerdictNumbers.to_dict`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

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
from lossdiag.functional.run_kinds import (
    LEVEL,
    MAJORITY_MARGIN,
    N_RESAMPLES,
    RISE_THRESHOLD,
    SEED,
    classify_run,
)

FORMAT_VERSION = 1  # of diagnosis.json
EXTREME_RATIO = 10.0  # a sample whose loss is this many times the mean is called an extreme outlier
FEW_SHARE = 0.05  # "a few samples": at most this share of them
LARGE_ZERO_GRADIENT_SHARE = 0.05  # bounded loss: this share of training samples above the cap is called large
ADVICE_NOT_LEARNING_ONE_MODEL = (
    "If this is not the data the model was trained on, check that its class folders are the run's classes "
    "(same names, same labels) and that the images look like the training images."
)


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
class VerdictNumbers:
    """Everything ``diagnosis.md`` states, as numbers (``diagnosis.json``; every key in docs/diagnosis.md).

    Fields about a rise (``rise*``, ``acc_change*``, ``samples_to_settle``, ``scaling_removes``) and
    ``at_min`` are ``None`` for a single evaluation (no history; ``min_epoch`` = ``last_epoch`` = the
    model's epoch) and where they do not apply.
    """

    format_version: int
    verdict: str
    reason: str
    advice: str
    history: bool
    evaluated_on: str
    n_samples: int
    n_epochs: int
    min_epoch: int
    last_epoch: int
    min_loss: float
    last_loss: float
    rise: float | None
    rise_rel: float | None
    rise_ci: tuple[float, float] | None
    significant_rise: bool
    acc_at_min: float
    acc_last: float
    acc_change: float | None
    acc_change_ci: tuple[float, float] | None
    acc_best: float
    acc_best_epoch: int
    acc_best_lower: float
    acc_last_lower: float
    majority_rate: float
    initial_loss: float | None
    unlearned_classes: tuple[str, ...]
    collapsed_classes: tuple[str, ...]
    samples_to_settle: int | None
    rise_threshold: float
    majority_margin: float
    confidence_level: float
    n_resamples: int
    bootstrap_seed: int
    objective: str | None
    loss_cap: float
    n_train: int | None
    n_train_above_cap: int | None
    scaling_removes: float | None
    final: ModelNumbers
    at_min: ModelNumbers | None  # None for a single evaluation
    rise_from_worst5: float | None
    rise_from_wrong: float | None
    rise_from_rest: float | None
    extreme: tuple[ExtremeSample, ...]

    @property
    def phenomenon(self) -> bool:
        return self.verdict == "phenomenon"

    @property
    def shows_min(self) -> bool:
        """Whether the minimum-loss epoch is another state than the final one (worth its own column)."""
        return self.history and self.min_epoch != self.last_epoch

    def to_dict(self) -> dict:
        """JSON-ready: tuples become lists, non-finite floats become ``None``."""
        return json_ready(asdict(self))


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


def verdict_numbers(
    evals: Sequence[Evaluation],
    epochs: Sequence[int],
    target: np.ndarray,
    classes: Sequence[str],
    index: np.ndarray,
    paths: np.ndarray,
    loss_cap: float,
    n_extreme: int = 3,
    initial_loss: float | None = None,
    train_loss: np.ndarray | None = None,
    objective: str | None = None,
    evaluated_on: str = "val split",
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> VerdictNumbers:
    """The verdict for val outputs ``evals`` (one per epoch, or one model) of samples ``index``.

    ``initial_loss`` is the untrained model's mean val loss (rule 1b of the run kinds), ``train_loss``
    the final model's per-sample training losses (how many sit above the bounded loss's cap), and
    ``objective`` the loss the model was trained with (``standard``, ``bounded``; ``None``: unknown).
    """
    if not evals:
        raise ValueError("no validation outputs recorded: nothing to diagnose")
    target = np.asarray(target)
    history = len(evals) > 1
    losses = np.stack([e.loss for e in evals]).astype(np.float64)
    run = classify_run(
        losses,
        np.stack([e.pred for e in evals]),
        target,
        len(classes),
        list(classes),
        list(epochs),
        initial_loss=initial_loss,
        n_resamples=n_resamples,
        seed=seed,
    )
    verdict, reason, advice = run.kind, run.reason, run.advice
    if not history and run.kind == "no_rise":
        verdict, reason = "single_evaluation", "one model, no history, so there is no rise to judge"
    if not history and run.kind == "not_learning":
        advice = ADVICE_NOT_LEARNING_ONE_MODEL
    i_min = [int(e) for e in epochs].index(run.min_epoch)
    last, at_min = evals[-1], evals[i_min]
    final = model_numbers(last, target, loss_cap)
    # frozen: sharing is safe
    m = final if i_min == len(evals) - 1 else model_numbers(at_min, target, loss_cap)
    significant = history and run.rise_rel > RISE_THRESHOLD and run.rise_ci[0] > 0
    # which samples the rise comes from: per-sample change between the min-loss epoch and the end
    delta = (last.loss.astype(np.float64) - at_min.loss.astype(np.float64)) / len(target)
    order = worst_indices(last.loss, max(final.top5_n, n_extreme))  # one sort for both lists below
    worst5 = order[: final.top5_n]
    from_worst5 = float(delta[worst5].sum())
    wrong = ~last.correct(target)
    extreme = tuple(
        ExtremeSample(
            index=int(index[i]),
            path=str(paths[i]),
            true=classes[int(target[i])],
            pred=classes[int(last.pred[i])],
            p_true=float(last.p_true[i]),
            conf=float(last.conf[i]),
            loss=float(last.loss[i]),
            loss_at_min=float(at_min.loss[i]),
        )
        for i in order[:n_extreme]
    )
    rise = run.last_loss - run.min_loss
    cap_ok = math.isfinite(loss_cap)
    removes = _scaling_removes(final, m, rise) if significant else None
    if verdict == "phenomenon" and removes is not None and removes < 0.5:
        advice = (
            f"Accuracy held, but temperature scaling removes only {max(removes, 0.0):.0%} of the rise: the class "
            "ranking got worse on some samples. Look at them (worst.csv) and consider the checkpoint of "
            f"epoch {run.min_epoch}."
        )
    return VerdictNumbers(
        format_version=FORMAT_VERSION,
        verdict=verdict,
        reason=reason,
        advice=advice,
        history=history,
        evaluated_on=evaluated_on,
        n_samples=run.n_samples,
        n_epochs=run.n_epochs,
        min_epoch=run.min_epoch,
        last_epoch=run.last_epoch,
        min_loss=run.min_loss,
        last_loss=run.last_loss,
        rise=rise if history else None,
        rise_rel=run.rise_rel if history else None,
        rise_ci=run.rise_ci if history else None,
        significant_rise=significant,
        acc_at_min=run.acc_at_min,
        acc_last=run.acc_last,
        acc_change=run.acc_change if history else None,
        acc_change_ci=run.acc_change_ci if history else None,
        acc_best=run.acc_best,
        acc_best_epoch=run.acc_best_epoch,
        acc_best_lower=run.acc_best_lower,
        acc_last_lower=run.acc_last_lower,
        majority_rate=run.majority_rate,
        initial_loss=run.initial_loss,
        unlearned_classes=run.unlearned_classes,
        collapsed_classes=run.collapsed_classes,
        samples_to_settle=run.samples_to_settle,
        rise_threshold=RISE_THRESHOLD,
        majority_margin=MAJORITY_MARGIN,
        confidence_level=LEVEL,
        n_resamples=run.n_resamples,
        bootstrap_seed=run.seed,
        objective=objective,
        loss_cap=float(loss_cap),
        n_train=None if train_loss is None else len(train_loss),
        n_train_above_cap=(
            int(count_above_cap(torch.as_tensor(np.asarray(train_loss, dtype=np.float64)), loss_cap))
            if train_loss is not None and cap_ok
            else None
        ),
        scaling_removes=removes,
        final=final,
        at_min=m if history else None,
        rise_from_worst5=from_worst5 if history else None,
        rise_from_wrong=float(delta[wrong].sum()) if history else None,
        rise_from_rest=float(delta.sum()) - from_worst5 if history else None,
        extreme=extreme,
    )


def _scaling_removes(final: ModelNumbers, at_min: ModelNumbers, rise: float) -> float | None:
    """Share of the raw rise that cross-fitted temperature scaling removes: ``1 - scaled rise / raw rise``.

    Above 1 when the scaled NLL fell while the raw one rose, below 0 when the scaled NLL rose more than the
    raw one; ``None`` when a temperature is not usable (at its bound, not identifiable) or there is no rise.
    """
    usable = all(m.temperature_status == "ok" and math.isfinite(m.nll_crossfit) for m in (final, at_min))
    if not usable or rise <= 0:
        return None
    return 1.0 - (final.nll_crossfit - at_min.nll_crossfit) / rise
