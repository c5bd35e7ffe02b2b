"""Scores that point at likely label errors, from per-sample training dynamics (pure numpy/torch).

A mislabeled image is one the model keeps getting "wrong" with respect to its given label: the given-label
probability stays low and the given-label logit stays below another class's. Recording, for every training
sample, ``p_given`` and ``margin`` from the logits the training step already computes (no extra forward
pass) gives ``(E, N)`` arrays over ``E`` epochs, from which the published scores follow:

* Area Under the Margin (Pleiss et al. 2020): the mean margin over epochs; low = suspect.
* Dataset Cartography (Swayamdipta et al. 2020): confidence = mean ``p_given``, variability = its std;
  low confidence (with low variability: "hard to learn") = suspect.
* For validation images, which are never trained on: ``p_given`` under the best model; low = suspect.

Scores here are oriented so that higher = more suspect; :func:`rank` orders samples by one and :func:`quantile` /
:func:`merge_splits` merge the train and val lists. Every function takes numpy arrays or
tensors of any float dtype (float16 included) and computes in float64.

Which to use (``benchmarks/suspects_prototype.py``: ShallowNet, 8% of the labels moved, 3 seeds each of an
easy generated folder, a slow-to-learn one and the digits): training images by AUM over an *early window*, twice
the epochs up to the val-loss minimum (:func:`early_window`), before the model memorises the moved images
(precision@k 1.00 / 0.52 / 0.96 where every epoch gave 0.91 / 0.51 / 0.90); val images by the mean of
``p_given`` under the best model and over that window (:func:`val_suspicion`). Flags use thresholds per class
(:func:`class_thresholds`, :func:`confident_other`, :func:`class_outliers`), and with out-of-fold probabilities
cleanlab (:func:`cleanlab_issues`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lossdiag.functional.softmax import class_softmax

Array = np.ndarray | torch.Tensor | Sequence[float] | Sequence[Sequence[float]]


def given_label_dynamics(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p_given, margin)`` per sample, float32, on the logits' device, without gradients; ``logits`` (..., N, C)
    (e.g. a block of epochs) and ``target`` (N,) give shape (..., N).

    ``margin`` is the given-label logit minus the largest other logit (Pleiss et al.): positive when the
    model predicts the given label, and unlike ``p_given`` it does not saturate at 0 or 1.
    """
    logits = logits.detach().float()
    if logits.ndim < 2 or logits.shape[-1] < 2:
        raise ValueError(f"logits must be (N, C) with C >= 2, got shape {tuple(logits.shape)}")
    index = target.to(device=logits.device, dtype=torch.long).expand(logits.shape[:-1])[..., None]
    given = logits.gather(-1, index)[..., 0]
    p_given = class_softmax(logits).gather(-1, index)[..., 0]
    others = logits.scatter(-1, index, float("-inf"))
    return p_given, given - others.amax(dim=-1)


def _epochs(values: Array, name: str) -> np.ndarray:
    """``values`` as a float64 ``(E, N)`` array; a 1-D input is one epoch."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{name} must be (epochs, samples), got shape {arr.shape}")
    return arr


def _vector(values: Array, name: str) -> np.ndarray:
    """``values`` as a float64 ``(N,)`` array."""
    arr = _epochs(values, name)
    if arr.shape[0] != 1:
        raise ValueError(f"{name} must be one value per sample, got shape {arr.shape}")
    return arr[0]


def _from(start: int | float, n_epochs: int) -> int:
    """First epoch used: an int counts epochs (negative: from the end), a float in [0, 1) is a fraction."""
    first = int(start * n_epochs) if isinstance(start, float) else start if start >= 0 else n_epochs + start
    if not 0 <= first < n_epochs:
        raise ValueError(f"start={start} leaves no epochs out of {n_epochs}")
    return first


def aum(margin: Array, start: int | float = 0) -> np.ndarray:
    """Area Under the Margin: mean margin per sample over epochs ``start:``; low = suspect.

    ``start`` (an epoch index, or a fraction of the epochs) drops the first epochs, where every sample
    still has a low margin and only noise separates them.
    """
    m = _epochs(margin, "margin")
    return m[_from(start, len(m)) :].mean(axis=0)


def cartography(p_given: Array, start: int | float = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dataset Cartography ``(confidence, variability)``: mean and (population) std of ``p_given``."""
    p = _epochs(p_given, "p_given")
    p = p[_from(start, len(p)) :]
    return p.mean(axis=0), p.std(axis=0)


def rank(score: Array, tiebreak: Array | None = None) -> np.ndarray:
    """Sample indices, most suspect (highest ``score``) first; ties by higher ``tiebreak``, then by index."""
    s = _vector(score, "score")
    keys = [np.arange(len(s))]
    if tiebreak is not None:
        t = _vector(tiebreak, "tiebreak")
        if t.shape != s.shape:
            raise ValueError(f"tiebreak {t.shape} and score {s.shape} must have the same shape")
        keys.append(-t)
    keys.append(-s)
    # lexsort sorts by the last key first; -inf and +inf sort as they should
    return np.lexsort(keys)


def quantile(score: Array) -> np.ndarray:
    """Each sample's suspicion quantile in ``(0, 1]`` (1 = most suspect); tied scores share their mean quantile.

    Scores of different scales (train AUM, val ``1 - p_given``) become comparable this way, so the two
    splits can be merged into one list and two signals averaged; that assumes both splits hold about the same
    fraction of label errors, as a stratified split of randomly placed errors does.
    """
    s = _vector(score, "score")
    order = np.argsort(s, kind="stable")
    ordered = s[order]
    # each run of equal scores gets the mean of the ranks it spans (1-based, ascending: highest score = len(s))
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(s)]
    ranks = np.empty(len(s))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks / len(s)


# -- before memorisation, and flags calibrated per class ---------------------------------------------------
MIN_WINDOW = 5  # the early window holds at least this many epochs
# the early window spans this many times the epochs up to the val-loss minimum (benchmarks/suspects_prototype.py)
WINDOW_FACTOR = 2
# a training image is flagged below its class's median early margin minus this many robust standard deviations
OUTLIER_SPREAD = 2.0


def early_window(min_epoch: int, n_epochs: int, least: int = MIN_WINDOW, factor: int = WINDOW_FACTOR) -> int:
    """How many of the first epochs show the model before it memorises the mislabeled images: ``factor`` times
    the epochs up to the val-loss minimum (``min_epoch``, 0-based), at least ``least``, at most ``n_epochs``.

    Up to the minimum itself is too short where the model learns slowly (the classes are still being learned
    there: 0.47 vs 0.52 precision@k on the slow generated folders), while by twice that the model has not yet
    memorised the mislabeled images of easy data (1.00, where every epoch gives 0.91)."""
    return int(min(max(factor * (min_epoch + 1), least), n_epochs))


def early_window_end(
    dynamics_epochs: Sequence[int], val_epochs: Sequence[int], val_mean_loss: Array
) -> tuple[int, int]:
    """``(min_epoch, window_end)``: the epoch (number) of the lowest mean val loss and the last epoch of the early
    window (:func:`early_window` of the recorded training epochs)."""
    loss = _vector(val_mean_loss, "val_mean_loss")
    min_epoch = int(val_epochs[int(np.argmin(loss))])
    recorded = list(dynamics_epochs) or list(val_epochs)
    upto = sum(e <= min_epoch for e in recorded)
    return min_epoch, int(recorded[early_window(upto - 1, len(recorded)) - 1])


def early_aum(margin: Array, window: int) -> np.ndarray:
    """Minus the mean margin over the first ``window`` epochs: higher = more suspect."""
    m = _epochs(margin, "margin")
    return -m[: max(1, min(window, len(m)))].mean(axis=0)


def val_suspicion(p_model: Array, p_early: Array) -> np.ndarray:
    """``1 -`` the mean of a val image's ``p_given`` under the reference model and over the early epochs."""
    return 1.0 - 0.5 * (_vector(p_model, "p_model") + _vector(p_early, "p_early"))


def class_thresholds(p_given: Array, given: Array, n_classes: int) -> np.ndarray:
    """Confident learning's per-class self-confidence thresholds: ``t[c]`` = mean ``p_given`` of the images
    labelled ``c`` (NaN for a class without images)."""
    p = _vector(p_given, "p_given")
    g = np.asarray(given, dtype=np.int64)
    counts = np.bincount(g, minlength=n_classes)
    sums = np.bincount(g, weights=p, minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def confident_other(pred: Array, conf: Array, given: Array, thresholds: Array) -> np.ndarray:
    """Images whose model prefers another class *confidently*: ``pred != given`` and ``p(pred) >= t[pred]``
    (the off-diagonal of confident learning's confident joint)."""
    pred_ = np.asarray(pred, dtype=np.int64)
    t = np.asarray(thresholds, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return (pred_ != np.asarray(given, dtype=np.int64)) & (_vector(conf, "conf") >= t[pred_])


def class_outliers(values: Array, given: Array, n_classes: int, spread: float = OUTLIER_SPREAD) -> np.ndarray:
    """Per-class lower bounds: each class's median of ``values`` minus ``spread`` robust standard deviations
    (1.4826 x the median absolute deviation) of that class (NaN for a class without images)."""
    v = _vector(values, "values")
    g = np.asarray(given, dtype=np.int64)
    bounds = np.full(n_classes, np.nan)
    for c in np.unique(g):
        own = v[g == c]
        median = np.median(own)
        bounds[c] = median - spread * 1.4826 * np.median(np.abs(own - median))
    return bounds


def train_flags(margin: Array, given: Array, n_classes: int, spread: float = OUTLIER_SPREAD) -> np.ndarray:
    """Training images flagged from the early-window margins ``(W, Nt)`` (or their means, one row): another class
    out-scored the given label on average (mean margin < 0), by more than the images of that label usually trail
    (below its class's robust lower bound, :func:`class_outliers`). On data the model learns easily the bound is
    above 0 and every out-scored image is flagged; where it learns slowly, only the clear outliers of each class."""
    early = _epochs(margin, "margin").mean(axis=0)
    bound = class_outliers(early, given, n_classes, spread)
    return early < np.minimum(0.0, bound[np.asarray(given, dtype=np.int64)])


def combine(q_dynamics: Array, q_folds: Array, weight: float = 0.5) -> np.ndarray:
    """One score from two suspicion quantiles: ``weight`` on the cross-validated one."""
    return weight * _vector(q_folds, "q_folds") + (1.0 - weight) * _vector(q_dynamics, "q_dynamics")


# -- one ranked list over both splits ----------------------------------------------------------------
# the rules that flag an image as a likely label error (suspects.csv's ``flag_rule``)
CONFIDENT_OTHER = "confident_other"  # a model that never trained on it prefers another class, confidently
EARLY_DYNAMICS = "early_dynamics"  # before memorisation, another class out-scored the given one, confidently
CLEANLAB = "cleanlab"  # cleanlab's find_label_issues on the out-of-fold probabilities


def cleanlab_issues(given: Array, probs: Array) -> tuple[np.ndarray, np.ndarray]:
    """``(label quality, issue mask)`` of cleanlab on out-of-fold probabilities ``(N, C)``: its
    ``get_label_quality_scores`` (self-confidence; low = suspect) and ``find_label_issues`` with
    ``filter_by="confident_learning"``, the off-diagonal of the confident joint, which is :func:`confident_other`
    with the thresholds of these probabilities (cleanlab's default, pruning by the estimated noise rate, flags more:
    precision 0.71 instead of 0.80 on the slow generated folders)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    g = np.asarray(given, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    p = p / p.sum(axis=1, keepdims=True)
    quality = get_label_quality_scores(g, p, method="self_confidence")
    issues = find_label_issues(g, p, filter_by="confident_learning", n_jobs=1)
    return np.asarray(quality, dtype=np.float64), np.asarray(issues, dtype=bool)


@dataclass(frozen=True)
class SplitScores:
    """One split's suspicion before the splits are merged; every array is ``(N,)`` in the split's order.

    ``raw`` is the split's own score (higher = more suspect); ``flag_rule`` names the rule that flagged an image
    (:data:`CONFIDENT_OTHER`, :data:`EARLY_DYNAMICS`, :data:`CLEANLAB`), ``""`` for the others; ``ranked_by``
    says which signals ``raw`` combines.
    """

    split: str
    raw: np.ndarray
    p_given: np.ndarray  # under the reference model (NaN: none)
    early_p_given: np.ndarray  # mean over the early window (NaN: not recorded)
    oof_p_given: np.ndarray  # out of fold (NaN: no folds)
    preferred: np.ndarray  # the class the reference model prefers (-1: unknown)
    flag_rule: np.ndarray
    ranked_by: str


@dataclass(frozen=True)
class Suspects:
    """Every sample of both splits, most suspect first (``split[i]``, position ``where[i]`` in that split).

    ``score`` is the suspicion quantile within the sample's split (1 = most suspect), which puts the two
    splits' different scores on one scale; the other arrays are the :class:`SplitScores` fields, row by row.
    """

    split: np.ndarray
    where: np.ndarray
    score: np.ndarray
    raw: np.ndarray
    p_given: np.ndarray
    early_p_given: np.ndarray
    oof_p_given: np.ndarray
    preferred: np.ndarray
    flag_rule: np.ndarray
    ranked_by: np.ndarray

    @property
    def flagged(self) -> np.ndarray:
        return self.flag_rule != ""

    def top(self, split: str, k: int) -> np.ndarray:
        """Positions (in ``split``) of its ``k`` most suspect samples, most suspect first."""
        return self.where[self.split == split][:k]


def merge_splits(parts: Sequence[SplitScores], one_scale: bool = False) -> Suspects:
    """One list over the splits: each split's ``raw`` score becomes its quantile (:func:`quantile`; with
    ``one_scale`` the scores are comparable already and are the ``score``), then most suspect first by that, the
    split's own score, val before train, and position."""
    if not parts:
        raise ValueError("no split to rank: give train or val scores")
    n = [len(p.raw) for p in parts]
    cat = {
        name: np.concatenate([np.asarray(getattr(p, name)) for p in parts])
        for name in ("raw", "p_given", "early_p_given", "oof_p_given", "preferred", "flag_rule")
    }
    split = np.concatenate([np.full(k, p.split) for p, k in zip(parts, n, strict=True)])
    where = np.concatenate([np.arange(k) for k in n])
    score = np.concatenate(
        [np.asarray(p.raw, dtype=np.float64) if one_scale else quantile(p.raw) for p in parts]
    )
    ranked_by = np.concatenate([np.full(k, p.ranked_by) for p, k in zip(parts, n, strict=True)])
    order = np.lexsort((where, split == "train", -cat["raw"], -score))
    return Suspects(split=split[order], where=where[order], score=score[order], ranked_by=ranked_by[order],
                    **{name: v[order] for name, v in cat.items()})  # fmt: skip
