"""Standard and bounded cross-entropy, and the training objective chosen by name.

Bounded cross-entropy caps every per-sample cross-entropy at ``cap``; the cap is
``mean + k * std`` of the *untrained* model's per-sample losses on the training set
(the fix proposed for the forum problem). A capped sample's loss is the
constant ``cap``, so its gradient is exactly zero: once the model is more wrong on a
sample than an untrained model would plausibly be, that sample stops pulling on the
weights (and stops dominating the reported mean).

The other objectives (label smoothing, focal, PHuber-CE, GCE) live in :mod:`lossdiag.functional.objectives`;
:func:`training_loss` picks any of them by the config's ``loss.name``.
"""

from __future__ import annotations

import torch

from lossdiag.functional.objectives import OBJECTIVES
from lossdiag.functional.softmax import class_log_softmax

# objectives of the per-sample cross-entropy alone (see :func:`objective`)
CE_LOSS_NAMES: tuple[str, ...] = ("standard", "bounded")
# every name ``loss.name`` accepts
LOSS_NAMES: tuple[str, ...] = (*CE_LOSS_NAMES, *OBJECTIVES)


def per_sample_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every sample (no reduction), computed in float32 at least: logits (..., N, C) and
    target (N,) give (..., N) (e.g. a block of epochs at once)."""
    index = target.to(device=logits.device, dtype=torch.long).expand(logits.shape[:-1])[..., None]
    return -class_log_softmax(logits.float()).gather(-1, index)[..., 0]


def bound_losses(per_sample: torch.Tensor, cap: torch.Tensor | float) -> torch.Tensor:
    """Cap per-sample losses at ``cap``; the gradient of a capped sample is zero (``minimum`` is flat there)."""
    cap_t = torch.as_tensor(cap, dtype=per_sample.dtype, device=per_sample.device)
    return torch.minimum(per_sample, cap_t)


def loss_cap_from_initial(per_sample: torch.Tensor, k: float) -> float:
    """``mean + k * std`` (population std, as numpy computes it) of the untrained model's per-sample losses."""
    if per_sample.numel() == 0:
        raise ValueError("cannot compute the bounded-loss cap from an empty training set")
    values = per_sample.detach().double()
    return float(values.mean() + k * values.std(correction=0))


def objective(per_sample: torch.Tensor, name: str, cap: torch.Tensor | float) -> torch.Tensor:
    """The mean loss that is optimised: plain cross-entropy (``standard``) or capped (``bounded``)."""
    if name == "standard":
        return per_sample.mean()
    if name == "bounded":
        return bound_losses(per_sample, cap).mean()
    raise ValueError(f"unknown loss {name!r}: choose one of {', '.join(CE_LOSS_NAMES)}")


def training_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    name: str,
    cap: torch.Tensor | float,
    param: float | None = None,
) -> torch.Tensor:
    """The mean loss that is optimised for objective ``name``: ``standard``/``bounded`` as :func:`objective`,
    or one of :data:`~lossdiag.functional.objectives.OBJECTIVES` with its parameter ``param`` (``None``: its
    default). ``cap`` only matters for ``bounded``."""
    if name in CE_LOSS_NAMES:
        return objective(per_sample_cross_entropy(logits, target), name, cap)
    if name in OBJECTIVES:
        entry = OBJECTIVES[name]
        return entry.fn(logits, target, entry.default if param is None else param).mean()
    raise ValueError(f"unknown loss {name!r}: choose one of {', '.join(LOSS_NAMES)}")
