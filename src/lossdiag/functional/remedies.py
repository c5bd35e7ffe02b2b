"""Which remedy for the rising val loss to recommend, from a remedies sweep's numbers (pure; no files).

The rule (``python -m src.report`` on ``experiment=remedies``): among the remedies whose mean last val accuracy
is within :data:`ACC_WINDOW` (1 point) of cross-entropy's, the one with the lowest mean last val
cross-entropy, if that is lower than cross-entropy's own; otherwise none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

ACC_WINDOW = 0.01  # "within 1 point of cross-entropy's accuracy" (accuracy as a fraction)


@dataclass(frozen=True)
class RemedyResult:
    """One group of a remedies sweep: its label (its overrides) and mean (std) over its seeds."""

    label: str
    n: int
    last_acc: float
    last_acc_std: float
    last_ce: float
    last_ce_std: float
    rise_ratio: float  # mean over seeds of last val CE / min val CE
    best_acc: float = math.nan
    min_ce: float = math.nan
    last_ece: float = math.nan


@dataclass(frozen=True)
class Recommendation:
    """``choice`` is ``None`` when no remedy beats cross-entropy's last val CE at its accuracy."""

    reference: RemedyResult
    choice: RemedyResult | None
    eligible: tuple[str, ...]  # labels of the remedies within the accuracy window (reference excluded)


def within_window(result: RemedyResult, reference: RemedyResult, window: float = ACC_WINDOW) -> bool:
    """Mean last val accuracy at least ``reference``'s minus ``window`` (a tiny tolerance for float noise)."""
    return math.isfinite(result.last_acc) and result.last_acc >= reference.last_acc - window - 1e-9


def recommend(results: Sequence[RemedyResult], reference: str, window: float = ACC_WINDOW) -> Recommendation:
    """Apply the rule above; ``reference`` is the label of the cross-entropy group (must be in ``results``)."""
    by_label = {r.label: r for r in results}
    if reference not in by_label:
        raise ValueError(f"no group {reference!r} among {', '.join(by_label)}")
    ref = by_label[reference]
    eligible = [
        r
        for r in results
        if r.label != reference and within_window(r, ref, window) and math.isfinite(r.last_ce)
    ]
    best = min(eligible, key=lambda r: r.last_ce, default=None)
    choice = best if best is not None and math.isfinite(ref.last_ce) and best.last_ce < ref.last_ce else None
    return Recommendation(ref, choice, tuple(r.label for r in eligible))
