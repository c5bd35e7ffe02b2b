"""The run statistics the verdict is judged on, computed once from the per-sample val records.

Input: the per-sample val cross-entropy ``loss`` (E, N) and predicted class ``pred`` (E, N) at each of the E
recorded epochs, the ``target`` (N,), and optionally the untrained model's mean val loss. "min epoch" is the
epoch of lowest mean val loss (first one on ties), "last epoch" the last recorded one, "best epoch" the one of
highest val accuracy.

Error bars come from one seeded paired bootstrap over the val samples (:mod:`lossdiag.functional.bootstrap`:
2000 resamples, seed 0, 95% percentile intervals) that resamples the min and the last epoch with the same
indices. The min epoch is picked after looking at the data, so the rise interval is slightly optimistic; so is
the Wilson bound of the best accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lossdiag.functional.bootstrap import (
    LEVEL,
    N_RESAMPLES,
    SEED,
    bootstrap_means,
    percentile_interval,
    relative_rise,
    wilson_lower,
)

MAJORITY_MARGIN = 0.02  # best accuracy must beat the majority-class rate by more than this (lower bound)
RISE_THRESHOLD = 0.05  # a relative rise of mean val loss up to this is "no rise"
# the rise the verdict is judged on is that of a centred moving average over this many epochs (truncated at the
# ends): a single-epoch minimum picked after looking at a noisy curve overstates the rise (seen: 48.5% from one
# epoch, 26.5% from the 5-epoch average on the default run). Shorter runs get a shorter window (see smoothing_window)
SMOOTHING_WINDOW = 5


@dataclass(frozen=True)
class RunStats:
    """What the val records show, before any rule is applied (``diagnosis.json`` embeds these fields in order).

    Fields about a rise (``rise*``, ``acc_change*``) are ``None`` with a single recorded epoch (no history).
    """

    n_samples: int
    n_epochs: int
    min_epoch: int
    last_epoch: int
    min_loss: float
    last_loss: float
    rise: float | None  # last_loss - min_loss
    rise_rel: float | None  # rise / min_loss
    rise_ci: tuple[float, float] | None
    significant_rise: bool  # the smoothed rise > RISE_THRESHOLD and its CI's lower end > 0
    acc_at_min: float
    acc_last: float
    acc_change: float | None  # acc_last - acc_at_min
    acc_change_ci: tuple[float, float] | None
    acc_best: float
    acc_best_epoch: int
    acc_best_lower: float  # one-sided LEVEL Wilson lower bound of acc_best
    acc_last_lower: float  # one-sided LEVEL Wilson lower bound of acc_last
    majority_rate: float  # share of the most frequent class in the val set
    initial_loss: float | None  # the untrained model's mean val loss
    smoothing_window: int  # epochs of the centred moving average of the smoothed rise
    min_epoch_smoothed: int  # the centre of the lowest moving average
    min_loss_smoothed: float
    last_loss_smoothed: float  # the moving average at the last epoch (its last window//2 + 1 epochs)
    rise_rel_smoothed: float | None  # what the verdict is decided on
    rise_ci_smoothed: tuple[float, float] | None
    acc_flips: dict[str, int] | None  # val samples that became wrong / right from min_epoch to last_epoch
    unlearned_classes: tuple[str, ...]  # classes in the val set with recall 0 at the last epoch
    collapsed_classes: tuple[
        str, ...
    ]  # those of them whose recall 0 is beyond chance (they decide a collapse)
    samples_to_settle: (
        int | None
    )  # a rise whose interval includes 0: about how many val samples would settle it
    rise_threshold: float = RISE_THRESHOLD
    majority_margin: float = MAJORITY_MARGIN
    confidence_level: float = LEVEL
    n_resamples: int = N_RESAMPLES
    bootstrap_seed: int = SEED

    @property
    def history(self) -> bool:
        return self.n_epochs > 1


@dataclass(frozen=True)
class RunFacts:
    """Facts the rules and their words need beyond :class:`RunStats` (not in ``diagnosis.json``)."""

    n_classes_present: int
    n_learned_classes: int
    min_is_first: bool  # the smoothed minimum is at the first recorded epoch
    min_is_last: bool  # the smoothed minimum is at the last recorded epoch
    predicted_last: tuple[str, ...]  # the classes the last epoch predicts
    first_loss: float  # the first recorded epoch's mean val loss
    max_loss: float  # the highest epoch mean


CHUNK_ELEMENTS = 4_000_000  # per-epoch sums run over blocks of epochs of at most this many (epochs x samples)


def _epoch_blocks(n_epochs: int, n: int) -> list[slice]:
    """Blocks of epochs to stream over: the history may be a memory map larger than memory."""
    step = max(1, CHUNK_ELEMENTS // max(n, 1))
    return [slice(start, start + step) for start in range(0, n_epochs, step)]


def _check_inputs(
    loss: np.ndarray, pred: np.ndarray, target: np.ndarray, n_classes: int, epochs: Sequence[int]
) -> None:
    """Refuse mismatched shapes, non-finite losses and out-of-range labels with a clear message."""
    if loss.ndim != 2 or loss.shape[0] < 1 or loss.shape[1] < 1:
        raise ValueError(f"loss must be (epochs >= 1, samples >= 1), got shape {loss.shape}")
    if pred.shape != loss.shape:
        raise ValueError(f"pred shape {pred.shape} differs from loss shape {loss.shape}")
    if target.shape != (loss.shape[1],):
        raise ValueError(f"target shape {target.shape} does not match {loss.shape[1]} samples")
    if len(epochs) != loss.shape[0]:
        raise ValueError(f"{len(epochs)} epoch numbers for {loss.shape[0]} recorded epochs")
    blocks = _epoch_blocks(*loss.shape)
    if not all(np.isfinite(loss[b]).all() for b in blocks):
        raise ValueError("loss has non-finite values")
    low = min(int(target.min()), *(int(pred[b].min()) for b in blocks))
    high = max(int(target.max()), *(int(pred[b].max()) for b in blocks))
    if low < 0 or high >= n_classes:
        raise ValueError(f"target or pred has labels outside [0, {n_classes})")


def mean_losses(loss: np.ndarray) -> np.ndarray:
    """Each epoch's mean per-sample loss (float64) of ``loss`` (..., N): what the min-loss epoch is picked by.
    A history (E, N) is read in blocks of epochs (a memory-mapped journal is never copied whole)."""
    if np.ndim(loss) < 2:
        return np.asarray(loss, dtype=np.float64).mean(-1)
    blocks = _epoch_blocks(*loss.shape)
    return np.concatenate([np.asarray(loss[b], dtype=np.float64).mean(-1) for b in blocks])


def smoothing_window(n_epochs: int) -> int:
    """The moving average's window for a run of ``n_epochs``: :data:`SMOOTHING_WINDOW` from 40 epochs on, 3 from 20,
    none (1) below: a window must be a small part of the curve, or it hides the minimum it is meant to steady."""
    return min(SMOOTHING_WINDOW, 2 * (n_epochs // 20) + 1)


def smoothing_weights(n_epochs: int, window: int) -> np.ndarray:
    """(E, E) weights of a centred moving average over ``window`` (odd) epochs, truncated at the ends: row ``i``
    averages epochs ``i - window // 2`` to ``i + window // 2`` that exist."""
    half = max(window, 1) // 2
    i = np.arange(n_epochs)
    inside = np.abs(i[:, None] - i[None, :]) <= half
    return inside / inside.sum(1, keepdims=True)


class _History:
    """Per-sample val records (E, N), possibly memory-mapped: read per epoch, or streamed in blocks of epochs."""

    def __init__(self, loss: np.ndarray, pred: np.ndarray, target: np.ndarray) -> None:
        self.loss, self.pred, self.target = loss, pred, target

    def per_epoch(self) -> tuple[np.ndarray, np.ndarray]:
        """Each epoch's mean loss (float64) and accuracy, over blocks of epochs."""
        blocks = _epoch_blocks(*self.loss.shape)
        mean = mean_losses(self.loss)
        acc = np.concatenate([(self.pred[b] == self.target[None, :]).mean(-1) for b in blocks])
        return mean, acc

    def row(self, i: int) -> np.ndarray:
        return np.asarray(self.loss[i], dtype=np.float64)

    def correct(self, i: int) -> np.ndarray:
        return (np.asarray(self.pred[i]) == self.target).astype(np.float64)

    def averaged(self, weights: np.ndarray) -> np.ndarray:
        """Each sample's loss averaged over the epochs of a moving average's window (``weights``: one of its rows)."""
        return np.asarray(self.loss[np.flatnonzero(weights)], dtype=np.float64).mean(0)

    def intervals(
        self,
        i_min: int,
        i_last: int,
        smooth_min: np.ndarray,
        smooth_last: np.ndarray,
        n_resamples: int,
        seed: int,
    ) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
        """The 95% intervals of the relative rise, the accuracy change and the smoothed relative rise, from one
        paired bootstrap (the same resamples for all three)."""
        columns = [self.row(i_min), self.row(i_last), self.correct(i_min), self.correct(i_last),
                   self.averaged(smooth_min), self.averaged(smooth_last)]  # fmt: skip
        means = bootstrap_means(np.column_stack(columns), n_resamples, seed)
        return (
            percentile_interval(relative_rise(means[:, 0], means[:, 1])),
            percentile_interval(means[:, 3] - means[:, 2]),
            percentile_interval(relative_rise(means[:, 4], means[:, 5])),
        )


def run_stats(
    loss: np.ndarray,
    pred: np.ndarray,
    target: np.ndarray,
    class_names: Sequence[str],
    epochs: Sequence[int],
    initial_loss: float | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> tuple[RunStats, RunFacts]:
    """The statistics of the per-sample val records ``loss``/``pred`` (E, N) of ``target`` (N,).

    ``loss`` and ``pred`` may be memory maps of a history larger than memory: the per-epoch means stream over
    blocks of epochs, and only the epochs the statistics need are read whole."""
    pred, target = np.asarray(pred), np.asarray(target)
    n_classes = len(class_names)
    _check_inputs(loss, pred, target, n_classes, epochs)
    (n_epochs, n), epochs, h = loss.shape, [int(e) for e in epochs], _History(loss, pred, target)
    mean_loss, acc = h.per_epoch()
    i_min, i_last, i_best = int(np.argmin(mean_loss)), n_epochs - 1, int(np.argmax(acc))  # first on ties
    window = smoothing_window(n_epochs)
    weights = smoothing_weights(n_epochs, window)
    smooth = weights @ mean_loss
    j_min = int(np.argmin(smooth))  # the smoothed minimum
    rise_ci, acc_change_ci, rise_ci_smoothed = h.intervals(
        i_min, i_last, weights[j_min], weights[-1], n_resamples, seed
    )
    rise_rel = float(relative_rise(mean_loss[i_min], mean_loss[i_last]))
    rise_smoothed = float(relative_rise(smooth[j_min], smooth[-1]))
    correct_last = h.correct(i_last)

    counts = np.bincount(target, minlength=n_classes)
    present, learned, unlearned, collapsed = _classes(counts, target, correct_last)
    history = n_epochs > 1
    beyond = history and rise_smoothed > RISE_THRESHOLD
    significant, unsettled = beyond and rise_ci_smoothed[0] > 0, beyond and rise_ci_smoothed[0] <= 0
    stats = RunStats(
        n_samples=n,
        n_epochs=n_epochs,
        min_epoch=epochs[i_min],
        last_epoch=epochs[i_last],
        min_loss=float(mean_loss[i_min]),
        last_loss=float(mean_loss[i_last]),
        rise=float(mean_loss[i_last] - mean_loss[i_min]) if history else None,
        rise_rel=rise_rel if history else None,
        rise_ci=rise_ci if history else None,
        significant_rise=significant,
        acc_at_min=float(acc[i_min]),
        acc_last=float(acc[i_last]),
        acc_change=float(acc[i_last] - acc[i_min]) if history else None,
        acc_change_ci=acc_change_ci if history else None,
        acc_best=float(acc[i_best]),
        acc_best_epoch=epochs[i_best],
        acc_best_lower=wilson_lower(float(acc[i_best]), n),
        acc_last_lower=wilson_lower(float(acc[i_last]), n),
        majority_rate=float(counts.max() / n),
        smoothing_window=window,
        min_epoch_smoothed=epochs[j_min],
        min_loss_smoothed=float(smooth[j_min]),
        last_loss_smoothed=float(smooth[-1]),
        rise_rel_smoothed=rise_smoothed if history else None,
        rise_ci_smoothed=rise_ci_smoothed if history else None,
        acc_flips=_flips(h.correct(i_min), correct_last) if history else None,
        initial_loss=None if initial_loss is None else float(initial_loss),
        unlearned_classes=tuple(class_names[c] for c in np.flatnonzero(unlearned)),
        collapsed_classes=tuple(class_names[c] for c in np.flatnonzero(collapsed)),
        samples_to_settle=_samples_to_settle(rise_smoothed, rise_ci_smoothed[0], n) if unsettled else None,
        n_resamples=n_resamples,
        bootstrap_seed=seed,
    )
    facts = RunFacts(
        n_classes_present=int(present.sum()),
        n_learned_classes=int(learned.sum()),
        min_is_first=j_min == 0,
        min_is_last=j_min == i_last,
        predicted_last=tuple(class_names[int(c)] for c in np.unique(pred[i_last])),
        first_loss=float(mean_loss[0]),
        max_loss=float(mean_loss.max()),
    )
    return stats, facts


def _classes(counts: np.ndarray, target: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per class (bool): present in the val set, learned (some right at the end), unlearned (recall 0), collapsed
    (unlearned beyond chance)."""
    hits = np.bincount(target, weights=correct, minlength=len(counts))
    present = counts > 0
    unlearned, learned = present & (hits == 0), present & (hits > 0)
    return (
        present,
        learned,
        unlearned,
        unlearned & _beyond_chance(unlearned, learned, counts, target, correct),
    )


def _flips(before: np.ndarray, after: np.ndarray) -> dict[str, int]:
    """How many samples went from right to wrong and from wrong to right (``before``/``after``: 1.0 = right)."""
    return {
        "to_wrong": int(((before > 0) & (after == 0)).sum()),
        "to_right": int(((before == 0) & (after > 0)).sum()),
    }


def _beyond_chance(
    unlearned: np.ndarray, learned: np.ndarray, counts: np.ndarray, target: np.ndarray, correct: np.ndarray
) -> np.ndarray:
    """Per class: would getting all its val samples wrong be unlikely for a class as well learned as the others?

    ``a`` = one-sided ``LEVEL`` Wilson lower bound of the accuracy on the samples of the learned classes;
    a class of ``n_c`` samples gets none right with probability ``(1 - a) ** n_c``; it counts when that is
    <= ``(1 - LEVEL)`` / (number of classes in the val set) (Bonferroni over the classes).
    """
    if not (unlearned.any() and learned.any()):
        return np.zeros_like(unlearned)
    in_learned = learned[target]
    a = wilson_lower(float(correct[in_learned].mean()), int(in_learned.sum()))
    alpha = (1 - LEVEL) / int((counts > 0).sum())
    return (1.0 - a) ** counts.astype(np.float64) <= alpha


def _samples_to_settle(rise: float, ci_low: float, n: int) -> int | None:
    """Val-set size at which the CI's lower end would reach 0 if the rise stayed the same.

    The distance from estimate to lower end shrinks ~ 1/sqrt(N): N_needed = N * ((rise - low) / rise)^2.
    A rough guide (heavy-tailed losses settle more slowly); None when it cannot be computed.
    """
    half = rise - ci_low
    if not (math.isfinite(half) and math.isfinite(rise)) or rise <= 0:
        return None
    return math.ceil(n * (half / rise) ** 2)
