"""Why it rose: the rise split exactly over disjoint groups of val samples, and the cause those groups name.

Every val sample falls in exactly one group, checked in this order (:data:`GROUPS`):

- ``suspected_label_error``: flagged as a likely label error (:func:`~.suspects.val_label_suspects`);
- ``collapsed_class``: its given class is one of the collapsed classes (recall 0 beyond chance at the end);
- ``wrong_both``, ``newly_wrong``, ``newly_right``, ``right_both``: by whether it was predicted right at the
  min-loss epoch and at the last epoch.

A sample's contribution to the rise is ``(loss_last - loss_min) / N``, so the groups' contributions add up to the
rise of the mean val cross-entropy exactly; the same split of the final mean loss uses ``loss_last / N``.

The cause is the first row of :data:`CAUSES` whose group carries at least :data:`CAUSE_SHARE` of the rise (else
the row whose group carries the most), and ``none`` without a significant rise.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

import numpy as np

GROUPS = ("suspected_label_error", "collapsed_class", "wrong_both", "newly_wrong", "newly_right", "right_both")
CAUSE_SHARE = 0.5  # a group that carries at least this share of the rise names the cause


class Cause(StrEnum):
    """Why the val loss rose (``diagnosis.json["cause"]``)."""

    LABEL_ERRORS = "label_errors"
    COLLAPSED_CLASSES = "collapsed_classes"
    CONFIDENT_MISTAKES = "confident_mistakes"  # the same samples wrong all along, growing more confident
    NEW_MISTAKES = "new_mistakes"  # samples that became wrong
    LESS_CONFIDENT_CORRECT = "less_confident_correct"  # right all along, but less sure of it
    NONE = "none"  # no significant rise


class CauseRow(NamedTuple):
    cause: Cause
    group: str


# checked in order: the first whose group carries at least CAUSE_SHARE of the rise names the cause
CAUSES: tuple[CauseRow, ...] = (
    CauseRow(Cause.COLLAPSED_CLASSES, "collapsed_class"),
    CauseRow(Cause.LABEL_ERRORS, "suspected_label_error"),
    CauseRow(Cause.CONFIDENT_MISTAKES, "wrong_both"),
    CauseRow(Cause.NEW_MISTAKES, "newly_wrong"),
    CauseRow(Cause.LESS_CONFIDENT_CORRECT, "right_both"),
)


def sample_groups(
    right_at_min: np.ndarray, right_last: np.ndarray, in_collapsed_class: np.ndarray, suspected: np.ndarray
) -> np.ndarray:
    """Each sample's group, as an index into :data:`GROUPS` (all arguments bool (N,))."""
    by_correctness = np.where(right_at_min, np.where(right_last, 5, 3), np.where(right_last, 4, 2))
    return np.where(suspected, 0, np.where(in_collapsed_class, 1, by_correctness))


def split_by_group(contribution: np.ndarray, groups: np.ndarray, key: str) -> dict[str, dict[str, float]]:
    """``{group: {"n", key, "share"}}``: each group's sum of ``contribution`` (per sample, float64) and its share of
    the total (``None`` when the total is 0)."""
    contribution = np.asarray(contribution, dtype=np.float64)
    total = float(contribution.sum())
    sums = np.bincount(groups, weights=contribution, minlength=len(GROUPS))
    counts = np.bincount(groups, minlength=len(GROUPS))
    return {
        name: {"n": int(counts[g]), key: float(sums[g]), "share": float(sums[g] / total) if total else None}
        for g, name in enumerate(GROUPS)
    }


def decide_cause(rise_by_group: dict[str, dict[str, float]], significant_rise: bool) -> Cause:
    """The cause :data:`CAUSES` names for a rise split by group (``none`` without a significant rise)."""
    if not significant_rise:
        return Cause.NONE
    shares = {row.cause: rise_by_group[row.group]["share"] or 0.0 for row in CAUSES}
    first = next((cause for cause, share in shares.items() if share >= CAUSE_SHARE), None)
    return first if first is not None else max(shares, key=lambda cause: shares[cause])
