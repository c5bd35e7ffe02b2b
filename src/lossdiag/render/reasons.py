"""The verdict in words: why (the rule, keyed by :class:`~lossdiag.diagnosis.judge.rules.Rule`), what carried the
rise (the cause, keyed by :class:`~lossdiag.diagnosis.judge.causes.Cause`) and what to try (from the cause; from
the kind of run when nothing rose).

A new rule in :data:`lossdiag.diagnosis.judge.rules.RULES` gets one entry in :data:`REASONS`; a new cause one in
:data:`CAUSE_WORDS` and :data:`CAUSE_ADVICE`. Advice names only files that exist (:class:`Context`) and, in a
project of your own (``Context.config_keys`` false), no lossdiag config keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from lossdiag.diagnosis.judge.causes import CAUSE_SHARE, Cause
from lossdiag.diagnosis.judge.rules import DIVERGED_FACTOR, Rule, start_loss
from lossdiag.diagnosis.judge.stats import MAJORITY_MARGIN, RISE_THRESHOLD
from lossdiag.diagnosis.judge.verdict import Verdict
from lossdiag.render.text import accuracy_move, interval_pct, loss_text, pct, plural, signed

# the checkpoints of the default callbacks (conf/callbacks/default.yaml) the advice may name, when they exist
MIN_LOSS_CKPT = "checkpoints/min_val_loss.ckpt"
BEST_ACC_CKPT = "checkpoints/best_val_acc.ckpt"
BARELY_MOVED = 0.1  # a lowest val loss within this share of the untrained (or first) one: the loss barely moved


@dataclass(frozen=True)
class Context:
    """What the advice may point to: checkpoint files that exist (path in the run folder -> epoch of its weights),
    whether it may name lossdiag config keys (not in a project of your own), the suspects list if written, and
    the learning rate the run trained at (``lr``; ``lr_auto``: chosen by ``optimizer.lr=auto``'s range test)."""

    checkpoints: Mapping[str, int] = field(default_factory=dict)
    config_keys: bool = True
    suspects_file: str | None = None
    lr: float | None = None
    lr_auto: bool = False


def _key(ctx: Context, with_key: str, without: str) -> str:
    """``with_key`` (naming a config key) under ``python -m src.train``, else the same advice in plain words."""
    return with_key if ctx.config_keys else without


def checkpoint_words(ctx: Context, path: str, what: str) -> str:
    """`` `checkpoints/x.ckpt` (epoch 7, <what>)`` when that file exists, else ``""``."""
    return f"`{path}` (epoch {ctx.checkpoints[path]}, {what})" if path in ctx.checkpoints else ""


# -- why: the rule that decided the kind ---------------------------------------------------------------
def _rose(v: Verdict) -> str:
    s = v.stats
    assert s.rise_rel_smoothed is not None and s.rise_ci_smoothed is not None and s.rise_rel is not None
    if not (math.isfinite(s.rise_rel_smoothed) and all(map(math.isfinite, s.rise_ci_smoothed))):
        by = "by an unbounded share (its minimum is 0: every per-sample loss underflowed to 0)"
    else:
        by = interval_pct(s.rise_rel_smoothed, s.rise_ci_smoothed)
    single = f"+{pct(s.rise_rel)}" if math.isfinite(s.rise_rel) else "unbounded"
    return (
        f"rose {by} from its lowest {s.smoothing_window}-epoch average ({loss_text(s.min_loss_smoothed)} around "
        f"epoch {s.min_epoch_smoothed}) to its last ({loss_text(s.last_loss_smoothed)}); from the single lowest "
        f"epoch ({loss_text(s.min_loss)} at epoch {s.min_epoch}) to the last ({loss_text(s.last_loss)} at epoch "
        f"{s.last_epoch}) it is {single}"
    )


def accuracy_words(v: Verdict) -> str:
    """How val accuracy moved from the min-loss epoch to the last, with the flips behind a net change."""
    s = v.stats
    assert s.acc_change is not None and s.acc_change_ci is not None and s.acc_flips is not None
    flips = s.acc_flips
    moved = f"{plural(flips['to_wrong'], 'sample')} became wrong, {flips['to_right']} became right"
    net = accuracy_move(s.acc_at_min, s.acc_last).replace("was unchanged", "was net unchanged")
    return (
        f"val accuracy {net} ({moved}; change {signed(s.acc_change)}, 95% CI {signed(s.acc_change_ci[0])} to "
        f"{signed(s.acc_change_ci[1])})"
    )


def _best_at_chance(v: Verdict) -> str:
    s = v.stats
    best = f"the best val accuracy {s.acc_best:.3f} (epoch {s.acc_best_epoch})" if s.history else f"the accuracy {s.acc_best:.3f}"
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
    Rule.DIVERGED: lambda v: (
        f"the training diverged: the last val loss {loss_text(v.stats.last_loss)} (epoch {v.stats.last_epoch}) is "
        f"more than {DIVERGED_FACTOR:g} times where it started ({loss_text(start_loss(v.stats, v.facts))}), whatever the accuracy"
    ),
    Rule.CLASSES_COLLAPSED: _collapsed,
    Rule.ONE_MODEL: lambda v: "one model, no history, so there is no rise to judge",
    Rule.LOWEST_AT_END: lambda v: (
        f"val loss is lowest at the end ({loss_text(v.stats.last_loss_smoothed)} over the last epochs, "
        f"{loss_text(v.stats.last_loss)} at epoch {v.stats.last_epoch}): it has not risen"
    ),
    Rule.WITHIN_THRESHOLD: lambda v: (
        f"val loss changed by {pct(v.stats.rise_rel_smoothed or 0.0)} from its lowest "
        f"{v.stats.smoothing_window}-epoch average {loss_text(v.stats.min_loss_smoothed)} (around epoch "
        f"{v.stats.min_epoch_smoothed}) to its last {loss_text(v.stats.last_loss_smoothed)}, within the "
        f"{pct(RISE_THRESHOLD)} threshold"
    ),
    Rule.INTERVAL_INCLUDES_ZERO: lambda v: (
        f"val loss {_rose(v)}, but with {v.stats.n_samples} val samples that interval includes no rise"
    ),
    Rule.ACCURACY_FELL: lambda v: (
        f"val loss {_rose(v)}, and {accuracy_words(v)}: the model got worse on val, not just more confident"
    ),
    Rule.NO_FALL_SEEN: lambda v: (
        f"val loss was lowest at the first recorded epochs and then {_rose(v)}, and no untrained loss is given "
        "to show it ever fell"
    ),
    Rule.ROSE_WHILE_ACCURACY_HELD: lambda v: f"val loss {_rose(v)}, while {accuracy_words(v)}",
}


def reason(v: Verdict) -> str:
    """The rule that decided the verdict, in words with the run's numbers."""
    return REASONS[v.rule](v)


# -- what carried the rise -----------------------------------------------------------------------------
def _group(v: Verdict, name: str) -> tuple[int, float]:
    assert v.rise_by_group is not None
    g = v.rise_by_group[name]
    return g["n"], g["share"] or 0.0


def _others_fell(v: Verdict, name: str) -> str:
    """``"; the others' loss fell"`` when the other samples' contributions add up to a fall."""
    _, share = _group(v, name)
    return "; the other samples' loss fell" if share > 1 else ""


CAUSE_WORDS: dict[Cause, Callable[[Verdict], str]] = {
    Cause.LABEL_ERRORS: lambda v: (
        f"{plural(_group(v, 'suspected_label_error')[0], 'val sample')} that look mislabelled carry "
        f"{pct(_group(v, 'suspected_label_error')[1])} of the rise{_others_fell(v, 'suspected_label_error')}"
    ),
    Cause.COLLAPSED_CLASSES: lambda v: (
        f"the {plural(_group(v, 'collapsed_class')[0], 'val sample')} of the collapsed "
        f"{'class' if len(v.stats.collapsed_classes) == 1 else 'classes'} {', '.join(v.stats.collapsed_classes)} carry "
        f"{pct(_group(v, 'collapsed_class')[1])} of the rise and "
        f"{pct(v.final_loss_by_group['collapsed_class']['share'] or 0.0)} of the final loss"
    ),
    Cause.CONFIDENT_MISTAKES: lambda v: (
        f"{plural(_group(v, 'wrong_both')[0], 'val sample')} wrong at epoch {v.stats.min_epoch} and still wrong at "
        f"the end carry {pct(_group(v, 'wrong_both')[1])} of the rise{_others_fell(v, 'wrong_both')}: the same "
        "mistakes grew more confident"
    ),
    Cause.NEW_MISTAKES: lambda v: (
        f"{plural(_group(v, 'newly_wrong')[0], 'val sample')} right at epoch {v.stats.min_epoch} but wrong at the "
        f"end carry {pct(_group(v, 'newly_wrong')[1])} of the rise{_others_fell(v, 'newly_wrong')}"
    ),
    Cause.LESS_CONFIDENT_CORRECT: lambda v: (
        f"{plural(_group(v, 'right_both')[0], 'val sample')} right at epoch {v.stats.min_epoch} and at the end carry "
        f"{pct(_group(v, 'right_both')[1])} of the rise: the model grew less sure of what it gets right"
    ),
}


def cause_words(v: Verdict) -> str:
    """What carried the rise, in one clause with its numbers (``""`` for ``none``)."""
    words = CAUSE_WORDS.get(v.cause)
    return words(v) if words is not None else ""


# -- what to try ---------------------------------------------------------------------------------------
def _stop_earlier(v: Verdict, ctx: Context) -> str:
    ckpt = checkpoint_words(ctx, MIN_LOSS_CKPT, "lowest val loss")
    return f"the model of the lowest val loss, {ckpt}" if ckpt else f"a model from about epoch {v.stats.min_epoch}"


def _label_errors(v: Verdict, ctx: Context) -> str:
    where = f"`{ctx.suspects_file}` ranks every image, most suspect first" if ctx.suspects_file else "`worst.csv` lists the worst val samples"
    return f"Check the labels: {where}; fix or remove the mislabelled ones, then train again."


def _collapse(v: Verdict, ctx: Context) -> str:
    k = v.n_train_above_cap
    if v.objective == "bounded" and k:
        return (
            f"The bounded loss gives zero gradient to the {plural(k, 'training sample')} above its cap, which is how "
            "whole classes get given up: "
            + _key(
                ctx,
                "train with `loss=standard`, or keep more samples under the cap (a larger `loss.k`, a lower `optimizer.lr`).",
                "train with plain cross-entropy, or keep more samples under the cap (a larger cap, a lower learning rate).",
            )
        )
    return "Check these classes' images and labels (folder names, how many training images they have), then try " + _key(
        ctx, "a lower `optimizer.lr`.", "a lower learning rate."
    )


def _confident_mistakes(v: Verdict, ctx: Context) -> str:
    if v.final.temperature_status == "ok" and v.final.scaling_helps:
        probs = f"temperature scaling (T = {v.final.temperature:.2f}) improves them out of sample"
    else:
        probs = "temperature scaling does not improve them out of sample here"
    train = _key(ctx, "label smoothing or focal loss (`remedy=label_smoothing`, `remedy=focal`)", "label smoothing or focal loss")
    return (
        "Which class wins is fine for the other samples: the rise is in how sure the model is of its few mistakes. "
        f"For probabilities you can trust: {probs}; {train} train against it; or use {_stop_earlier(v, ctx)}."
    )


def _new_mistakes(v: Verdict, ctx: Context) -> str:
    regularise = _key(
        ctx, "regularise (`optimizer.weight_decay`, `data.augment=flip_crop`)", "regularise (weight decay, augmentation)"
    )
    return f"Stop earlier, with {_stop_earlier(v, ctx)}, or {regularise}."


def _less_confident(v: Verdict, ctx: Context) -> str:
    decay = _key(ctx, "a decaying learning rate (`scheduler=cosine`)", "a decaying learning rate")
    return f"Try {decay}, or use {_stop_earlier(v, ctx)}."


CAUSE_ADVICE: dict[Cause, Callable[[Verdict, Context], str]] = {
    Cause.LABEL_ERRORS: _label_errors,
    Cause.COLLAPSED_CLASSES: _collapse,
    Cause.CONFIDENT_MISTAKES: _confident_mistakes,
    Cause.NEW_MISTAKES: _new_mistakes,
    Cause.LESS_CONFIDENT_CORRECT: _less_confident,
}


def _lr_change(ctx: Context, factor: float) -> str:
    """How to change the learning rate by ``factor``: "Raise `optimizer.lr` (e.g. 10x: `optimizer.lr=0.5`; ...)".

    A number the run trained at becomes the number to try; one ``optimizer.lr=auto`` chose is named as such (the
    range test reads a short stretch of training loss), and a fixed rate that barely moved the loss is pointed to
    ``auto``, which measures one."""
    verb = "Raise" if factor > 1 else "Lower"
    if not ctx.config_keys:
        to = f", to {ctx.lr * factor:.3g}" if ctx.lr is not None else ""
        return f"{verb} the learning rate (e.g. 10x{to})"
    if ctx.lr is None:
        return f"{verb} `optimizer.lr` (e.g. 10x)"
    to = f"`optimizer.lr={ctx.lr * factor:.3g}`"
    if ctx.lr_auto:
        return f"{verb} `optimizer.lr` from the {ctx.lr:g} `optimizer.lr=auto` chose (e.g. 10x: {to})"
    measure = ", or let `optimizer.lr=auto` measure it" if factor > 1 else ""
    return f"{verb} `optimizer.lr` from {ctx.lr:g} (e.g. 10x: {to}){measure}"


FEW_EPOCHS = 10  # a run this short that barely moved may simply not have trained long enough


def _not_learning(v: Verdict, ctx: Context) -> str:
    """Raise the lr when the loss barely moved; lower it when it diverged or was lost; else check the data."""
    s, f = v.stats, v.facts
    if not s.history:
        return (
            "If this is not the data the model was trained on, check that its class folders are the run's classes "
            "(same names, same labels) and that the images look like the training images."
        )
    start = s.initial_loss if s.initial_loss is not None else f.first_loss
    lr = _key(ctx, "`optimizer.lr`", "the learning rate")
    if v.rule in (Rule.LOST_AT_END, Rule.DIVERGED) or f.max_loss > 2 * start:
        return f"{_lr_change(ctx, 0.1)}: the val loss diverged or swung (its highest epoch mean {loss_text(f.max_loss)}, from {loss_text(start)})."
    if s.min_loss >= (1 - BARELY_MOVED) * start:
        longer = _key(ctx, "`trainer.max_epochs`", "more epochs")
        short = (
            f" With {plural(s.n_epochs, 'epoch')} only, training longer ({longer}) may be all it needs."
            if s.n_epochs < FEW_EPOCHS
            else ""
        )
        return (
            f"{_lr_change(ctx, 10)}: the val loss barely moved ({loss_text(start)} at the start, lowest "
            f"{loss_text(s.min_loss)}).{short}"
        )
    return (
        "Check the labels and folders (one folder per class, the same classes in train and val, several classes in the "
        f"val set), then the learning rate ({lr})."
    )


def _inconclusive(v: Verdict, ctx: Context) -> str:
    n, need = v.stats.n_samples, v.stats.samples_to_settle
    if need is None:
        words = "Use a larger val set or repeat with other seeds before reading anything into the rise."
    else:
        words = (
            f"Use a larger val set (about {need} samples would likely settle a rise this size, {n} now) or repeat "
            "with other seeds before reading anything into the rise."
        )
    # whether or not the rise is settled, flagged label errors that carry most of the loss are worth a look
    flagged = (v.final_loss_by_group or {}).get("suspected_label_error") or {}
    if flagged.get("n") and (flagged.get("share") or 0.0) >= CAUSE_SHARE:
        where = f"`{ctx.suspects_file}`" if ctx.suspects_file else "`worst.csv`"
        words += (
            f" Meanwhile, the {plural(flagged['n'], 'val sample')} that look mislabelled carry {pct(flagged['share'])} "
            f"of the final loss: check them first ({where})."
        )
    return words


KIND_ADVICE: dict[str, Callable[[Verdict, Context], str]] = {
    "not_learning": _not_learning,
    "partial_collapse": _collapse,
    "inconclusive": _inconclusive,
}


def advice(v: Verdict, ctx: Context | None = None) -> str:
    """What to try: from the cause of the rise, or from the kind of run when nothing significant rose."""
    ctx = ctx or Context()
    if v.kind == "not_learning":  # whatever moved, advice about a rise would be beside the point
        return _not_learning(v, ctx)
    words = CAUSE_ADVICE.get(v.cause) or KIND_ADVICE.get(v.kind)
    return words(v, ctx) if words is not None else ""
