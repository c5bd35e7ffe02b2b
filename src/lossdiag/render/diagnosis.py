"""The verdict in words: ``diagnosis.md`` and the console summary, from :class:`Verdict`.

The first sentence names the kind of run (``**Verdict: <kind>.**``) with what it means; the same sentence
opens the console summary, the TensorBoard text ``diagnosis`` and the notebook's conclusion. Nothing here
prints ``nan``: a number that does not exist (no misclassified sample, no history) is said in words.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from lossdiag.diagnosis.judge.rules import KIND_ORDER, Kind
from lossdiag.diagnosis.judge.stats import RISE_THRESHOLD
from lossdiag.diagnosis.judge.verdict import ModelNumbers, Verdict
from lossdiag.render.calibration import (
    bounded_lines,
    calibration_lines,
    number,
    temperature_cell,
    zero_gradient_words,
)
from lossdiag.render.reasons import Context, advice, cause_words, reason
from lossdiag.render.text import loss_text, pct, plural

EXTREME_RATIO = 10.0  # a sample whose loss is this many times the mean is called an extreme outlier

# what each kind means, in one phrase (the first sentence of the verdict)
KIND_MEANING = {
    "phenomenon": "val loss fell, then rose significantly while accuracy held",
    "overfitting": "val loss rose significantly and accuracy fell significantly",
    "no_rise": f"val loss did not rise beyond the {RISE_THRESHOLD:.0%} threshold after its minimum",
    "inconclusive": f"val loss rose beyond the {RISE_THRESHOLD:.0%} threshold, but its confidence interval includes no rise",
    "not_learning": "the model did not learn",
    "partial_collapse": "some classes are never predicted correctly while others are learned",
    "single_evaluation": "one model, no history, so there is no rise to judge",
}


def _p(x: float) -> str:
    return f"{x:.3g}"


def _weights(epoch: int) -> str:
    return "untrained weights" if epoch < 0 else f"weights of epoch {epoch}"


# the page's title, by kind of run
TITLES = {
    "phenomenon": "Why val loss rose while val accuracy held",
    "overfitting": "Val loss rose and val accuracy fell: overfitting",
    "no_rise": "Val loss did not rise",
    "inconclusive": "Val loss rose, but not beyond doubt",
    "not_learning": "The model did not learn",
    "partial_collapse": "Some classes were never learned",
    "single_evaluation": "One model, evaluated",
}


def headline(n: Verdict) -> str:
    """The verdict's first sentence (markdown bold on the kind and the cause): what carried the rise, the rule that
    decided the kind, and, for the phenomenon, what it means."""
    meaning = KIND_MEANING[n.kind]
    if not n.history:
        f = n.final
        on = "the val split" if n.evaluated_on == "val split" else n.evaluated_on
        detail = (
            f"{_weights(n.stats.last_epoch)} on {on}: mean cross-entropy {loss_text(f.loss)}, "
            f"accuracy {f.acc:.3f} over {plural(f.n, 'sample')}"
        )
    else:
        detail = reason(n)
    carried = cause_words(n)
    if carried:
        text = f"**Verdict: {n.kind}, cause: {n.cause}.** {carried[0].upper()}{carried[1:]}. {meaning[0].upper()}{meaning[1:]}: {detail}."
    else:
        text = f"**Verdict: {n.kind}.** {meaning[0].upper()}{meaning[1:]}: {detail}."
    if n.kind == Kind.PHENOMENON:
        text += " The loss is not telling you the model classifies worse."
    return text


def notes(n: Verdict) -> list[str]:
    """Sentences that qualify the verdict: classes with recall 0 too small to count, samples the bounded loss ignores."""
    out = []
    if n.evaluated_on.startswith("every image"):
        out.append(
            f"This checkpoint was evaluated on {n.evaluated_on}: a folder other than its run's own, so every image "
            "counts and there is no train/val split."
        )
    small = [c for c in n.stats.unlearned_classes if c not in n.stats.collapsed_classes]
    if small and n.kind != Kind.NOT_LEARNING:
        one = len(small) == 1
        out.append(
            f"{'Class' if one else 'Classes'} {', '.join(small)} also {'has' if one else 'have'} recall 0 at the end, "
            f"but for a model this accurate that is within chance for {'its' if one else 'their'} number of val "
            "samples, so it does not decide the verdict."
        )
    out += zero_gradient_words(n)
    return out


def rules_line(n: Verdict) -> str:
    if not n.history:
        return (
            "How the verdict is decided for one model: not_learning when its accuracy is not above the "
            f"majority-class rate by more than {n.stats.majority_margin:.2f} (one-sided "
            f"{100 * n.stats.confidence_level:.0f}% lower bound), partial_collapse when some classes have recall 0 "
            "beyond chance while others are learned, else single_evaluation. The rules are in "
            "(docs/diagnosis.md, *Kinds of run*)."
        )
    return (
        f"How the verdict is decided: the first rule that fires, in the order {', '.join(k for k in KIND_ORDER if k != Kind.SINGLE_EVALUATION)} "
        f"(rise threshold {pct(n.stats.rise_threshold)}; majority-class margin {n.stats.majority_margin:.2f}; "
        f"{100 * n.stats.confidence_level:.0f}% intervals from a paired bootstrap over the val samples, "
        f"{n.stats.n_resamples} resamples, seed {n.stats.bootstrap_seed}); the rise is that of a "
        f"{n.stats.smoothing_window}-epoch moving average, whose minimum is picked after looking at the curve, so its "
        "interval is slightly optimistic. The rules are in the docs (docs/diagnosis.md, *Kinds of run*)."
    )


def _where_lines(n: Verdict) -> list[str]:
    f = n.final
    n_correct = f.n - f.n_wrong
    lines = [
        f"- Mean {'val ' if n.history else ''}cross-entropy {loss_text(f.loss)} over {plural(f.n, 'sample')}, "
        f"accuracy {f.acc:.3f}.",
        f"- The worst 1% ({plural(f.top1_n, 'sample')}) {_carry(f.top1_n)} {pct(f.top1_share)} of it; "
        f"the worst 5% ({plural(f.top5_n, 'sample')}) {_carry(f.top5_n)} {pct(f.top5_share)}.",
    ]
    if f.n_wrong == 0:
        lines.append("- No sample is misclassified: all of the loss comes from correct predictions.")
    else:
        lines.append(
            f"- The {plural(f.n_wrong, 'misclassified sample')} {_carry(f.n_wrong)} {pct(f.wrong_share)} "
            f"({loss_text(f.loss_from_wrong)} of {loss_text(f.loss)}); the correct ones {loss_text(f.loss_from_correct)}."
        )
    confidence = []
    if f.n_wrong:
        confidence.append(f"mean confidence on wrong predictions {f.conf_wrong_mean:.3f}")
    if n_correct:
        confidence.append(f"mean p(given) on correct ones {f.p_true_correct_mean:.4f}")
    else:
        confidence.append("no correct prediction")
    lines.append("- " + confidence[0][0].upper() + "; ".join(confidence)[1:] + ".")
    if n.stats.significant_rise and n.stats.rise is not None and n.rise_from_worst5 is not None:
        lines.append("- " + _rise_parts(n))
    return lines


def _carry(count: int) -> str:
    return "carries" if count == 1 else "carry"


def _rise_parts(n: Verdict) -> str:
    worst, rest, wrong = n.rise_from_worst5, n.rise_from_rest, n.rise_from_wrong
    assert n.stats.rise is not None and worst is not None and rest is not None and wrong is not None
    head = f"Of the rise of {loss_text(n.stats.rise)} since epoch {n.stats.min_epoch}, the final worst 5% ({plural(n.final.top5_n, 'sample')})"
    if rest < 0:
        text = (
            f"{head} account for +{loss_text(worst)}, more than the whole rise, because the other samples' losses "
            f"fell by {loss_text(-rest)} in total"
        )
    else:
        text = f"{head} account for {loss_text(worst)} and the other samples for {loss_text(rest)}"
    return text + f"; the final misclassified samples for {wrong:+.4f}."


def _extreme_words(n: Verdict) -> str:
    f, e = n.final, n.extreme[0]
    ratio = e.loss / f.loss if f.loss > 0 else math.inf
    text = (
        f"The worst one: {'the final model' if n.history else 'the model'} gives its given class {e.given} a "
        f"probability of {_p(e.p_given)} "
        f"(and {_p(e.p_predicted)} to {e.predicted}), so its loss alone is -log({_p(e.p_given)}) = {e.loss:.2f}, "
        + (f"{ratio:.1f}x the mean. " if math.isfinite(ratio) else "while the mean is 0. ")
    )
    if ratio < EXTREME_RATIO:
        return text + (
            f"That is not an extreme outlier (less than {EXTREME_RATIO:.0f}x the mean): the loss is spread over "
            "many samples."
        )
    n_correct = f.n - f.n_wrong
    mean_correct = f.loss_from_correct * f.n / n_correct if n_correct else 0.0
    text += "Cross-entropy is unbounded: a few confident mistakes like this one dominate the mean"
    if mean_correct > 0 and e.loss / mean_correct >= 2:
        text += (
            f"; this one alone weighs as much as {e.loss / mean_correct:,.0f} correct samples of average loss "
            f"({mean_correct:.4f}) together"
        )
    return text + "."


def _group_lines(n: Verdict) -> list[str]:
    """The rise (and the final loss) split over disjoint groups of val samples (``rise_by_group``)."""
    assert n.rise_by_group is not None
    cols = ["group", "val samples", "rise", "share of the rise", "final loss", "share of the final loss"]
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for name, g in n.rise_by_group.items():
        final = n.final_loss_by_group[name]
        lines.append(
            f"| {name.replace('_', ' ')} | {g['n']} | {g['rise']:+.4f} | {pct(g['share'] or 0.0)} | "
            f"{final['loss']:.4f} | {pct(final['share'] or 0.0)} |"
        )
    return [
        f"Each val sample is in one group (first that applies): flagged as a likely label error; of a collapsed class; "
        f"else by whether it was predicted right at epoch {n.stats.min_epoch} (lowest val loss) and at epoch "
        f"{n.stats.last_epoch}. The rises add up to the whole rise, {n.stats.rise:+.4f}.",
        "",
        *lines,
    ]


# what "What to look at next" names in TensorBoard, by kind, when the run logged it (``logged``)
TENSORBOARD_TAGS = {
    "images": ("val/worst_samples", "val/reliability"),
    "histograms": ("val/loss_per_sample", "train/loss_per_sample"),
    "scalars": ("val/loss_from_wrong", "val/ece", "val/temperature"),
}
STOCK_TAGS = frozenset({"val/worst_samples", "val/reliability", "val/loss_per_sample", *TENSORBOARD_TAGS["scalars"]})


def _tensorboard_line(logged: frozenset[str]) -> str | None:
    parts = []
    for kind, tags in TENSORBOARD_TAGS.items():
        named = [f"`{t}`" for t in tags if t in logged]
        if named:
            caption = " (captioned given / predicted / p(given))" if "val/worst_samples" in logged and kind == "images" else ""
            parts.append(f"{kind} {', '.join(named)}{caption}")
    return "- TensorBoard: " + "; ".join(parts) + "." if parts else None


def _next_lines(
    n: Verdict, reports: Sequence[str], figures: Sequence[str], tensorboard: bool, logged: frozenset[str] | None = None
) -> list[str]:
    lines = [
        "- `worst.csv`: the worst val samples"
        + (" with their loss at every epoch" if n.history else " of this model")
        + " (and file paths for folder data)."
    ]
    if tensorboard and n.history:
        line = _tensorboard_line(STOCK_TAGS if logged is None else logged)
        lines += [line] if line else []
    elif tensorboard:
        lines.append("- TensorBoard (this folder): text `diagnosis` and the images `diagnosis/*`.")
    if reports:
        names = ", ".join(reports)
        lines.append(
            f"- `reports/*.md`: per-class precision / recall / F1 of the {names} model{'s' if len(reports) > 1 else ''}."
        )
    if figures:
        lines.append("- `figures/`: " + ", ".join(f"`{name}.png`" for name in figures) + ".")
    lines += [
        "- `diagnosis.json`: the verdict and every number above, machine-readable.",
        "- `samples.npz` (`lossdiag.diagnosis.samples.load_samples(folder)`): every number above, per sample"
        + (" and epoch." if n.history else "."),
    ]
    paths = [e.path for e in n.extreme if e.path]
    if paths:
        lines.append("- Open the worst images: " + ", ".join(f"`{p}`" for p in paths) + ".")
    return lines


def diagnosis_texts(
    n: Verdict,
    reports: Sequence[str] = (),
    figures: Sequence[str] = (),
    tensorboard: bool = True,
    ctx: Context | None = None,
    logged: frozenset[str] | None = None,
) -> tuple[str, str]:
    """``(diagnosis.md, the console summary)`` of a verdict.

    ``reports`` and ``figures`` name the report models and figures written next to it (only those are
    pointed to); ``tensorboard`` says whether the text and images went to TensorBoard too, ``logged`` which
    per-epoch tags the run logged there (``None``: the stock ones); ``ctx`` what the advice may point to.
    """
    ctx = ctx or Context()
    f = n.final
    lines = [f"# {TITLES[n.kind]}", "", headline(n), ""]
    todo = advice(n, ctx)
    if todo:
        lines += [f"What to try: {todo}", ""]
    for note in notes(n):
        lines += [note, ""]
    lines += [rules_line(n), ""]
    if n.history and n.rise_by_group is not None and n.stats.rise:
        lines += ["## What carried the rise", "", *_group_lines(n), ""]
    lines += ["## Where the final val loss comes from" if n.history else "## Where the loss comes from", ""]
    lines += _where_lines(n)
    cols = ["index", "file", "given", "predicted", "p(given)", "p(predicted)", "loss"]
    cols += [f"loss at epoch {n.stats.min_epoch}"] if n.shows_min else []
    whose = "the final model" if n.history else "the evaluated model"
    lines += ["", f"Most extreme samples (highest loss; probabilities of {whose}):", ""]
    lines += ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for e in n.extreme:
        lines.append(
            f"| {e.index} | {e.path or '-'} | {e.given} | {e.predicted} | {_p(e.p_given)} | {e.p_predicted:.4f} "
            f"| {max(e.loss, 0.0):.2f} |" + (f" {max(e.loss_at_min, 0.0):.2f} |" if n.shows_min else "")
        )
    if n.extreme:
        lines += ["", _extreme_words(n)]
    lines += ["", "## Calibration", "", *calibration_lines(n)]
    lines += ["", "## The bounded loss's view", "", *bounded_lines(n)]
    lines += ["", "## What to look at next", "", *_next_lines(n, reports, figures, tensorboard, logged)]
    markdown = "\n".join(lines) + "\n"
    summary = "\n".join(summary_lines(n, f, ctx))
    return markdown, summary


def summary_lines(n: Verdict, f: ModelNumbers, ctx: Context | None = None) -> list[str]:
    """The console summary: the verdict and its cause, what to try, where the loss comes from, calibration."""
    out = [headline(n).replace("**", "")]
    todo = advice(n, ctx)
    if todo:
        out.append(f"What to try: {todo}")
    wrong = f"misclassified ones {pct(f.wrong_share)}" if f.n_wrong else "no sample is misclassified"
    worst = f"; lowest p(given) {_p(n.extreme[0].p_given)}" if n.extreme else ""
    of = "the final loss" if n.history else "the loss"
    out.append(f"The worst 1% of samples ({f.top1_n}) {_carry(f.top1_n)} {pct(f.top1_share)} of {of}, {wrong}{worst}.")
    if f.temperature_status == "ok":
        out.append(
            f"ECE {number(f.ece, '.4f')}, fitted temperature {f.temperature:.3f}, NLL after temperature scaling "
            f"{number(f.nll_crossfit, '.4f')} (cross-fitted, median of the splits; raw {loss_text(f.loss)})."
        )
    else:
        out.append(f"ECE {number(f.ece, '.4f')}; temperature {temperature_cell(f)}: it says nothing about calibration.")
    return out
