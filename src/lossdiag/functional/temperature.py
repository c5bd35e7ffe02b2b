"""Temperature scaling: the temperature that minimises a set's NLL (a batched, bracketed Newton solve), and
the NLL and ECE of the scaled probabilities.

A temperature ``T`` divides the logits before the softmax; it changes confidences but never the predicted class
(so accuracy is untouched). ``T > 1`` softens an over-confident model.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from lossdiag.functional.ece import binned_calibration_errors
from lossdiag.functional.softmax import class_log_softmax

# the fitted temperature is clipped to this range: a model no better than uniform guessing drives T to infinity
T_MIN, T_MAX = 0.01, 100.0
# Newton steps before the fit looks at the bounds (an interior optimum takes fewer: the look is then skipped)
BOUND_CHECK_AFTER = 12
# the float32 steps that start each fit (see fit_temperatures): at most this many, to this relative tolerance
ROUGH_STEPS, ROUGH_TOL = 12, 1e-5


def _nll_derivatives(
    z: torch.Tensor, z_true: torch.Tensor, beta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """First and second derivative in ``beta`` of the mean NLL of ``softmax(beta * z)``: ``E_p[z] - z_true`` and
    ``Var_p[z]`` averaged over the samples. ``z`` (rows, C, N) holds each sample's logits less their largest
    (so ``exp`` never overflows and the largest term is 1), ``z_true`` (rows, N) the true class's."""
    e = torch.exp(beta[:, None, None] * z)
    total = e.sum(1)
    ez = e.mul_(z)
    mean_z = ez.sum(1).div_(total)
    mean_z2 = ez.mul_(z).sum(1).div_(total)
    return (mean_z - z_true).mean(1), (mean_z2 - mean_z * mean_z).mean(1)


def _newton_step(
    z: torch.Tensor,
    z_true: torch.Tensor,
    beta: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    active: torch.Tensor,
    tol: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One bracketed Newton step of the ``active`` rows in ``log(beta)`` (a scale: from ``T = 1`` it takes about half
    the steps of Newton in ``beta``, which overshoots and then creeps up), inside the closed bracket ``[lo, hi]``,
    else bisection in ``log(beta)`` (closed: a converged step lands on the bracket's end). Returns
    ``beta, lo, hi, active``."""
    grad, hess = _nll_derivatives(z, z_true, beta)
    hi = torch.where(active & (grad > 0), beta, hi)
    lo = torch.where(active & (grad <= 0), beta, lo)
    # d/du and d2/du2 of the NLL at u = log(beta) are beta * grad and beta * (grad + beta * hess)
    curvature = grad + beta * hess
    step = torch.where(curvature > 0, beta * torch.exp(-grad / curvature), torch.full_like(beta, math.nan))
    new = torch.where((lo <= step) & (step <= hi), step, torch.sqrt(lo * hi))
    done = (new - beta).abs() <= tol * beta
    return torch.where(active, new, beta), lo, hi, active & ~done


def _bracketed_newton(
    z: torch.Tensor, z_true: torch.Tensor, beta: torch.Tensor, active: torch.Tensor, tol: float, max_iter: int
) -> torch.Tensor:
    """``beta`` after up to ``max_iter`` :func:`_newton_step` s in ``z``'s dtype, bracket ``[1/T_MAX, 1/T_MIN]``."""
    lo = torch.full_like(beta, 1.0 / T_MAX)
    hi = torch.full_like(beta, 1.0 / T_MIN)
    active = active.clone()
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        beta, lo, hi, active = _newton_step(z, z_true, beta, lo, hi, active, tol)
    return beta


class ClassMajor(NamedTuple):
    """Logits prepared once for the temperature fits and the scaled scores of a block (rows = leading index).

    ``z`` (rows, C, N): each sample's logits less their largest (with T > 0 the softmax needs no other shift,
    and the NLL's derivatives, differences of logits, are the same), classes on the middle axis with the
    samples contiguous (reductions over a short last axis are ~5x slower); ``z_true`` (rows, N) the true
    class's entry of ``z``; ``finite`` (rows, N) whether a sample's logits are all finite; ``pred`` (rows, N) the
    predicted class (taken before the transpose: an argmax over the middle axis is ~8x slower).
    """

    z: torch.Tensor
    z_true: torch.Tensor
    finite: torch.Tensor
    pred: torch.Tensor

    @classmethod
    def of(cls, logits: torch.Tensor, target: torch.Tensor) -> ClassMajor:
        z = logits.detach().double().cpu()
        n = z.shape[-2]
        z = z.reshape(-1, n, z.shape[-1])
        finite = torch.isfinite(z).all(-1)
        z = z - z.amax(-1, keepdim=True)
        y = target.detach().cpu().long().reshape(-1, n).expand(len(z), n)
        return cls(z.transpose(1, 2).contiguous(), z.gather(2, y[..., None])[..., 0], finite, z.argmax(-1))

    def rows(self, which: torch.Tensor) -> ClassMajor:
        """Only the rows where ``which`` (bool) is true."""
        return ClassMajor(*(field[which] for field in self))

    def samples(self, index: torch.Tensor) -> ClassMajor:
        """The same rows, only the samples at ``index``."""
        return ClassMajor(
            self.z[:, :, index].contiguous(),
            self.z_true[:, index],
            self.finite[:, index],
            self.pred[:, index],
        )


def fit_temperatures(
    logits: torch.Tensor,
    target: torch.Tensor,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> torch.Tensor:
    """The temperature minimising the NLL of ``softmax(logits / T)`` for every leading index of ``logits``
    (..., N, C) (``target``: (..., N) or (N,)), clipped to ``[T_MIN, T_MAX]``; float64, shape ``logits.shape[:-2]``.

    The NLL is convex in ``beta = 1 / T`` with closed-form derivatives (``E_p[z] - z_true`` and
    ``Var_p[z]``), so a bracketed Newton solve (in ``log(beta)``; bisection when a step leaves the bracket) finds
    the optimum in a few vectorised steps, without autograd. All problems step together; each stops moving once
    it has converged, so its result does not depend on the others. ``T_MAX`` means the probabilities are no
    better than uniform; a row with NaN/inf logits has no temperature (NaN).
    """
    lead, n = logits.shape[:-2], logits.shape[-2]
    if math.prod(lead) == 0 or n == 0:
        return torch.full(lead, math.nan, dtype=torch.float64)
    return fit_prepared(ClassMajor.of(logits, target), max_iter=max_iter, tol=tol).reshape(lead)


def fit_prepared(
    prepared: ClassMajor, start: float | torch.Tensor = 1.0, max_iter: int = 100, tol: float = 1e-6
) -> torch.Tensor:
    """:func:`fit_temperatures` of prepared logits, (rows,); ``start`` (a temperature near the optimum, e.g. the
    whole set's for a half) only changes how many steps it takes."""
    z, z_true = prepared.z, prepared.z_true
    rows = len(z)
    finite = prepared.finite.all(-1)
    lo = torch.full((rows,), 1.0 / T_MAX, dtype=torch.float64)
    hi = torch.full((rows,), 1.0 / T_MIN, dtype=torch.float64)
    bounds = lo.clone(), hi.clone()
    softest = sharpest = torch.zeros(rows, dtype=torch.bool)

    def beyond_bounds(which: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of ``which`` whose NLL still rises at the softest T (optimum above ``T_MAX``), and those where
        it still falls at the sharpest (optimum below ``T_MIN``: every prediction right)."""
        soft = which & (_nll_derivatives(z, z_true, bounds[0])[0] >= 0)
        return soft, which & ~soft & (_nll_derivatives(z, z_true, bounds[1])[0] <= 0)

    start_t = torch.as_tensor(start, dtype=torch.float64).reshape(-1).expand(rows)
    beta = torch.where(start_t > 0, (1.0 / start_t).clamp(lo, hi), torch.ones_like(lo))
    # float32 steps (half the cost of float64 ones) get near the optimum; the float64 steps below then take
    # one or two to settle to ``tol``, so the result is the float64 optimum whatever the float32 path did
    rough = _bracketed_newton(z.float(), z_true.float(), beta.float(), finite, ROUGH_TOL, ROUGH_STEPS)
    beta = torch.where(torch.isfinite(rough), rough.double(), beta).clamp(lo, hi)
    active = finite.clone()
    for iteration in range(max_iter):
        if iteration == BOUND_CHECK_AFTER and bool(active.any()):
            # still moving: the optimum may lie beyond a bound, where the bracket only shrinks towards it
            softest, sharpest = beyond_bounds(active)
            active &= ~(softest | sharpest)
        if not bool(active.any()):
            break
        beta, lo, hi, active = _newton_step(z, z_true, beta, lo, hi, active, tol)
    # settled within tol of a bound without the look above: the bound itself when the optimum lies beyond it
    near = (
        finite & ~(softest | sharpest) & ((beta <= bounds[0] * (1 + tol)) | (beta >= bounds[1] * (1 - tol)))
    )
    if bool(near.any()):
        soft, sharp = beyond_bounds(near)
        softest, sharpest = softest | soft, sharpest | sharp
    t = (1.0 / beta).clamp(T_MIN, T_MAX)
    t = torch.where(softest, T_MAX, torch.where(sharpest, T_MIN, t))
    return torch.where(finite, t, math.nan)


def fit_temperature(
    logits: torch.Tensor, target: torch.Tensor, max_iter: int = 100, tol: float = 1e-6
) -> float:
    """The temperature minimising the NLL of ``softmax(logits / T)`` of one (N, C) set: :func:`fit_temperatures`."""
    return float(fit_temperatures(logits, target, max_iter, tol))


def nll(logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``softmax(logits / temperature)`` of one (N, C) set, in float64."""
    z = logits.detach().double().cpu() / temperature
    return float(-class_log_softmax(z).gather(-1, target.detach().cpu().long()[:, None]).mean())


def temperature_status(temperature: float, n_correct: int, n: int) -> str:
    """``"not_identifiable"`` when all ``n`` predictions are right or all wrong, ``"at_bound"`` when the
    fitted ``temperature`` is ``T_MIN`` or ``T_MAX``, else ``"ok"``.

    With no errors, sharpening the probabilities (T -> 0) lowers the NLL for free; with no correct
    prediction, flattening them (T -> inf) does: either way the fitted value says nothing about calibration.
    """
    if n_correct in (0, n):
        return "not_identifiable"
    if temperature <= T_MIN or temperature >= T_MAX:
        return "at_bound"
    return "ok"


def scaled_scores(
    prepared: ClassMajor, correct: torch.Tensor, temperature: torch.Tensor, n_bins: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """NLL (float64) and ECE of ``softmax(logits / temperature)`` per row; ``correct`` (rows, N) whether the
    prediction is right (a temperature never changes it); ``temperature`` (rows, 1) or (rows, N). Only the
    log-sum-exp is computed: NLL = lse - z_true and, the largest shifted logit being 0, confidence = exp(-lse)."""
    lse = torch.exp(prepared.z / temperature[:, None, :]).sum(1).log_()
    nll_ = (lse - prepared.z_true / temperature).mean(-1)
    return nll_, binned_calibration_errors(torch.exp(-lse), correct, n_bins).double()
