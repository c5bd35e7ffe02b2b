"""Where a mean cross-entropy comes from: per-sample outputs, correct vs wrong, worst-k shares.

Everything here is pure (numpy/torch, no Lightning) and works on one model's outputs on one split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from src.calibration import calibration_summary
from src.diagnostics import top_count, top_share
from src.losses import per_sample_cross_entropy

CALIBRATION_KEYS = ("ece", "temperature", "nll_temperature_scaled", "ece_temperature_scaled")


@dataclass
class Evaluation:
    """Per-sample outputs of one model on one split, in the split's sample order.

    ``loss`` is the cross-entropy computed from the logits (log-softmax, so it stays finite where
    ``p_true`` underflows), ``p_true`` the probability of the true class, ``pred`` the predicted
    class, ``conf`` the probability of the predicted class. ``calibration`` holds the
    :data:`CALIBRATION_KEYS`. Fields may carry a leading epoch/model axis (see :func:`stack`).
    """

    loss: np.ndarray
    p_true: np.ndarray
    pred: np.ndarray
    conf: np.ndarray
    calibration: dict[str, np.ndarray] = field(default_factory=dict)

    def correct(self, target: np.ndarray) -> np.ndarray:
        return self.pred == target

    def __getitem__(self, i: int) -> Evaluation:
        """The ``i``-th entry along the leading (epoch/model) axis."""
        return Evaluation(
            self.loss[i], self.p_true[i], self.pred[i], self.conf[i], {k: v[i] for k, v in self.calibration.items()}
        )


def evaluate_logits(logits: torch.Tensor, target: torch.Tensor, calibrate: bool = True) -> Evaluation:
    """Per-sample loss, p(true), prediction and confidence from ``logits`` (N, C); calibration if asked."""
    logits = logits.detach().float().cpu()
    target = target.detach().cpu()
    probs = logits.double().softmax(1)
    conf, pred = probs.max(1)
    p_true = probs.gather(1, target[:, None])[:, 0]
    calibration = (
        {k: np.asarray(v, dtype=np.float64) for k, v in calibration_summary(logits, target).items()}
        if calibrate
        else {}
    )
    return Evaluation(
        loss=per_sample_cross_entropy(logits, target).numpy().astype(np.float32),
        p_true=p_true.numpy().astype(np.float32),
        pred=pred.numpy().astype(np.int16),
        conf=conf.numpy().astype(np.float32),
        calibration=calibration,
    )


def stack(evaluations: list[Evaluation]) -> Evaluation:
    """Stack evaluations of the same split along a new leading axis."""
    keys = evaluations[0].calibration.keys() if evaluations else ()
    return Evaluation(
        *(np.stack([getattr(e, name) for e in evaluations]) for name in ("loss", "p_true", "pred", "conf")),
        calibration={k: np.asarray([e.calibration[k] for e in evaluations], dtype=np.float64) for k in keys},
    )


def loss_decomposition(loss: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    """Split the mean loss into the parts carried by correct and by wrong predictions.

    ``loss_from_correct + loss_from_wrong`` equals the mean loss (each part is a sum over its samples
    divided by *all* samples); ``share_from_wrong`` is the wrong part's fraction of the total.
    """
    loss = np.asarray(loss, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n = max(len(loss), 1)
    from_wrong = float(loss[~correct].sum() / n)
    from_correct = float(loss[correct].sum() / n)
    total = from_wrong + from_correct
    return {
        "loss_from_correct": from_correct,
        "loss_from_wrong": from_wrong,
        "share_from_wrong": from_wrong / total if total > 0 else 0.0,
        "n_wrong": float((~correct).sum()),
    }


def worst_share(loss: np.ndarray, fraction: float) -> tuple[float, int]:
    """``(share of the total loss, number of samples)`` for the worst ``fraction`` of samples (>= 1 sample)."""
    values = torch.as_tensor(np.asarray(loss, dtype=np.float64))
    return float(top_share(values, fraction)), top_count(values.numel(), fraction)


def recompute_mean_ce(probs: np.ndarray, target: np.ndarray) -> float:
    """The seed's manual check: renormalise the saved probabilities, mean of ``-sum(onehot * log p)``."""
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(axis=-1, keepdims=True)
    onehot = np.eye(probs.shape[1])[np.asarray(target)]
    with np.errstate(divide="ignore"):
        return float(np.mean(np.sum(onehot * -np.log(probs), axis=-1, where=onehot > 0)))


def mean_where(values: np.ndarray, mask: np.ndarray) -> float:
    """Mean of ``values[mask]`` in float64, nan when the mask is empty."""
    picked = np.asarray(values, dtype=np.float64)[mask]
    return float(picked.mean()) if picked.size else float("nan")


def correct_wrong_breakdown(ev: Evaluation, target: np.ndarray) -> dict[str, float]:
    """:func:`loss_decomposition` plus mean confidence on wrong and mean p(true) on correct predictions."""
    correct = ev.correct(target)
    return {
        **loss_decomposition(ev.loss, correct),
        "conf_wrong_mean": mean_where(ev.conf, ~correct),
        "p_true_correct_mean": mean_where(ev.p_true, correct),
    }


def epoch_scalars(logits: torch.Tensor, target: torch.Tensor, ev: Evaluation) -> dict[str, float]:
    """The per-epoch scalars logged under ``val/``: decomposition, confidence, recompute check, calibration."""
    y = target.detach().cpu().numpy()
    parts = correct_wrong_breakdown(ev, y)
    recomputed = recompute_mean_ce(logits.detach().double().cpu().softmax(1).numpy(), y)
    mean_loss = float(np.mean(ev.loss, dtype=np.float64))
    return {
        "loss_from_correct": parts["loss_from_correct"],
        "loss_from_wrong": parts["loss_from_wrong"],
        "loss_share_wrong": parts["share_from_wrong"],
        "n_wrong": parts["n_wrong"],
        "loss_top5pct_share": worst_share(ev.loss, 0.05)[0],
        "conf_wrong_mean": parts["conf_wrong_mean"],
        "p_true_correct_mean": parts["p_true_correct_mean"],
        "loss_recomputed": recomputed,
        "loss_recompute_error": abs(recomputed - mean_loss),
        **{k: float(v) for k, v in ev.calibration.items()},
    }
