"""The verdict's reason and advice in words, keyed by the rule that decided it (:class:`~lossdiag.diagnosis.rules.Rule`).

A new rule in :data:`lossdiag.diagnosis.rules.RULES` gets one entry in :data:`REASONS` (and one in
:data:`ADVICE` when there is something to try).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from lossdiag.diagnosis.judge.rules import Rule
from lossdiag.diagnosis.judge.stats import MAJORITY_MARGIN, RISE_THRESHOLD
from lossdiag.diagnosis.judge.verdict import Verdict
from lossdiag.render.text import accuracy_move, loss_text, pct, signed

ADVICE_NOT_LEARNING = (
    "Lower `optimizer.lr` (e.g. 10x) and check the labels/folders: one folder per class, "
    "the same classes in train and val, several classes in the val set."
)
ADVICE_NOT_LEARNING_ONE_MODEL = (
    "If this is not the data the model was trained on, check that its class folders are the run's classes "
    "(same names, same labels) and that the images look like the training images."
)
ADVICE_COLLAPSE = (
    "Check these classes' images and labels (folder names, how many training images they have), "
    "then try a lower `optimizer.lr`."
)


def _rose(v: Verdict) -> str:
    s = v.stats
    assert s.rise_rel is not None and s.rise_ci is not None
    by = (
        f"{pct(s.rise_rel)} (95% CI {pct(s.rise_ci[0])} to {pct(s.rise_ci[1])})"
        if math.isfinite(s.rise_rel) and all(map(math.isfinite, s.rise_ci))
        else "by an unbounded share (its minimum is 0: every per-sample loss underflowed to 0)"
    )
    return (
        f"rose {by} from {loss_text(s.min_loss)} at epoch {s.min_epoch} to {loss_text(s.last_loss)} "
        f"at epoch {s.last_epoch}"
    )


def _accuracy(v: Verdict) -> str:
    s = v.stats
    assert s.acc_change is not None and s.acc_change_ci is not None
    return (
        f"val accuracy {accuracy_move(s.acc_at_min, s.acc_last)} (change {signed(s.acc_change)}, "
        f"95% CI {signed(s.acc_change_ci[0])} to {signed(s.acc_change_ci[1])})"
    )


def _best_at_chance(v: Verdict) -> str:
    s = v.stats
    best = (
        f"the best val accuracy {s.acc_best:.3f} (epoch {s.acc_best_epoch})"
        if s.history
        else f"the accuracy {s.acc_best:.3f}"
    )
    text = (
        f"{best} is not above the majority-class rate {s.majority_rate:.3f} by more than {MAJORITY_MARGIN:.2f} "
        f"(its one-sided 95% lower bound is {s.acc_best_lower:.3f} with {s.n_samples} "
        f"{'val ' if s.history else ''}samples)"
    )
    if v.facts.n_classes_present == 1:
        text += "; the val set holds a single class, so accuracy cannot show learning"
    return text


def _lost_at_end(v: Verdict) -> str:
    s = v.stats
    only = f"; it predicts only {v.facts.predicted_last[0]}" if len(v.facts.predicted_last) == 1 else ""
    return (
        f"the final val accuracy {s.acc_last:.3f} (epoch {s.last_epoch}) is not above the majority-class rate "
        f"{s.majority_rate:.3f} by more than {MAJORITY_MARGIN:.2f} (its one-sided 95% lower bound is "
        f"{s.acc_last_lower:.3f}), although it reached {s.acc_best:.3f} at epoch {s.acc_best_epoch}: what it "
        f"learned is lost{only}"
    )


def _collapsed(v: Verdict) -> str:
    s, learned = v.stats, v.facts.n_learned_classes
    k = len(s.collapsed_classes)
    others = "the other class is" if learned == 1 else f"the other {learned} are"
    return (
        f"at epoch {s.last_epoch}, {k} of {v.facts.n_classes_present} classes in the val set "
        f"{'is' if k == 1 else 'are'} never predicted correctly (recall 0: {', '.join(s.collapsed_classes)}) "
        f"while {others} (val accuracy {s.acc_last:.3f})"
    )


REASONS: dict[Rule, Callable[[Verdict], str]] = {
    Rule.BEST_AT_CHANCE: _best_at_chance,
    Rule.NEVER_FELL: lambda v: (
        f"val loss never fell below its untrained value: its lowest mean {v.stats.min_loss:.4f} "
        f"(epoch {v.stats.min_epoch}) is >= the untrained model's {v.stats.initial_loss:.4f}"
    ),
    Rule.LOST_AT_END: _lost_at_end,
    Rule.CLASSES_COLLAPSED: _collapsed,
    Rule.ONE_MODEL: lambda v: "one model, no history, so there is no rise to judge",
    Rule.LOWEST_AT_END: lambda v: (
        f"val loss is lowest at the last epoch ({v.stats.last_loss:.4f} at epoch {v.stats.last_epoch}): "
        "it has not risen"
    ),
    Rule.WITHIN_THRESHOLD: lambda v: (
        f"val loss changed by {pct(v.stats.rise_rel or 0.0)} from its minimum {v.stats.min_loss:.4f} at epoch "
        f"{v.stats.min_epoch} to {v.stats.last_loss:.4f} at epoch {v.stats.last_epoch}, within the "
        f"{pct(RISE_THRESHOLD)} threshold"
    ),
    Rule.INTERVAL_INCLUDES_ZERO: lambda v: (
        f"val loss {_rose(v)}, but with {v.stats.n_samples} val samples that interval includes no rise"
    ),
    Rule.ACCURACY_FELL: lambda v: (
        f"val loss {_rose(v)}, and {_accuracy(v)}: the model got worse on val, not just more confident"
    ),
    Rule.NO_FALL_SEEN: lambda v: (
        f"val loss was lowest at the first recorded epoch (epoch {v.stats.min_epoch}) and then {_rose(v)}, and no "
        "untrained loss is given to show it ever fell"
    ),
    Rule.ROSE_WHILE_ACCURACY_HELD: lambda v: f"val loss {_rose(v)} while {_accuracy(v)}",
}


def _inconclusive(v: Verdict) -> str:
    n, need = v.stats.n_samples, v.stats.samples_to_settle
    if need is None:
        return "Use a larger val set or repeat with other seeds before reading anything into the rise."
    return (
        f"Use a larger val set (about {need} samples would likely settle a rise this size, {n} now) or repeat "
        "with other seeds before reading anything into the rise."
    )


def _phenomenon(v: Verdict) -> str:
    removes = v.scaling_removes
    if removes is not None and removes < 0.5:
        return (
            f"Accuracy held, but temperature scaling removes only {max(removes, 0.0):.0%} of the rise: the class "
            "ranking got worse on some samples. Look at them (worst.csv) and consider the checkpoint of "
            f"epoch {v.stats.min_epoch}."
        )
    return (
        "Nothing is wrong with which class wins: the rise is in confidence. For calibrated probabilities "
        f"use temperature scaling, or the checkpoint of epoch {v.stats.min_epoch}."
    )


def _not_learning(v: Verdict) -> str:
    return ADVICE_NOT_LEARNING if v.history else ADVICE_NOT_LEARNING_ONE_MODEL


ADVICE: dict[Rule, Callable[[Verdict], str]] = {
    Rule.BEST_AT_CHANCE: _not_learning,
    Rule.NEVER_FELL: _not_learning,
    Rule.LOST_AT_END: _not_learning,
    Rule.NO_FALL_SEEN: _not_learning,
    Rule.CLASSES_COLLAPSED: lambda v: ADVICE_COLLAPSE,
    Rule.INTERVAL_INCLUDES_ZERO: _inconclusive,
    Rule.ACCURACY_FELL: lambda v: (
        f"Use the checkpoint of epoch {v.stats.min_epoch} (stop earlier) or regularise: raise "
        "`optimizer.weight_decay`, add data or augmentation."
    ),
    Rule.ROSE_WHILE_ACCURACY_HELD: _phenomenon,
}


def reason(v: Verdict) -> str:
    """The rule that decided the verdict, in words with the run's numbers."""
    return REASONS[v.rule](v)


def advice(v: Verdict) -> str:
    """What to try (``""`` when nothing)."""
    words = ADVICE.get(v.rule)
    return words(v) if words is not None else ""
