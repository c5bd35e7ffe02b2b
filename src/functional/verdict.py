"""The verdict's numbers: why did val loss rise, computed from per-sample records.

Pure (numpy/torch): the inputs are the per-epoch (or per-model) :class:`~src.functional.outputs.Evaluation`
of the val split, so every number can be re-derived from ``samples.npz``. The kind of run is written as
``verdict``: ``phenomenon`` (val loss rose after its minimum while accuracy held), ``overfitting`` (it rose
and accuracy fell), ``no_rise`` (nothing to explain), or ``single_evaluation`` (one model, no history:
``src.evaluate``). :mod:`src.render.diagnosis` puts them into words.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from src.functional.breakdown import (
    correct_wrong_breakdown,
    count_above_cap,
    top_count,
    top_share,
    worst_indices,
)
from src.functional.losses import bound_losses
from src.functional.outputs import Evaluation

RISE_TOLERANCE = 0.05  # relative rise of val loss above its minimum that counts as "rose"
ACC_TOLERANCE = 0.02  # absolute drop of val accuracy that still counts as "held"
EXTREME_RATIO = 10.0  # a sample whose loss is this many times the mean is called an extreme outlier
VERDICTS = ("phenomenon", "overfitting", "no_rise", "single_evaluation")


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
    temperature: float
    nll_temperature_scaled: float
    ece_temperature_scaled: float


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
    """Everything ``diagnosis.md`` states, as numbers (``diagnosis.json``)."""

    verdict: str
    epochs: int
    min_epoch: int
    min_loss: float
    last_epoch: int
    last_loss: float
    rise: float
    rise_rel: float
    acc_at_min: float
    acc_last: float
    acc_best: float
    acc_best_epoch: int
    loss_cap: float
    history: bool
    rose: bool
    acc_held: bool
    final: ModelNumbers
    at_min: ModelNumbers
    rise_from_worst5: float
    rise_from_wrong: float
    rise_from_rest: float
    extreme: tuple[ExtremeSample, ...]

    @property
    def phenomenon(self) -> bool:
        return self.verdict == "phenomenon"

    def to_dict(self) -> dict:
        """JSON-ready: non-finite floats become ``None``."""
        return _json_ready(asdict(self))


def _json_ready(value):
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def model_numbers(ev: Evaluation, target: np.ndarray, cap: float) -> ModelNumbers:
    """Where one evaluation's mean loss comes from (shares of the worst samples, wrong samples)."""
    correct = ev.correct(target)
    parts = correct_wrong_breakdown(ev, target)
    loss = torch.from_numpy(ev.loss.astype(np.float64))
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
        **{k: float(ev.calibration.get(k, math.nan)) for k in
           ("ece", "temperature", "nll_temperature_scaled", "ece_temperature_scaled")},
    )


def verdict_numbers(
    evals: Sequence[Evaluation],
    epochs: Sequence[int],
    target: np.ndarray,
    classes: Sequence[str],
    index: np.ndarray,
    paths: np.ndarray,
    loss_cap: float,
    n_extreme: int = 3,
) -> VerdictNumbers:
    """The verdict for val outputs ``evals`` (one per epoch, or one model) of samples ``index``."""
    if not evals:
        raise ValueError("no validation outputs recorded: nothing to diagnose")
    losses = [float(e.loss.astype(np.float64).mean()) for e in evals]
    accs = [float(e.correct(target).mean()) for e in evals]
    i_min = int(np.argmin(losses))
    last, at_min = evals[-1], evals[i_min]
    history = len(evals) > 1
    rise_rel = (losses[-1] - losses[i_min]) / losses[i_min] if losses[i_min] > 0 else 0.0
    rose = history and rise_rel > RISE_TOLERANCE
    acc_held = accs[-1] >= accs[i_min] - ACC_TOLERANCE
    if not history:
        verdict = "single_evaluation"
    elif rose:
        verdict = "phenomenon" if acc_held else "overfitting"
    else:
        verdict = "no_rise"
    final = model_numbers(last, target, loss_cap)
    # which samples the rise comes from: per-sample change between the min-loss epoch and the end
    delta = (last.loss.astype(np.float64) - at_min.loss.astype(np.float64)) / len(target)
    worst5 = worst_indices(last.loss, final.top5_n)
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
        for i in worst_indices(last.loss, n_extreme)
    )
    return VerdictNumbers(
        verdict=verdict,
        epochs=len(evals),
        min_epoch=int(epochs[i_min]),
        min_loss=losses[i_min],
        last_epoch=int(epochs[-1]),
        last_loss=losses[-1],
        rise=losses[-1] - losses[i_min],
        rise_rel=rise_rel,
        acc_at_min=accs[i_min],
        acc_last=accs[-1],
        acc_best=max(accs),
        acc_best_epoch=int(epochs[int(np.argmax(accs))]),
        loss_cap=float(loss_cap),
        history=history,
        rose=rose,
        acc_held=acc_held,
        final=final,
        at_min=model_numbers(at_min, target, loss_cap),
        rise_from_worst5=float(delta[worst5].sum()),
        rise_from_wrong=float(delta[wrong].sum()),
        rise_from_rest=float(delta.sum() - delta[worst5].sum()),
        extreme=extreme,
    )
