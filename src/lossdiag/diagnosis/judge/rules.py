"""What kind of run the statistics show: an ordered table of rules, the first that holds decides.

Like Lightning's ``EarlyStopping`` walks its stopping criteria, :func:`decide` walks :data:`RULES` in order;
each rule has a name (:class:`Rule`, what ``diagnosis.md`` explains in words: :mod:`lossdiag.render.reasons`)
and the kind of run it decides (:class:`Kind`). A new rule is one row of :data:`RULES` plus its words.

The rules, in order (thresholds in :mod:`lossdiag.diagnosis.stats`):

1. ``not_learning`` when the one-sided 95% Wilson lower bound of the best val accuracy is <= the majority-class
   rate + ``MAJORITY_MARGIN`` (``best_at_chance``; a val set of one class always lands here); or the lowest val
   loss is >= the untrained model's (``never_fell``); or the same bound of the *last* accuracy is at chance and
   its upper bound below the best's lower bound: what it learned is lost (``lost_at_end``); or the last val loss
   is ten times where it started (``diverged``).
2. ``partial_collapse``: at the last epoch some classes of the val set have recall 0 beyond chance while others
   are learned (``classes_collapsed``; see ``collapsed_classes``).
3. ``single_evaluation``: one recorded epoch or one evaluated model (``src.evaluate``): no history to judge
   (``one_model``).
4. ``no_rise``: the lowest loss at the last epoch (``lowest_at_end``), or a relative rise <= ``RISE_THRESHOLD``
   (``within_threshold``).
5. ``inconclusive``: the rise is above the threshold but its 95% interval includes 0 (``interval_includes_zero``).

The rise these rules read is the smoothed one: from the lowest to the last value of a centred moving average of
the per-epoch mean val loss over ``SMOOTHING_WINDOW`` epochs, with its own paired-bootstrap interval (a minimum of
one noisy epoch would overstate it). The single-epoch rise is reported beside it.
6. ``overfitting``: the rise is significant and accuracy fell significantly (``accuracy_fell``).
7. ``not_learning`` when the minimum is at the first recorded epoch and no untrained loss shows it ever fell
   (``no_fall_seen``).
8. ``phenomenon``: val loss fell to a minimum, then rose significantly while accuracy did not fall significantly
   (``rose_while_accuracy_held``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import StrEnum
from typing import NamedTuple

from lossdiag.diagnosis.judge.stats import MAJORITY_MARGIN, RISE_THRESHOLD, RunFacts, RunStats
from lossdiag.functional.bootstrap import wilson_lower


class Kind(StrEnum):
    """The kinds of run (``diagnosis.json["verdict"]``)."""

    PHENOMENON = "phenomenon"
    OVERFITTING = "overfitting"
    NO_RISE = "no_rise"
    INCONCLUSIVE = "inconclusive"
    NOT_LEARNING = "not_learning"
    PARTIAL_COLLAPSE = "partial_collapse"
    SINGLE_EVALUATION = "single_evaluation"


class Rule(StrEnum):
    """Why a kind was decided: one member per row of :data:`RULES`."""

    BEST_AT_CHANCE = "best_at_chance"
    NEVER_FELL = "never_fell"
    LOST_AT_END = "lost_at_end"
    DIVERGED = "diverged"
    CLASSES_COLLAPSED = "classes_collapsed"
    ONE_MODEL = "one_model"
    LOWEST_AT_END = "lowest_at_end"
    WITHIN_THRESHOLD = "within_threshold"
    INTERVAL_INCLUDES_ZERO = "interval_includes_zero"
    ACCURACY_FELL = "accuracy_fell"
    NO_FALL_SEEN = "no_fall_seen"
    ROSE_WHILE_ACCURACY_HELD = "rose_while_accuracy_held"


class Case(NamedTuple):
    """What a rule looks at: the statistics and the facts behind them."""

    stats: RunStats
    facts: RunFacts


class RuleRow(NamedTuple):
    rule: Rule
    kind: Kind
    holds: Callable[[Case], bool]


def _at_chance(accuracy_lower: float, s: RunStats) -> bool:
    return accuracy_lower <= s.majority_rate + MAJORITY_MARGIN


def _lost(c: Case) -> bool:
    """The last accuracy is at chance and below the best beyond chance (its Wilson upper bound under the best's
    lower bound): 16 of 30 right at best and 14 at the end is noise, not a model that lost what it learned."""
    s = c.stats
    last_upper = 1 - wilson_lower(1 - s.acc_last, s.n_samples)
    return _at_chance(s.acc_last_lower, s) and last_upper < s.acc_best_lower


DIVERGED_FACTOR = 10.0  # a last val loss this many times the untrained model's: the training blew up


def start_loss(s: RunStats, f: RunFacts) -> float:
    """Where the val loss started: the untrained model's, else that of a uniform guess, ln(classes) (the first
    recorded epoch may be well trained already)."""
    return s.initial_loss if s.initial_loss is not None else math.log(max(2, f.n_classes_present))


def _diverged(c: Case) -> bool:
    """The optimisation blew up: the last mean val loss is :data:`DIVERGED_FACTOR` times where it started (the
    confident mistakes of a loss that rises while accuracy holds stay far below: the mean would need every wrong
    sample at ten times the untrained loss divided by the error rate)."""
    return bool(c.stats.history) and c.stats.last_loss > DIVERGED_FACTOR * start_loss(c.stats, c.facts)


RULES: tuple[RuleRow, ...] = (
    RuleRow(Rule.BEST_AT_CHANCE, Kind.NOT_LEARNING, lambda c: _at_chance(c.stats.acc_best_lower, c.stats)),
    RuleRow(
        Rule.NEVER_FELL,
        Kind.NOT_LEARNING,
        lambda c: c.stats.initial_loss is not None and c.stats.min_loss >= c.stats.initial_loss,
    ),
    RuleRow(Rule.LOST_AT_END, Kind.NOT_LEARNING, _lost),
    RuleRow(Rule.DIVERGED, Kind.NOT_LEARNING, _diverged),
    RuleRow(Rule.CLASSES_COLLAPSED, Kind.PARTIAL_COLLAPSE, lambda c: bool(c.stats.collapsed_classes)),
    RuleRow(Rule.ONE_MODEL, Kind.SINGLE_EVALUATION, lambda c: not c.stats.history),
    RuleRow(Rule.LOWEST_AT_END, Kind.NO_RISE, lambda c: c.facts.min_is_last),
    RuleRow(Rule.WITHIN_THRESHOLD, Kind.NO_RISE, lambda c: (c.stats.rise_rel_smoothed or 0.0) <= RISE_THRESHOLD),
    RuleRow(
        Rule.INTERVAL_INCLUDES_ZERO,
        Kind.INCONCLUSIVE,
        lambda c: c.stats.rise_ci_smoothed is not None and c.stats.rise_ci_smoothed[0] <= 0,
    ),
    RuleRow(
        Rule.ACCURACY_FELL,
        Kind.OVERFITTING,
        lambda c: c.stats.acc_change_ci is not None and c.stats.acc_change_ci[1] < 0,
    ),
    RuleRow(
        Rule.NO_FALL_SEEN, Kind.NOT_LEARNING, lambda c: c.facts.min_is_first and c.stats.initial_loss is None
    ),
    RuleRow(Rule.ROSE_WHILE_ACCURACY_HELD, Kind.PHENOMENON, lambda c: True),
)

# the kinds in the order their first rule is checked
KIND_ORDER: tuple[Kind, ...] = tuple(dict.fromkeys(row.kind for row in RULES))


def decide(case: Case) -> RuleRow:
    """The first row of :data:`RULES` that holds for ``case`` (the last one always does)."""
    return next(row for row in RULES if row.holds(case))
