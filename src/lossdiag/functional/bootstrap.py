"""Error bars for per-sample records: a seeded paired bootstrap over samples, and Wilson bounds.

Pure numpy. Each bootstrap resample draws N sample indices with replacement and, for paired statistics, uses the
same indices for both sets of values (e.g. one epoch's losses and another's), so what the samples share cancels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

LEVEL = 0.95  # confidence level: two-sided for the bootstrap CIs, one-sided for the Wilson bound
N_RESAMPLES = 2000  # bootstrap resamples
SEED = 0  # bootstrap seed
MAX_CHUNK_ELEMENTS = 5_000_000  # bootstrap indices are drawn in chunks of at most this many (resamples x N)


@dataclass(frozen=True)
class BootstrapCI:
    """A statistic's value on all samples and its bootstrap percentile interval."""

    estimate: float
    low: float
    high: float


def bootstrap_means(values: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> np.ndarray:
    """Column means of ``values`` (N, K) over ``n_resamples`` bootstrap resamples of its rows: (B, K).

    The indices are ``np.random.default_rng(seed).integers(0, N, size=(B, N))``, drawn in consecutive
    chunks of rows when B * N > ``MAX_CHUNK_ELEMENTS`` (bounded memory; the chunk size depends on N only,
    so the result depends on (values, B, seed) only). Each chunk's resample counts come from one
    ``bincount`` and the means from one matrix product: no Python loop over resamples.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    n = values.shape[0]
    if n == 0:
        raise ValueError("bootstrap needs at least one sample")
    rng = np.random.default_rng(seed)
    rows = max(1, MAX_CHUNK_ELEMENTS // n)
    out = np.empty((n_resamples, values.shape[1]))
    for start in range(0, n_resamples, rows):
        b = min(rows, n_resamples - start)
        idx = rng.integers(0, n, size=(b, n))
        flat = (idx + n * np.arange(b)[:, None]).ravel()
        counts = np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)
        out[start : start + b] = counts @ values / n
    return out


def percentile_interval(stats: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Two-sided percentile interval of bootstrap statistics (numpy's "linear" quantiles).

    Written out so that equal infinite values give that value, not nan (``inf - inf``).
    """
    s = np.sort(np.asarray(stats, dtype=np.float64).ravel())
    pos = np.array([(1 - level) / 2, (1 + level) / 2]) * (len(s) - 1)
    lo = np.floor(pos).astype(int)
    hi = np.ceil(pos).astype(int)
    a, b = s[lo], s[hi]
    with np.errstate(invalid="ignore"):
        q = np.where(a == b, a, a + (b - a) * (pos - lo))
    return float(q[0]), float(q[1])


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    stat: Callable[[np.ndarray, np.ndarray], np.ndarray],
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> BootstrapCI:
    """Percentile CI of ``stat(mean_a, mean_b)`` over paired resamples of the samples.

    ``a`` and ``b`` hold per-sample values (N,) or (N, K) of the same N samples (e.g. one epoch's and
    another's losses); every resample uses the same sample indices for both, so what the samples share
    cancels. ``stat`` gets the means over samples, shape () / (K,) for the estimate and (B,) / (B, K)
    for the resamples, and must broadcast over that leading axis.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal shapes, got {a.shape} and {b.shape}")
    n = a.shape[0]
    a2, b2 = a.reshape(n, -1), b.reshape(n, -1)
    k = a2.shape[1]
    means = bootstrap_means(np.hstack([a2, b2]), n_resamples, seed)
    ma = means[:, :k].reshape(n_resamples, *a.shape[1:])
    mb = means[:, k:].reshape(n_resamples, *a.shape[1:])
    low, high = percentile_interval(stat(ma, mb), level)
    return BootstrapCI(float(stat(a.mean(0), b.mean(0))), low, high)


def relative_rise(before: np.ndarray | float, after: np.ndarray | float) -> np.ndarray:
    """``(after - before) / before``; 0 when both are 0, +inf when only ``before`` is 0."""
    before = np.asarray(before, dtype=np.float64)
    after = np.asarray(after, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (after - before) / before
    return np.where(before == 0, np.where(after == before, 0.0, np.inf), r)


def wilson_lower(p_hat: float, n: int, level: float = LEVEL) -> float:
    """One-sided ``level`` Wilson lower bound of a proportion ``p_hat`` observed on ``n`` trials."""
    z = NormalDist().inv_cdf(level)
    centre = p_hat + z * z / (2 * n)
    spread = z * math.sqrt(p_hat * (1 - p_hat) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))
