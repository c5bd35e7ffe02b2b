"""Per-sample outputs of one model on one split (loss, p(true), prediction, confidence, calibration)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from lossdiag.functional.calibration import calibration_summaries
from lossdiag.functional.losses import per_sample_cross_entropy
from lossdiag.functional.softmax import class_softmax

# Evaluation's per-sample arrays, in its field order (samples.npz keys and journals use them)
EVALUATION_FIELDS = ("loss", "p_true", "pred", "conf")


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
            self.loss[i],
            self.p_true[i],
            self.pred[i],
            self.conf[i],
            {k: v[i] for k, v in self.calibration.items()},
        )


def evaluate_epochs(
    logits: torch.Tensor,
    target: torch.Tensor,
    calibrate: bool = True,
    crossfit: torch.Tensor | None = None,
) -> Evaluation:
    """Per-sample loss, p(true), prediction and confidence (and calibration if asked) for every leading index
    of ``logits`` (E, N, C), e.g. a block of epochs of one split (``target``: (N,)): an :class:`Evaluation` with
    a leading axis of E. One vectorised pass: evaluating epoch by epoch would cost E times the framework overhead.

    ``loss`` is computed with a log-softmax, so it stays finite where ``p_true`` underflows.
    ``crossfit`` (bool (E,); default: every epoch) says which epochs get the cross-fitted calibration (two more
    temperature fits each; NaN for the others).
    """
    logits = logits.detach().float().cpu()
    target = target.detach().cpu().long()
    index = target.expand(logits.shape[:-1])[..., None]
    probs = class_softmax(logits.double())
    conf, pred = probs.max(-1)
    calibration = (
        {k: v.numpy() for k, v in calibration_summaries(logits, target, conf=conf, crossfit=crossfit).items()}
        if calibrate
        else {}
    )
    return Evaluation(
        loss=per_sample_cross_entropy(logits, target).numpy().astype(np.float32),
        p_true=probs.gather(-1, index)[..., 0].numpy().astype(np.float32),
        pred=pred.numpy().astype(np.int16),
        conf=conf.numpy().astype(np.float32),
        calibration=calibration,
    )


def evaluate_logits(
    logits: torch.Tensor, target: torch.Tensor, calibrate: bool = True, crossfit: bool = True
) -> Evaluation:
    """:func:`evaluate_epochs` of one model's logits (N, C) on one split (``crossfit``: with the cross-fitted
    calibration, whose repeated splits cost most of the time)."""
    return evaluate_epochs(logits[None], target, calibrate, torch.tensor([crossfit]))[0]


def stack(evaluations: list[Evaluation]) -> Evaluation:
    """Stack evaluations of the same split along a new leading axis."""
    keys = evaluations[0].calibration.keys() if evaluations else ()
    return Evaluation(
        *(np.stack([getattr(e, name) for e in evaluations]) for name in EVALUATION_FIELDS),
        calibration={k: np.asarray([e.calibration[k] for e in evaluations], dtype=np.float64) for k in keys},
    )
