"""Calibration of a classifier's probabilities: ECE, temperature scaling, reliability diagram.

A temperature ``T`` divides the logits before the softmax; it changes confidences but never the
predicted class (so accuracy is untouched). ``T > 1`` softens an over-confident model. If the
temperature-scaled NLL stays flat while the raw NLL rises, the rise is over-confidence, not worse
ranking of the classes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from lossdiag.functional.jsonable import json_ready
from lossdiag.functional.softmax import class_log_softmax

N_BINS = 15
# the fitted temperature is clipped to this range: a model no better than uniform guessing drives T to infinity
T_MIN, T_MAX = 0.01, 100.0
# Newton steps before the fit looks at the bounds (an interior optimum takes fewer: the look is then skipped)
BOUND_CHECK_AFTER = 12
# the float32 steps that start each fit (see fit_temperatures): at most this many, to this relative tolerance
ROUGH_STEPS, ROUGH_TOL = 12, 1e-5
CROSSFIT_SEED = 0  # the seeded random halves of the cross-fit
# the verdict's cross-fit is repeated over this many seeded random splits (seeds 0, 1, ...): one split's number
# depends on which half each sample fell in (seen: 87% to 105% "of the rise removed" over 200 splits of one run)
CROSSFIT_SPLITS = 50
# at most this many bytes of logits are gathered at once for the repeated splits
CROSSFIT_CHUNK_BYTES = 64 * 2**20
# calibration_summaries' keys: in-sample (what the per-epoch ``val/`` scalars show), then the cross-fitted NLL/ECE
# the verdict uses (recorded, not logged as scalars): their medians over the splits, and every split's value
LOGGED_CALIBRATION_KEYS = ("ece", "temperature", "nll_temperature_scaled", "ece_temperature_scaled")
CALIBRATION_KEYS = (*LOGGED_CALIBRATION_KEYS, "nll_crossfit", "ece_crossfit")
SPLIT_KEYS = ("nll_crossfit_splits", "ece_crossfit_splits")  # (..., CROSSFIT_SPLITS) each


def expected_calibration_errors(
    probs: torch.Tensor, target: torch.Tensor, n_bins: int = N_BINS
) -> torch.Tensor:
    """ECE (L1, ``n_bins`` equal-width confidence bins) of class probabilities ``probs`` (..., N, C): one per
    leading index (e.g. one per epoch), float32.

    torchmetrics' ``multiclass_calibration_error(norm="l1")`` on probabilities (its ``torch.bucketize`` binning, a
    confidence of exactly 1 in a bin of its own; torchmetrics would re-softmax inputs outside [0, 1], this does
    not), batched over the leading axes: the per-epoch diagnosis evaluates a block of
    epochs at once, and one call per epoch would cost more than the computation. Tested against torchmetrics.
    """
    probs = probs.detach().float().cpu()
    conf, pred = probs.max(-1)
    return binned_calibration_errors(conf, pred == target.detach().cpu(), n_bins)


def binned_calibration_errors(
    conf: torch.Tensor, correct: torch.Tensor, n_bins: int = N_BINS
) -> torch.Tensor:
    """:func:`expected_calibration_errors` from each sample's confidence ``conf`` (..., N) (the largest class
    probability, binned in float32) and whether its prediction is ``correct`` (..., N): one per leading index."""
    conf = conf.detach().float().cpu()
    lead, n = conf.shape[:-1], conf.shape[-1]
    if n == 0:
        return torch.full(lead, math.nan)
    conf = conf.reshape(-1, n)
    acc = correct.detach().cpu().expand(*lead, n).reshape(-1, n).to(conf.dtype)
    boundaries = torch.linspace(0, 1, n_bins + 1, dtype=conf.dtype)
    slots = n_bins + 1
    index = (torch.bucketize(conf, boundaries, right=True) - 1) + slots * torch.arange(len(conf))[:, None]
    index = index.reshape(-1)

    def per_bin(values: torch.Tensor) -> torch.Tensor:
        return (
            torch.zeros(len(conf) * slots, dtype=conf.dtype)
            .scatter_add_(0, index, values.reshape(-1))
            .reshape(-1, slots)
        )

    count = per_bin(torch.ones_like(conf))
    conf_bin = torch.nan_to_num(per_bin(conf) / count)
    acc_bin = torch.nan_to_num(per_bin(acc) / count)
    prop = count / count.sum(-1, keepdim=True)
    return (torch.abs(acc_bin - conf_bin) * prop).sum(-1).reshape(lead)


def expected_calibration_error(probs: torch.Tensor, target: torch.Tensor, n_bins: int = N_BINS) -> float:
    """ECE of one set of class probabilities ``probs`` (N, C): :func:`expected_calibration_errors`."""
    return float(expected_calibration_errors(probs, target, n_bins))


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


class _ClassMajor(NamedTuple):
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
    def of(cls, logits: torch.Tensor, target: torch.Tensor) -> _ClassMajor:
        z = logits.detach().double().cpu()
        n = z.shape[-2]
        z = z.reshape(-1, n, z.shape[-1])
        finite = torch.isfinite(z).all(-1)
        z = z - z.amax(-1, keepdim=True)
        y = target.detach().cpu().long().reshape(-1, n).expand(len(z), n)
        return cls(z.transpose(1, 2).contiguous(), z.gather(2, y[..., None])[..., 0], finite, z.argmax(-1))

    def rows(self, which: torch.Tensor) -> _ClassMajor:
        """Only the rows where ``which`` (bool) is true."""
        return _ClassMajor(*(field[which] for field in self))

    def samples(self, index: torch.Tensor) -> _ClassMajor:
        """The same rows, only the samples at ``index``."""
        return _ClassMajor(
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
    return _fit(_ClassMajor.of(logits, target), max_iter=max_iter, tol=tol).reshape(lead)


def _fit(
    prepared: _ClassMajor, start: float | torch.Tensor = 1.0, max_iter: int = 100, tol: float = 1e-6
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


@dataclass(frozen=True)
class CrossFit:
    """Temperature fitted on all samples, and NLL/ECE of temperature scaling scored out of sample."""

    temperature: float  # fitted on all samples
    temperature_halves: tuple[float, float]  # fitted on each half (each scores the other half)
    nll_raw: float
    ece_raw: float
    nll_scaled: float  # cross-fitted: each sample scored with the temperature fitted on the other half
    ece_scaled: float  # cross-fitted, over all samples at once
    status: str  # see temperature_status
    n_samples: int

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable values: tuples become lists, nan/inf become None."""
        return json_ready(asdict(self))


def _crossfit_halves(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The cross-fit's two seeded random halves of ``n`` sample positions."""
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    return perm[: n // 2], perm[n // 2 :]


def _crossfit_temperatures(
    prepared: _ClassMajor, t: torch.Tensor, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the temperature fitted on the other seeded random half of the samples (per row, starting from
    the whole's ``t``), (rows, N); and each half's temperature, (rows, 2)."""
    halves = _crossfit_halves(prepared.z.shape[-1], seed)
    # each half's optimum is near the whole's: starting there, the Newton solve takes a few steps
    t_halves = torch.stack([_fit(prepared.samples(h), start=t) for h in halves], dim=1)
    per_sample = torch.empty(prepared.z_true.shape, dtype=torch.float64)
    per_sample[:, halves[0]] = t_halves[:, 1, None]  # each half scaled by the other half's temperature
    per_sample[:, halves[1]] = t_halves[:, 0, None]
    return per_sample, t_halves


def _scaled_scores(
    prepared: _ClassMajor, correct: torch.Tensor, temperature: torch.Tensor, n_bins: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """NLL (float64) and ECE of ``softmax(logits / temperature)`` per row; ``correct`` (rows, N) whether the
    prediction is right (a temperature never changes it); ``temperature`` (rows, 1) or (rows, N). Only the
    log-sum-exp is computed: NLL = lse - z_true and, the largest shifted logit being 0, confidence = exp(-lse)."""
    lse = torch.exp(prepared.z / temperature[:, None, :]).sum(1).log_()
    nll_ = (lse - prepared.z_true / temperature).mean(-1)
    return nll_, binned_calibration_errors(torch.exp(-lse), correct, n_bins).double()


def crossfit_temperature(
    logits: torch.Tensor,
    target: torch.Tensor,
    seed: int = CROSSFIT_SEED,
    temperature: float | None = None,
    n_bins: int = N_BINS,
) -> CrossFit:
    """Temperature scaling with honest (cross-fitted) NLL and ECE.

    A temperature fitted and scored on the same samples flatters the scaled NLL/ECE. Here the samples
    are split at random (seeded) into two halves; the temperature fitted on one half scales the other
    half's logits, so no sample is scored with a temperature fitted on itself, and the per-sample
    results of both halves are pooled so the numbers cover all samples. ``temperature`` (fitted on all
    samples) may be passed in when already known. ``status``: :func:`temperature_status`.
    """
    z = logits.detach().double().cpu()
    y = target.detach().long().cpu()
    n = z.shape[0]
    if z.ndim != 2 or y.shape != (n,) or n < 2:
        raise ValueError(
            f"need logits (N >= 2, C) and target (N,), got {tuple(z.shape)} and {tuple(y.shape)}"
        )
    prepared = _ClassMajor.of(z, y)
    correct = prepared.pred == y
    t = float(_fit(prepared)[0]) if temperature is None else float(temperature)
    per_sample, t_halves = _crossfit_temperatures(prepared, torch.tensor([t], dtype=torch.float64), seed)
    nll_raw, ece_raw = _scaled_scores(prepared, correct, torch.ones(1, 1, dtype=torch.float64), n_bins)
    nll_scaled, ece_scaled = _scaled_scores(prepared, correct, per_sample, n_bins)
    return CrossFit(
        temperature=t,
        temperature_halves=(float(t_halves[0, 0]), float(t_halves[0, 1])),
        nll_raw=float(nll_raw[0]),
        ece_raw=float(ece_raw[0]),
        nll_scaled=float(nll_scaled[0]),
        ece_scaled=float(ece_scaled[0]),
        status=temperature_status(t, int(correct.sum()), n),
        n_samples=n,
    )


def calibration_summaries(
    logits: torch.Tensor,
    target: torch.Tensor,
    n_bins: int = N_BINS,
    conf: torch.Tensor | None = None,
    crossfit: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """For every leading index of ``logits`` (B, N, C) (e.g. a block of epochs; ``target``: (N,)), float64 (B,);
    ``conf``: each sample's largest class probability (B, N), when the caller has it already (saves a pass for
    the raw ECE):

    ``ece``, fitted ``temperature``, ``nll_temperature_scaled`` and ``ece_temperature_scaled`` (fitted and
    scored on the same samples: what the per-epoch scalars show), and the same scaling scored out of sample over
    :data:`CROSSFIT_SPLITS` random splits (:func:`crossfit_splits`: what the verdict uses): ``nll_crossfit_splits``
    / ``ece_crossfit_splits`` (B, splits) and their medians ``nll_crossfit`` / ``ece_crossfit``, for the rows where
    ``crossfit`` (bool (B,); default: every row) is true, NaN elsewhere: two temperature fits per split and row,
    which a caller that reads them only for a few rows need not pay for."""
    y = target.detach().long().cpu()
    lead, n = logits.shape[:-2], logits.shape[-2]
    if n == 0:
        empty = {k: torch.full(lead, math.nan, dtype=torch.float64) for k in CALIBRATION_KEYS}
        return {**empty, **{k: torch.full((*lead, CROSSFIT_SPLITS), math.nan, dtype=torch.float64) for k in SPLIT_KEYS}}
    prepared = _ClassMajor.of(logits, y)
    t = _fit(prepared)
    # the largest shifted logit is 0: the prediction is where it is, the raw confidence 1 / sum(exp)
    correct = prepared.pred == y
    raw_conf = torch.exp(prepared.z).sum(1).reciprocal_() if conf is None else conf.detach().reshape(-1, n)
    nll_scaled, ece_scaled = _scaled_scores(prepared, correct, t[:, None], n_bins)
    summary = {
        "ece": binned_calibration_errors(raw_conf, correct, n_bins).double(),
        "temperature": t,
        "nll_temperature_scaled": nll_scaled,
        "ece_temperature_scaled": ece_scaled,
        "nll_crossfit": torch.full_like(t, math.nan),
        "ece_crossfit": torch.full_like(t, math.nan),
        "nll_crossfit_splits": torch.full((len(t), CROSSFIT_SPLITS), math.nan, dtype=torch.float64),
        "ece_crossfit_splits": torch.full((len(t), CROSSFIT_SPLITS), math.nan, dtype=torch.float64),
    }
    rows = (
        torch.ones(len(t), dtype=torch.bool)
        if crossfit is None
        else crossfit.detach().cpu().bool().reshape(-1)
    )
    if n >= 2 and bool(rows.any()):
        nll_cf, ece_cf = crossfit_splits(prepared.rows(rows), t[rows], correct[rows], CROSSFIT_SPLITS, n_bins)
        summary["nll_crossfit_splits"][rows], summary["ece_crossfit_splits"][rows] = nll_cf, ece_cf
        summary["nll_crossfit"][rows] = nll_cf.quantile(0.5, dim=-1)
        summary["ece_crossfit"][rows] = ece_cf.quantile(0.5, dim=-1)
    return {k: v.reshape(*lead, *v.shape[1:]) for k, v in summary.items()}


def _split_permutations(n: int, n_splits: int) -> torch.Tensor:
    """The seeded random orders of ``n`` samples that make the cross-fit's halves (seed ``CROSSFIT_SEED + i``)."""
    return torch.from_numpy(
        np.stack([np.random.default_rng(CROSSFIT_SEED + i).permutation(n) for i in range(n_splits)])
    )


def crossfit_splits(
    prepared: _ClassMajor, t: torch.Tensor, correct: torch.Tensor, n_splits: int, n_bins: int = N_BINS
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cross-fitted NLL and ECE of every row over ``n_splits`` seeded random splits in halves: (rows, splits).

    In each split, the temperature fitted on one half (starting from the whole's ``t``) scales the other half, so
    no sample is scored with a temperature fitted on itself. Splits are fitted together, in chunks of at most
    :data:`CROSSFIT_CHUNK_BYTES` of gathered logits.
    """
    rows, c, n = prepared.z.shape
    perms = _split_permutations(n, n_splits)
    nll = torch.empty(rows, n_splits, dtype=torch.float64)
    ece = torch.empty(rows, n_splits, dtype=torch.float64)
    step = max(1, CROSSFIT_CHUNK_BYTES // max(1, rows * c * n * 8))
    for start in range(0, n_splits, step):
        order = perms[start : start + step]  # (k, n)
        k = len(order)
        halves = (order[:, : n // 2], order[:, n // 2 :])
        parts = [_gathered(prepared, h) for h in halves]  # each (rows * k, ...) of one half
        t_rows = t.repeat_interleave(k)
        fitted = [_fit(part, start=t_rows) for part in parts]
        lse = torch.empty(rows * k, n, dtype=torch.float64)
        nll_sum = torch.zeros(rows * k, dtype=torch.float64)
        for part, index, temperature in ((parts[0], halves[0], fitted[1]), (parts[1], halves[1], fitted[0])):
            half_lse = torch.exp(part.z / temperature[:, None, None]).sum(1).log_()
            nll_sum += (half_lse - part.z_true / temperature[:, None]).sum(-1)
            lse.view(rows, k, n).scatter_(2, index.expand(rows, k, -1), half_lse.view(rows, k, -1))
        nll[:, start : start + k] = (nll_sum / n).view(rows, k)
        right = correct.repeat_interleave(k, dim=0)
        ece[:, start : start + k] = binned_calibration_errors(torch.exp(-lse), right, n_bins).double().view(rows, k)
    return nll, ece


def _gathered(prepared: _ClassMajor, index: torch.Tensor) -> _ClassMajor:
    """Per row and per split ``s``, the samples ``index[s]`` (splits, m): rows ``row * splits + s``."""
    rows, c, _ = prepared.z.shape
    k, m = index.shape
    z = prepared.z[:, :, index].permute(0, 2, 1, 3).reshape(rows * k, c, m)
    take = index.reshape(1, -1).expand(rows, -1)
    z_true = prepared.z_true.gather(1, take).reshape(rows * k, m)
    finite = prepared.finite.gather(1, take).reshape(rows * k, m)
    pred = prepared.pred.gather(1, take).reshape(rows * k, m)
    return _ClassMajor(z.contiguous(), z_true, finite, pred)


def calibration_summary(logits: torch.Tensor, target: torch.Tensor, n_bins: int = N_BINS) -> dict[str, Any]:
    """:func:`calibration_summaries` of one (N, C) set of logits: floats, and the per-split arrays."""
    summary = calibration_summaries(logits[None], target, n_bins)
    return {k: v[0].numpy() if k in SPLIT_KEYS else float(v[0]) for k, v in summary.items()}


def reliability_bins(
    conf: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin: ``(mean confidence, accuracy, count)``; empty bins are nan/0.

    Bin ``b`` holds confidences in ``[b/n, (b+1)/n)`` as in torchmetrics' ECE, except that a
    confidence of exactly 1 goes into the last bin (torchmetrics gives it a bin of its own).
    """
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    bins = np.clip(np.floor(conf * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(bins, weights=conf, minlength=n_bins) / count
        acc = np.bincount(bins, weights=correct, minlength=n_bins) / count
    return mean_conf, acc, count
