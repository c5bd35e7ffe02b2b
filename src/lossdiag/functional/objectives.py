"""Per-sample training objectives that are alternatives to plain and capped cross-entropy.

Every objective maps ``(logits (N, C), target (N,), param)`` to per-sample losses ``(N,)``; the caller takes the
mean. All are computed from ``log_softmax`` in float32 at least, so they stay finite at confidently-wrong samples
(logits like +-50), and a config picks one by name through :data:`OBJECTIVES` (``loss.name=focal loss.gamma=3``).

What each does to the gradient w.r.t. the logits at a confidently-wrong sample (``p_t -> 0``), which is the
question behind "validation loss rises while accuracy holds":

* cross-entropy, label smoothing, focal: ``softmax - one_hot`` (label smoothing: minus the smoothed target), norm
  ~1; focal's factor ``(1 - p_t)**gamma`` is ~1 there, so it keeps cross-entropy's full gradient.
* PHuber-CE: ``tau * p_t * (softmax - one_hot)``, nonzero and finite but linear in ``p_t``.
* GCE: ``p_t**q * (softmax - one_hot)``, nonzero and finite but shrinking like ``p_t**q``.
* capped cross-entropy ``min(ce, cap)`` (``lossdiag.functional.losses``): exactly zero once capped.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F


def _log_p_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``log p_t`` per sample, in float32 at least (float64 logits stay float64)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return logits.log_softmax(dim=1).gather(1, target.long().unsqueeze(1)).squeeze(1)


def label_smoothing_ce(logits: torch.Tensor, target: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Cross-entropy against ``(1 - epsilon) * one_hot + epsilon / C`` (Szegedy et al. 2016, "Rethinking the
    Inception Architecture", section 7); ``epsilon=0`` is cross-entropy."""
    _require("label_smoothing", epsilon)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits, target.long(), label_smoothing=float(epsilon), reduction="none")


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """``-(1 - p_t)**gamma * log p_t`` (Lin et al. 2017, "Focal Loss for Dense Object Detection"; Mukhoti et al.
    2020, "Calibrating Deep Neural Networks using Focal Loss"); ``gamma=0`` is cross-entropy.

    ``1 - p_t`` is ``-expm1(log p_t)`` (exact near ``p_t = 1``) and floored at the smallest normal float, so
    ``gamma < 1`` has no infinite ``pow`` gradient at a perfectly classified sample (whose true gradient is 0).
    """
    _require("focal", gamma)
    log_pt = _log_p_target(logits, target)
    one_minus_pt = (-torch.expm1(log_pt)).clamp_min(torch.finfo(log_pt.dtype).tiny)
    return -one_minus_pt.pow(gamma) * log_pt


def phuber_ce(logits: torch.Tensor, target: torch.Tensor, tau: float) -> torch.Tensor:
    """Partially Huberised cross-entropy (Menon et al. 2020, "Can gradient clipping mitigate label noise?",
    ICLR 2020): ``-tau * p_t + log(tau) + 1`` if ``p_t <= 1/tau``, else ``-log p_t``.

    The linear branch is the tangent of ``-log p`` at ``p = 1/tau``, so the loss is bounded by ``log(tau) + 1``
    and continuous with a continuous derivative. ``p_t = exp(log p_t)`` keeps its logit gradient
    ``tau * p_t * (softmax - one_hot)`` nonzero and finite far below ``1/tau``.
    """
    _require("phuber", tau)
    log_pt = _log_p_target(logits, target)
    linear = -tau * log_pt.exp() + (math.log(tau) + 1.0)
    return torch.where(log_pt <= -math.log(tau), linear, -log_pt)


def gce_loss(logits: torch.Tensor, target: torch.Tensor, q: float) -> torch.Tensor:
    """Generalized cross-entropy ``(1 - p_t**q) / q`` (Zhang & Sabuncu 2018, "Generalized Cross Entropy Loss for
    Training Deep Neural Networks with Noisy Labels"): cross-entropy as ``q -> 0``, MAE-like ``1 - p_t`` at
    ``q = 1``. ``p_t**q`` is ``exp(q * log p_t)``, whose backward keeps the tiny ``p_t**q`` of a confidently-wrong
    sample (``-expm1``'s backward computes it as ``result + 1`` and rounds it to 0 in float32).
    """
    _require("gce", q)
    log_pt = _log_p_target(logits, target)
    return (1.0 - torch.exp(q * log_pt)) / q


class Objective(NamedTuple):
    """A registry entry: the per-sample loss, its one parameter (the config key ``loss.<param>``), the parameter's
    default, which values are valid, and those valid values in words (for the one-line error)."""

    fn: Callable[..., torch.Tensor]
    param: str
    default: float
    valid: Callable[[float], bool]
    valid_words: str


OBJECTIVES: dict[str, Objective] = {
    # Szegedy et al. 2016
    "label_smoothing": Objective(label_smoothing_ce, "epsilon", 0.1, lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    # Lin et al. 2017 (Mukhoti et al. 2020 also try 3)
    "focal": Objective(focal_loss, "gamma", 2.0, lambda v: v >= 0.0, ">= 0"),
    # Menon et al. 2020
    "phuber": Objective(phuber_ce, "tau", 10.0, lambda v: v > 1.0, "> 1"),
    # Zhang & Sabuncu 2018
    "gce": Objective(gce_loss, "q", 0.7, lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
}


def objective_parameter_check(name: str, value: object) -> str | None:
    """A one-line error message if ``value`` is not a valid parameter of objective ``name``, else ``None``."""
    if name not in OBJECTIVES:
        return f"unknown objective {name!r}: choose one of {', '.join(OBJECTIVES)}"
    param, in_range, description = OBJECTIVES[name].param, OBJECTIVES[name].valid, OBJECTIVES[name].valid_words
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"loss.{param} for {name} must be a number {description}, got {value!r}"
    if not math.isfinite(value) or not in_range(float(value)):
        return f"loss.{param} for {name} must be {description}, got {value!r}"
    return None


def _require(name: str, value: object) -> None:
    """Raise ``ValueError`` with :func:`objective_parameter_check`'s message for a bad parameter."""
    message = objective_parameter_check(name, value)
    if message is not None:
        raise ValueError(message)
