"""What kind of run do the per-sample validation records show? One rule-based answer, with error bars.

Input: the per-sample val cross-entropy ``loss`` (E, N) and predicted class ``pred`` (E, N) at each of
the E recorded epochs, the ``target`` (N,), and optionally the untrained model's mean val loss.
"min epoch" is the epoch of lowest mean val loss (first one on ties), "last epoch" the last recorded one.

The rules, checked in this order (the first that fires decides, see ``KIND_ORDER``):

1. ``not_learning`` if any of
   a. the one-sided 95% Wilson lower bound of the best val accuracy over epochs is
      <= majority-class rate + ``MAJORITY_MARGIN`` (0.02); the majority-class rate is the share of the
      most frequent class in ``target`` (a val set with one class always lands here);
   b. ``initial_loss`` is given and the lowest mean val loss is >= it (val loss never fell);
   c. the same bound for the *last* epoch's accuracy is <= majority-class rate + ``MAJORITY_MARGIN``:
      whatever the model learned on the way is lost at the end (e.g. training diverged and it now
      predicts one class);
   d. (checked last, where rule 6 would fire) the minimum is at the first recorded epoch and no
      ``initial_loss`` is given: the loss rose significantly and nothing shows it ever fell.
2. ``partial_collapse``: at the last epoch some classes present in ``target`` have recall 0 (never
   predicted correctly, including never predicted at all) while others have recall > 0 (and, by 1c,
   the last model beats the majority class), and for at
   least one of them that is evidence, not chance: a class learned as well as the learned ones (their
   last-epoch accuracy's one-sided 95% Wilson lower bound ``a``) would get all its ``n_c`` val samples
   wrong with probability ``(1 - a) ** n_c``; the class counts (``collapsed_classes``) when that is
   <= 0.05 / (number of classes in the val set) (Bonferroni over the classes). A class with one or two
   val samples that happen to be wrong is listed in ``unlearned_classes`` but does not decide the kind.
3. ``no_rise``: only one epoch, or the relative rise of mean val loss from the min epoch to the last
   epoch, ``(loss_last - loss_min) / loss_min``, is <= ``RISE_THRESHOLD`` (0.05).
4. ``inconclusive``: the rise is above the threshold but the lower end of its 95% CI is <= 0.
5. ``overfitting``: the rise is significant (CI lower end > 0) and accuracy fell significantly (the upper
   end of the 95% CI of ``acc_last - acc_at_min`` is < 0).
6. ``phenomenon``: otherwise: val loss fell to a minimum (the min epoch is not the first recorded one,
   or ``initial_loss`` is given and above the minimum), then rose significantly while accuracy did not
   fall significantly (1c otherwise).

Error bars come from a seeded paired bootstrap over val samples (``N_RESAMPLES`` = 2000 resamples,
seed 0, 95% percentile intervals): each resample draws N sample indices with replacement and uses the
same indices at the min epoch and the last epoch. The min epoch is picked after looking at the data
(argmin of the mean), so the rise interval is slightly optimistic (too narrow / too far from 0).
The accuracy bound of rule 1a is for the best epoch, also picked after looking, so also optimistic.

``crossfit_temperature`` (from :mod:`lossdiag.functional.calibration`, re-exported here) gives honest
calibration numbers: a temperature fitted and scored on the same samples flatters the scaled NLL/ECE, so
each half of the samples is scored with the temperature fitted on the other half.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

from lossdiag.functional.calibration import T_MAX, T_MIN, CrossFit, crossfit_temperature
from lossdiag.functional.jsonable import json_ready

__all__ = ["T_MAX", "T_MIN", "CrossFit", "crossfit_temperature"]  # re-exported: calibration lives there

KINDS = ("phenomenon", "overfitting", "no_rise", "inconclusive", "not_learning", "partial_collapse")
# precedence: the first kind whose rule fires wins (see the module docstring)
KIND_ORDER = ("not_learning", "partial_collapse", "no_rise", "inconclusive", "overfitting", "phenomenon")

LEVEL = 0.95  # confidence level: two-sided for the bootstrap CIs, one-sided for the Wilson bound
N_RESAMPLES = 2000  # bootstrap resamples
SEED = 0  # bootstrap seed
MAJORITY_MARGIN = 0.02  # best accuracy must beat the majority-class rate by more than this (lower bound)
RISE_THRESHOLD = 0.05  # a relative rise of mean val loss up to this is "no rise"
MAX_CHUNK_ELEMENTS = 5_000_000  # bootstrap indices are drawn in chunks of at most this many (resamples x N)

ADVICE_NOT_LEARNING = (
    "Lower `optimizer.lr` (e.g. 10x) and check the labels/folders: one folder per class, "
    "the same classes in train and val, several classes in the val set."
)
ADVICE_COLLAPSE = (
    "Check these classes' images and labels (folder names, how many training images they have), "
    "then try a lower `optimizer.lr`."
)


# ---------------------------------------------------------------------------------------------- bootstrap


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


# ---------------------------------------------------------------------------------------------- run kinds


@dataclass(frozen=True)
class RunKind:
    """The kind of run, the rule that fired (``reason``), what to try (``advice``) and the numbers."""

    kind: str
    reason: str
    advice: str
    n_samples: int
    n_epochs: int
    min_epoch: int
    last_epoch: int
    min_loss: float
    last_loss: float
    rise_rel: float
    rise_ci: tuple[float, float]
    acc_at_min: float
    acc_last: float
    acc_best: float
    acc_best_epoch: int
    acc_best_lower: float  # one-sided LEVEL Wilson lower bound of acc_best
    acc_last_lower: float  # one-sided LEVEL Wilson lower bound of acc_last
    acc_change: float  # acc_last - acc_at_min
    acc_change_ci: tuple[float, float]
    majority_rate: float
    initial_loss: float | None
    unlearned_classes: tuple[str, ...]  # classes in the val set with recall 0 at the last epoch
    collapsed_classes: tuple[str, ...]  # those of them that count for partial_collapse (rule 2)
    samples_to_settle: int | None  # inconclusive only: val-set size that would likely settle the rise
    n_resamples: int
    seed: int

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable values: tuples become lists, nan/inf become None."""
        return json_ready(asdict(self))


def pct(x: float) -> str:
    """``0.485`` -> ``"48.5%"`` (the verdict's words and ``lossdiag.render.diagnosis`` share it)."""
    return f"{100 * x:.1f}%"


def loss_text(x: float) -> str:
    """A loss to 4 decimals, or in scientific notation when that would read 0.0000."""
    return f"{x:.4f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def _signed(x: float) -> str:
    return f"{x:+.3f}"


def accuracy_move(before: float, after: float) -> str:
    """``"was unchanged at 0.922"`` when both read the same at 3 decimals, else ``"went 0.595 -> 0.719"``."""
    if f"{before:.3f}" == f"{after:.3f}":
        return f"was unchanged at {after:.3f}"
    return f"went {before:.3f} -> {after:.3f}"


def _check_inputs(
    loss: np.ndarray,
    pred: np.ndarray,
    target: np.ndarray,
    n_classes: int,
    class_names: Sequence[str],
    epochs: Sequence[int],
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
    if len(class_names) != n_classes:
        raise ValueError(f"{len(class_names)} class names for {n_classes} classes")
    if not np.all(np.isfinite(loss)):
        raise ValueError("loss has non-finite values")
    for name, labels in (("target", target), ("pred", pred)):
        if labels.min() < 0 or labels.max() >= n_classes:
            raise ValueError(f"{name} has labels outside [0, {n_classes})")


def mean_losses(loss: np.ndarray) -> np.ndarray:
    """Each epoch's mean per-sample loss (float64) of ``loss`` (..., N): what the min-loss epoch is picked by."""
    return np.asarray(loss, dtype=np.float64).mean(-1)


def at_lowest_so_far(mean_loss: np.ndarray, lowest_before: float = math.inf) -> np.ndarray:
    """Which epochs of ``mean_loss`` (E,) (in order, after epochs whose lowest mean was ``lowest_before``) have a mean
    at most every mean before them (or NaN): the candidates for the min-loss epoch, which is one of them."""
    mean_loss = np.asarray(mean_loss, dtype=np.float64)
    before = np.fmin.accumulate(np.concatenate([[lowest_before], mean_loss]))[:-1]  # fmin: NaN never wins
    return (mean_loss <= before) | np.isnan(mean_loss)


def classify_run(
    loss: np.ndarray,
    pred: np.ndarray,
    target: np.ndarray,
    n_classes: int,
    class_names: Sequence[str],
    epochs: Sequence[int],
    initial_loss: float | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> RunKind:
    """The kind of run the per-sample val records show (rules and thresholds: module docstring)."""
    loss = np.asarray(loss, dtype=np.float64)
    pred = np.asarray(pred)
    target = np.asarray(target)
    _check_inputs(loss, pred, target, n_classes, class_names, epochs)
    n_epochs, n = loss.shape
    epochs = [int(e) for e in epochs]

    correct = (pred == target[None, :]).astype(np.float64)
    mean_loss = mean_losses(loss)
    acc = correct.mean(1)
    i_min, i_last = int(np.argmin(mean_loss)), n_epochs - 1  # argmin: first epoch on ties
    i_best = int(np.argmax(acc))

    # one bootstrap for both intervals, so they come from the same resamples
    means = bootstrap_means(
        np.column_stack([loss[i_min], loss[i_last], correct[i_min], correct[i_last]]), n_resamples, seed
    )
    rise_rel = float(relative_rise(mean_loss[i_min], mean_loss[i_last]))
    rise_ci = percentile_interval(relative_rise(means[:, 0], means[:, 1]))
    acc_change = float(acc[i_last] - acc[i_min])
    acc_change_ci = percentile_interval(means[:, 3] - means[:, 2])

    counts = np.bincount(target, minlength=n_classes)
    majority_rate = float(counts.max() / n)
    acc_best_lower = wilson_lower(float(acc[i_best]), n)
    acc_last_lower = wilson_lower(float(acc[i_last]), n)
    hits = np.bincount(target, weights=correct[i_last], minlength=n_classes)
    present = counts > 0
    unlearned = present & (hits == 0)
    learned = present & (hits > 0)
    collapsed = unlearned & _beyond_chance(unlearned, learned, counts, target, correct[i_last])
    unlearned_names = tuple(class_names[c] for c in np.flatnonzero(unlearned))
    collapsed_names = tuple(class_names[c] for c in np.flatnonzero(collapsed))

    e_min, e_last, e_best = epochs[i_min], epochs[i_last], epochs[i_best]
    by = (
        f"{pct(rise_rel)} (95% CI {pct(rise_ci[0])} to {pct(rise_ci[1])})"
        if math.isfinite(rise_rel) and all(map(math.isfinite, rise_ci))
        else "by an unbounded share (its minimum is 0: every per-sample loss underflowed to 0)"
    )
    rose = f"rose {by} from {loss_text(mean_loss[i_min])} at epoch {e_min} to {loss_text(mean_loss[i_last])} at epoch {e_last}"
    rise_text = f"val loss {rose}"
    acc_text = (
        f"val accuracy {accuracy_move(acc[i_min], acc[i_last])} "
        f"(change {_signed(acc_change)}, 95% CI {_signed(acc_change_ci[0])} to {_signed(acc_change_ci[1])})"
    )
    samples_to_settle: int | None = None

    if acc_best_lower <= majority_rate + MAJORITY_MARGIN:
        kind, advice = "not_learning", ADVICE_NOT_LEARNING
        best = (
            f"the best val accuracy {acc[i_best]:.3f} (epoch {e_best})"
            if n_epochs > 1
            else f"the accuracy {acc[0]:.3f}"
        )
        reason = (
            f"{best} is not above the majority-class rate {majority_rate:.3f} by more than {MAJORITY_MARGIN:.2f} "
            f"(its one-sided 95% lower bound is {acc_best_lower:.3f} with {n} {'val ' if n_epochs > 1 else ''}samples)"
        )
        if present.sum() == 1:
            reason += "; the val set holds a single class, so accuracy cannot show learning"
    elif initial_loss is not None and mean_loss[i_min] >= initial_loss:
        kind, advice = "not_learning", ADVICE_NOT_LEARNING
        reason = (
            f"val loss never fell below its untrained value: its lowest mean {mean_loss[i_min]:.4f} "
            f"(epoch {e_min}) is >= the untrained model's {initial_loss:.4f}"
        )
    elif acc_last_lower <= majority_rate + MAJORITY_MARGIN:
        kind, advice = "not_learning", ADVICE_NOT_LEARNING
        predicted = np.unique(pred[i_last])
        only = f"; it predicts only {class_names[int(predicted[0])]}" if len(predicted) == 1 else ""
        reason = (
            f"the final val accuracy {acc[i_last]:.3f} (epoch {e_last}) is not above the majority-class rate "
            f"{majority_rate:.3f} by more than {MAJORITY_MARGIN:.2f} (its one-sided 95% lower bound is "
            f"{acc_last_lower:.3f}), although it reached {acc[i_best]:.3f} at epoch {e_best}: what it learned is "
            f"lost{only}"
        )
    elif collapsed.any():
        kind, advice = "partial_collapse", ADVICE_COLLAPSE
        n_learned = int(learned.sum())
        others = "the other class is" if n_learned == 1 else f"the other {n_learned} are"
        reason = (
            f"at epoch {e_last}, {collapsed.sum()} of {present.sum()} classes in the val set "
            f"{'is' if collapsed.sum() == 1 else 'are'} never predicted correctly "
            f"(recall 0: {', '.join(collapsed_names)}) while {others} (val accuracy {acc[i_last]:.3f})"
        )
    elif n_epochs == 1:
        kind, advice = "no_rise", ""
        reason = (
            f"only one epoch (epoch {e_last}) was recorded, so there is no rise to judge "
            f"(val loss {mean_loss[i_last]:.4f}, val accuracy {acc[i_last]:.3f})"
        )
    elif i_min == i_last:
        kind, advice = "no_rise", ""
        reason = f"val loss is lowest at the last epoch ({mean_loss[i_last]:.4f} at epoch {e_last}): it has not risen"
    elif rise_rel <= RISE_THRESHOLD:
        kind, advice = "no_rise", ""
        reason = (
            f"val loss changed by {pct(rise_rel)} from its minimum {mean_loss[i_min]:.4f} at epoch {e_min} "
            f"to {mean_loss[i_last]:.4f} at epoch {e_last}, within the {pct(RISE_THRESHOLD)} threshold"
        )
    elif rise_ci[0] <= 0:
        kind = "inconclusive"
        samples_to_settle = _samples_to_settle(rise_rel, rise_ci[0], n)
        reason = f"{rise_text}, but with {n} val samples that interval includes no rise"
        advice = "Use a larger val set or repeat with other seeds before reading anything into the rise."
        if samples_to_settle is not None:
            advice = (
                f"Use a larger val set (about {samples_to_settle} samples would likely settle a rise this size, "
                f"{n} now) or repeat with other seeds before reading anything into the rise."
            )
    elif acc_change_ci[1] < 0:
        kind = "overfitting"
        reason = f"{rise_text}, and {acc_text}: the model got worse on val, not just more confident"
        advice = (
            f"Use the checkpoint of epoch {e_min} (stop earlier) or regularise: raise `optimizer.weight_decay`, "
            "add data or augmentation."
        )
    elif i_min == 0 and initial_loss is None:
        kind, advice = "not_learning", ADVICE_NOT_LEARNING
        reason = (
            f"val loss was lowest at the first recorded epoch (epoch {e_min}) and then {rose}, and no "
            "untrained loss is given to show it ever fell"
        )
    else:
        kind = "phenomenon"
        reason = f"{rise_text} while {acc_text}"
        advice = (
            "Nothing is wrong with which class wins: the rise is in confidence. For calibrated probabilities "
            f"use temperature scaling, or the checkpoint of epoch {e_min}."
        )

    return RunKind(
        kind=kind,
        reason=reason,
        advice=advice,
        n_samples=n,
        n_epochs=n_epochs,
        min_epoch=e_min,
        last_epoch=e_last,
        min_loss=float(mean_loss[i_min]),
        last_loss=float(mean_loss[i_last]),
        rise_rel=rise_rel,
        rise_ci=rise_ci,
        acc_at_min=float(acc[i_min]),
        acc_last=float(acc[i_last]),
        acc_best=float(acc[i_best]),
        acc_best_epoch=e_best,
        acc_best_lower=acc_best_lower,
        acc_last_lower=acc_last_lower,
        acc_change=acc_change,
        acc_change_ci=acc_change_ci,
        majority_rate=majority_rate,
        initial_loss=None if initial_loss is None else float(initial_loss),
        unlearned_classes=unlearned_names,
        collapsed_classes=collapsed_names,
        samples_to_settle=samples_to_settle,
        n_resamples=n_resamples,
        seed=seed,
    )


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
