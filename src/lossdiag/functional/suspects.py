"""Scores that point at likely label errors, from per-sample training dynamics (pure numpy/torch).

A mislabeled image is one the model keeps getting "wrong" with respect to its given label: the given-label
probability stays low and the given-label logit stays below another class's. Recording, for every training
sample, ``p_given`` and ``margin`` from the logits the training step already computes (no extra forward
pass) gives ``(E, N)`` arrays over ``E`` epochs, from which the published scores follow:

* Area Under the Margin (Pleiss et al. 2020): the mean margin over epochs; low = suspect.
* Dataset Cartography (Swayamdipta et al. 2020): confidence = mean ``p_given``, variability = its std;
  low confidence (with low variability: "hard to learn") = suspect.
* Forgetting events (Toneva et al. 2019): how often a sample goes from correct to incorrect; a sample never
  learned counts as infinitely often forgotten.
* For validation images, which are never trained on: ``p_given`` under the best model; low = suspect.

:func:`suspect_scores` turns all of them into one convention, higher = more suspect, :func:`rank` orders
samples by it and :func:`quantile` merges the train and val lists. Every function takes numpy arrays or
tensors of any float dtype (float16 included) and computes in float64.

Which to use (``benchmarks/suspects_prototype.py``: ShallowNet, 600 generated images, 8% moved, 3 seeds):
train images by AUM over all epochs (:data:`TRAIN_SCORE`), the best or tied-best single-training score in
every setting measured (precision@k 0.38-0.56; mean loss 0.38-0.50; forgetting and "hard to learn" much
lower), val images by ``p_given`` under the best model. No single-training score reaches cleanlab on
out-of-fold probabilities for the train images (0.49-0.70): ShallowNet memorizes a moved training image
about as fast as it learns the classes, so the training-step logits lack what held-out ones show. Val
images are held out, so their score is as good as cross-fitting's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lossdiag.functional.softmax import class_softmax

Array = np.ndarray | torch.Tensor | Sequence[float] | Sequence[Sequence[float]]

METHODS = ("aum", "aum_late", "confidence", "hard_to_learn", "forgetting", "loss")


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


def mean_loss(p_given: Array, start: int | float = 0, eps: float = 1e-12) -> np.ndarray:
    """Mean per-epoch cross-entropy ``-log p_given``: what a loss-based "top losses" list ranks by."""
    p = _epochs(p_given, "p_given")
    return -np.log(np.clip(p[_from(start, len(p)) :], eps, 1.0)).mean(axis=0)


def correct_from_margin(margin: Array) -> np.ndarray:
    """``(E, N)`` bool: the given label is the argmax (a tie counts as not correct)."""
    return _epochs(margin, "margin") > 0


def forgetting_events(correct: Array) -> np.ndarray:
    """Toneva et al.'s forgetting count: correct -> incorrect transitions per sample, ``inf`` if never learned.

    A sample never predicted correctly has no event to count, yet it is the most suspect of all, hence
    ``inf`` (their convention). The first epoch has no predecessor, so it is never a forgetting event.
    """
    c = _epochs(correct, "correct") > 0
    events = (c[:-1] & ~c[1:]).sum(axis=0).astype(np.float64)
    events[~c.any(axis=0)] = np.inf
    return events


def first_learned(correct: Array) -> np.ndarray:
    """Epoch after which a sample stays correct to the end (``E`` if wrong at the last epoch)."""
    c = _epochs(correct, "correct") > 0
    wrong = ~c
    # last wrong epoch + 1; samples never wrong were learned from the start
    last_wrong = len(c) - 1 - np.argmax(wrong[::-1], axis=0)
    return np.where(wrong.any(axis=0), last_wrong + 1, 0)


@dataclass(frozen=True)
class ValScores:
    """Validation images under one model (the best one): ``p_given`` (low = suspect) and the class it prefers."""

    p_given: np.ndarray
    margin: np.ndarray
    preferred: np.ndarray

    @property
    def suspect(self) -> np.ndarray:
        """Higher = more suspect: ``1 - p_given``."""
        return 1.0 - self.p_given


def val_scores(logits: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> ValScores:
    """Scores for images the model never trained on, from its logits: one epoch, so no dynamics."""
    logits_t, target_t = torch.as_tensor(logits), torch.as_tensor(target)
    p_given, margin = given_label_dynamics(logits_t, target_t)
    return ValScores(
        p_given=p_given.cpu().double().numpy(),
        margin=margin.cpu().double().numpy(),
        preferred=logits_t.detach().float().argmax(dim=1).cpu().numpy(),
    )


def suspect_scores(
    p_given: Array, margin: Array, start: int | float = 0, late: float = 0.5
) -> dict[str, np.ndarray]:
    """Every method's ``(N,)`` score from ``(E, N)`` dynamics, all oriented so that HIGHER = more suspect.

    * ``loss``: mean ``-log p_given``. * ``aum``: minus the mean margin over epochs ``start:``.
    * ``aum_late``: minus the mean margin over the last ``late`` fraction of the epochs.
    * ``confidence``: ``1 -`` mean ``p_given``. * ``hard_to_learn``: ``1 -`` confidence ``-`` variability
      (low confidence and low variability, cartography's "hard to learn" corner).
    * ``forgetting``: forgetting events, ``inf`` when never learned (many ties: rank with a tie-break).
    """
    m = _epochs(margin, "margin")
    p = _epochs(p_given, "p_given")
    if m.shape != p.shape:
        raise ValueError(f"p_given {p.shape} and margin {m.shape} must have the same (epochs, samples) shape")
    confidence, variability = cartography(p, start)
    return {
        "aum": -aum(m, start),
        "aum_late": -aum(m, 1.0 - late if late < 1.0 else 0),
        "confidence": 1.0 - confidence,
        "hard_to_learn": 1.0 - confidence - variability,
        "forgetting": forgetting_events(correct_from_margin(m)),
        "loss": mean_loss(p, start),
    }


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


def quantile(score: Array, tiebreak: Array | None = None) -> np.ndarray:
    """Each sample's suspicion quantile in ``(0, 1]`` (1 = most suspect), in the order of :func:`rank`.

    Scores of different scales (train AUM, val ``1 - p_given``) become comparable this way, so the two
    splits can be merged into one list; that assumes both hold about the same fraction of label errors,
    as a stratified split of randomly placed errors does.
    """
    order = rank(score, tiebreak)
    q = np.empty(len(order))
    q[order] = 1.0 - np.arange(len(order)) / len(order)
    return q


# -- one ranked list over both splits ----------------------------------------------------------------
TRAIN_SCORE = "aum"  # minus the area under the margin over all epochs (Pleiss et al. 2020)
VAL_SCORE = "1-p_given"  # 1 - p(given label) under the best model (the val images were never trained on)


@dataclass(frozen=True)
class Suspects:
    """Every sample of both splits, most suspect first (``split[i]``, position ``where[i]`` in that split).

    ``score`` is the suspicion quantile within the sample's split (1 = most suspect), which puts the two
    splits' different scores on one scale; ``raw`` is the split's own score (train: minus the AUM, val:
    ``1 - p_given``); ``preferred`` the class the model prefers; ``flagged`` marks likely label errors by a
    rule a reader can check: train, the given-label logit was on average below another class's (AUM < 0);
    val, the best model prefers another class.
    """

    split: np.ndarray
    where: np.ndarray
    score: np.ndarray
    raw: np.ndarray
    p_given: np.ndarray
    preferred: np.ndarray
    flagged: np.ndarray

    def top(self, split: str, k: int) -> np.ndarray:
        """Positions (in ``split``) of its ``k`` most suspect samples, most suspect first."""
        return self.where[self.split == split][:k]


def rank_suspects(
    train_margin: Array | None = None,
    train_p_given: Array | None = None,
    train_preferred: Array | None = None,
    val_p_given: Array | None = None,
    val_preferred: Array | None = None,
    val_given: Array | None = None,
) -> Suspects:
    """Rank train samples by :data:`TRAIN_SCORE` from their ``(E, Nt)`` margins and val samples by
    :data:`VAL_SCORE`, and merge both into one list (:func:`quantile`). ``train_p_given`` / ``*_preferred``
    are one model's (N,) values shown beside the score. Either split may be absent."""
    parts: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    if train_margin is not None:
        raw = -aum(train_margin)
        n = raw.shape[0]
        p = _vector(train_p_given, "train_p_given") if train_p_given is not None else np.full(n, np.nan)
        pref = np.asarray(train_preferred, dtype=np.int64) if train_preferred is not None else np.full(n, -1)
        parts.append(("train", raw, p, pref, raw > 0, quantile(raw)))
    if val_p_given is not None:
        p = _vector(val_p_given, "val_p_given")
        raw = 1.0 - p
        pref = np.asarray(val_preferred, dtype=np.int64)
        flagged = pref != np.asarray(val_given, dtype=np.int64)
        parts.append(("val", raw, p, pref, flagged, quantile(raw)))
    if not parts:
        raise ValueError("no split to rank: give train margins or val probabilities")
    split = np.concatenate([np.full(len(raw), name) for name, raw, *_ in parts])
    where = np.concatenate([np.arange(len(raw)) for _, raw, *_ in parts])
    raw = np.concatenate([r for _, r, *_ in parts])
    p_given = np.concatenate([p for _, _, p, *_ in parts])
    preferred = np.concatenate([pref for *_, pref, _, _ in parts])
    flagged = np.concatenate([f for *_, f, _ in parts])
    score = np.concatenate([q for *_, q in parts])
    # most suspect first: merged quantile, then the split's own score, then val before train, then position
    order = np.lexsort((where, split == "train", -raw, -score))
    return Suspects(split[order], where[order], score[order], raw[order], p_given[order], preferred[order],
                    flagged[order])  # fmt: skip
