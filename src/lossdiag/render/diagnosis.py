"""The verdict in words: ``diagnosis.md`` and the console summary, from :class:`VerdictNumbers`.

The first sentence names the kind of run (``**Verdict: <kind>.**``) with what it means; the same sentence
opens the console summary, the TensorBoard text ``diagnosis`` and the notebook's conclusion. Nothing here
prints ``nan``: a number that does not exist (no misclassified sample, no history) is said in words.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from lossdiag.functional.calibration import T_MAX, T_MIN
from lossdiag.functional.run_kinds import KIND_ORDER, RISE_THRESHOLD, loss_text, pct
from lossdiag.functional.verdict import (
    EXTREME_RATIO,
    FEW_SHARE,
    LARGE_ZERO_GRADIENT_SHARE,
    ModelNumbers,
    VerdictNumbers,
)

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


def plural(count: int, noun: str) -> str:
    """``"1 sample"``, ``"2 samples"``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _weights(epoch: int) -> str:
    return "untrained weights" if epoch < 0 else f"weights of epoch {epoch}"


def headline(n: VerdictNumbers) -> str:
    """The verdict's first sentence (markdown bold on the kind), its reason and, for the phenomenon, what it means."""
    meaning = KIND_MEANING[n.verdict]
    if not n.history:
        f = n.final
        on = "the val split" if n.evaluated_on == "val split" else n.evaluated_on
        detail = (
            f"{_weights(n.last_epoch)} on {on}: mean cross-entropy {loss_text(f.loss)}, "
            f"accuracy {f.acc:.3f} over {plural(f.n, 'sample')}"
        )
    else:
        detail = n.reason
    text = f"**Verdict: {n.verdict}.** {meaning[0].upper()}{meaning[1:]}: {detail}."
    if n.verdict == "phenomenon":
        text += " The loss is not telling you the model classifies worse."
    return text


def notes(n: VerdictNumbers) -> list[str]:
    """Sentences that qualify the verdict: classes with recall 0 too small to count, samples the bounded loss ignores."""
    out = []
    if n.evaluated_on.startswith("every image"):
        out.append(
            f"This checkpoint was evaluated on {n.evaluated_on}: a folder other than its run's own, so every image "
            "counts and there is no train/val split."
        )
    small = [c for c in n.unlearned_classes if c not in n.collapsed_classes]
    if small and n.verdict != "not_learning":
        one = len(small) == 1
        out.append(
            f"{'Class' if one else 'Classes'} {', '.join(small)} also {'has' if one else 'have'} recall 0 at the end, "
            f"but for a model this accurate that is within chance for {'its' if one else 'their'} number of val "
            "samples, so it does not decide the verdict."
        )
    out += _zero_gradient_words(n)
    return out


def _zero_gradient_words(n: VerdictNumbers) -> list[str]:
    if n.objective != "bounded" or n.n_train_above_cap is None or not n.n_train:
        return []
    k, total = n.n_train_above_cap, n.n_train
    if k == 0:
        return [
            f"No training sample is above the cap ({n.loss_cap:.3f}) at the end: every one still has a gradient."
        ]
    text = (
        f"At the end, {k} of {plural(total, 'training sample')} ({pct(k / total)}) have a loss above the cap "
        f"({n.loss_cap:.3f}): the bounded loss gives them zero gradient, so training no longer learns from them."
    )
    if k / total >= LARGE_ZERO_GRADIENT_SHARE:
        text += (
            f" That is a large share (at least {pct(LARGE_ZERO_GRADIENT_SHARE)}): whole classes can be given up "
            "this way; a lower `optimizer.lr` or a larger `loss.k` keeps more samples under the cap."
        )
    return [text]


def rules_line(n: VerdictNumbers) -> str:
    if not n.history:
        return (
            "How the verdict is decided for one model: not_learning when its accuracy is not above the "
            f"majority-class rate by more than {n.majority_margin:.2f} (one-sided "
            f"{100 * n.confidence_level:.0f}% lower bound), partial_collapse when some classes have recall 0 "
            "beyond chance while others are learned, else single_evaluation. The rules are in docs/diagnosis.md "
            "(*Kinds of run*)."
        )
    return (
        f"How the verdict is decided: the first rule that fires, in the order {', '.join(KIND_ORDER)} "
        f"(rise threshold {pct(n.rise_threshold)}; majority-class margin {n.majority_margin:.2f}; "
        f"{100 * n.confidence_level:.0f}% intervals from a paired bootstrap over the val samples, "
        f"{n.n_resamples} resamples, seed {n.bootstrap_seed}). The minimum epoch is picked after looking at the "
        "curve, so the rise's interval is slightly optimistic. The rules are in docs/diagnosis.md (*Kinds of run*)."
    )


def _where_lines(n: VerdictNumbers) -> list[str]:
    f = n.final
    n_correct = f.n - f.n_wrong
    lines = [
        f"- Mean {'val ' if n.history else ''}cross-entropy {loss_text(f.loss)} over {plural(f.n, 'sample')}, "
        f"accuracy {f.acc:.3f}.",
        f"- The worst 1% ({plural(f.top1_n, 'sample')}) carry {pct(f.top1_share)} of it; "
        f"the worst 5% ({plural(f.top5_n, 'sample')}) carry {pct(f.top5_share)}.",
    ]
    if f.n_wrong == 0:
        lines.append("- No sample is misclassified: all of the loss comes from correct predictions.")
    else:
        lines.append(
            f"- The {plural(f.n_wrong, 'misclassified sample')} carry {pct(f.wrong_share)} "
            f"({loss_text(f.loss_from_wrong)} of {loss_text(f.loss)}); the correct ones {loss_text(f.loss_from_correct)}."
        )
    confidence = []
    if f.n_wrong:
        confidence.append(f"mean confidence on wrong predictions {f.conf_wrong_mean:.3f}")
    if n_correct:
        confidence.append(f"mean p(true) on correct ones {f.p_true_correct_mean:.4f}")
    else:
        confidence.append("no correct prediction")
    lines.append("- " + confidence[0][0].upper() + "; ".join(confidence)[1:] + ".")
    if n.significant_rise and n.rise is not None and n.rise_from_worst5 is not None:
        lines.append("- " + _rise_parts(n))
    return lines


def _rise_parts(n: VerdictNumbers) -> str:
    worst, rest, wrong = n.rise_from_worst5, n.rise_from_rest, n.rise_from_wrong
    assert n.rise is not None and worst is not None and rest is not None and wrong is not None
    head = f"Of the rise of {loss_text(n.rise)} since epoch {n.min_epoch}, the final worst 5% ({plural(n.final.top5_n, 'sample')})"
    if rest < 0:
        text = (
            f"{head} account for +{loss_text(worst)}, more than the whole rise, because the other samples' losses "
            f"fell by {loss_text(-rest)} in total"
        )
    else:
        text = f"{head} account for {loss_text(worst)} and the other samples for {loss_text(rest)}"
    return text + f"; the final misclassified samples for {wrong:+.4f}."


def _extreme_words(n: VerdictNumbers) -> str:
    f, e = n.final, n.extreme[0]
    ratio = e.loss / f.loss if f.loss > 0 else math.inf
    text = (
        f"The worst one: the model gives its true class {e.true} a probability of {_p(e.p_true)}, "
        f"so its loss alone is -log({_p(e.p_true)}) = {e.loss:.2f}, "
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


def _temperature_cell(m: ModelNumbers) -> str:
    if m.temperature_status == "not_identifiable":
        return "not identifiable"
    return f"{m.temperature:.3f}" + (" (at bound)" if m.temperature_status == "at_bound" else "")


def _number(x: float, fmt: str) -> str:
    return format(x, fmt) if math.isfinite(x) else "-"


def _calibration_lines(n: VerdictNumbers) -> list[str]:
    cols = ["", "NLL (mean loss)", "ECE (15 bins)", "temperature", "NLL after scaling*", "ECE after scaling*"]
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    final_label = f"final, epoch {n.last_epoch}" if n.history else "this model"
    rows = [(f"at min val loss, epoch {n.min_epoch}", n.at_min or n.final), (final_label, n.final)]
    for label, v in rows if n.shows_min else rows[1:]:
        lines.append(
            f"| {label} | {loss_text(v.loss)} | {_number(v.ece, '.4f')} | {_temperature_cell(v)} | "
            f"{_number(v.nll_crossfit, '.4f')} | {_number(v.ece_crossfit, '.4f')} |"
        )
    lines += [
        "",
        "\\* cross-fitted: the temperature is fitted on one random half of the samples and scores the other "
        "half, and the other way round, so no sample is scored with a temperature fitted on itself.",
        "",
        temperature_words(n.final, "the final model" if n.history else "the model"),
    ]
    if n.significant_rise:
        lines += ["", _scaling_words(n)]
    return lines


def temperature_words(m: ModelNumbers, who: str) -> str:
    """What the fitted temperature says about ``who``, or why it says nothing."""
    t = m.temperature
    if m.temperature_status == "not_identifiable":
        if m.n_wrong == 0:
            return (
                f"Every prediction of {who} is right, so its temperature is not identifiable: sharpening the "
                f"probabilities (T -> 0) always lowers the NLL, and the fitted value ({t:.3g}) says nothing about "
                "calibration."
            )
        return (
            f"No prediction of {who} is right, so its temperature is not identifiable: flattening the probabilities "
            f"(T -> infinity) always lowers the NLL, and the fitted value ({t:.3g}) says nothing about calibration."
        )
    if m.temperature_status == "at_bound":
        if t >= T_MAX:
            return (
                f"The fitted temperature of {who} hits its upper search bound ({T_MAX:.0f}): its probabilities are "
                "no better than uniform guessing, so calibration says nothing useful here."
            )
        return (
            f"The fitted temperature of {who} hits its lower search bound ({T_MIN}): sharper is always better on "
            "these samples (nearly every prediction is right), so it is not a measure of under-confidence."
        )
    if t > 1.05:
        return f"A fitted temperature of {t:.3f} (> 1) means {who} is over-confident: its probabilities are too extreme."
    if t < 0.95:
        return f"A fitted temperature of {t:.3f} (< 1) means {who} is under-confident: its probabilities are too flat."
    return f"A fitted temperature of {t:.3f} (about 1) means {who} is about calibrated."


def _scaling_words(n: VerdictNumbers) -> str:
    f, m = n.final, n.at_min or n.final
    r = n.scaling_removes
    if r is None:
        bad = [
            label
            for label, v in ((f"epoch {n.min_epoch}", m), (f"epoch {n.last_epoch}", f))
            if v.temperature_status != "ok"
        ]
        return (
            "Temperature scaling cannot tell whether the rise is over-confidence here: the temperature is not usable "
            f"at {' and '.join(bad) or 'one of the two epochs'} (see above)."
        )
    text = (
        f"Temperature-scaled NLL (cross-fitted) goes {loss_text(m.nll_crossfit)} -> {loss_text(f.nll_crossfit)} while the "
        f"raw NLL goes {loss_text(m.loss)} -> {loss_text(f.loss)}: "
    )
    if r > 1:
        return text + (
            "the scaled NLL even fell, so scaling removes all of the rise (and more): the rise is over-confidence."
        )
    if r >= 0.5:
        return text + f"scaling removes {pct(r)} of the rise, so the rise is mostly over-confidence."
    if r >= 0:
        return text + (
            f"scaling removes only {pct(r)} of the rise, so the rise is not just over-confidence: the class "
            "ranking itself got worse on some samples."
        )
    return text + (
        "the scaled NLL rose more than the raw NLL, so scaling removes none of the rise: the class ranking itself "
        "got worse on some samples."
    )


def _bounded_lines(n: VerdictNumbers) -> list[str]:
    f, m = n.final, n.at_min or n.final
    if not math.isfinite(n.loss_cap):
        return ["No cap was recorded for this model, so there is no bounded view."]
    text = (
        f"Capping every sample's loss at {n.loss_cap:.3f} (mean + k std of the untrained model's losses): "
        f"{loss_text(f.bounded)} at the end with {plural(f.n_above_cap, 'sample')} above the cap"
        + (
            f", {loss_text(m.bounded)} at epoch {n.min_epoch} ({m.n_above_cap} above). "
            if n.shows_min
            else ". "
        )
    )
    if not n.significant_rise:
        text += (
            "No sample is above the cap, so the bounded and the raw loss agree."
            if f.n_above_cap == 0
            else f"The {plural(f.n_above_cap, 'sample')} above the cap {'is' if f.n_above_cap == 1 else 'are'} "
            "the highest-loss ones (the worst are listed above)."
        )
    elif f.bounded <= m.bounded * (1 + n.rise_threshold):
        few = f.n_above_cap <= FEW_SHARE * f.n
        text += (
            f"The bounded loss does not rise while the raw loss does: the rise lives in the "
            f"{plural(f.n_above_cap, 'sample')} ({pct(f.n_above_cap / f.n)} of them) whose loss exceeds the cap"
            + (", a few extreme ones." if few else ".")
        )
    else:
        text += "The bounded loss rises too: the rise is not confined to the samples above the cap."
    return [text, *_zero_gradient_words(n)]


def _next_lines(
    n: VerdictNumbers, reports: Sequence[str], figures: Sequence[str], tensorboard: bool
) -> list[str]:
    if n.history:
        lines = [
            "- `worst.csv`: the worst val samples with their loss at every epoch (and file paths for folder data).",
            "- TensorBoard: images `val/worst_samples` (captioned true / predicted / p(true)) and `val/reliability`; "
            "histograms `val/loss_per_sample`; scalars `val/loss_from_wrong`, `val/ece`, `val/temperature`.",
        ]
    else:
        lines = ["- `worst.csv`: the worst samples of this model (and file paths for folder data)."]
        if tensorboard:
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
        "- `samples.npz` (`lossdiag.rundir.samples.load_samples(folder)`): every number above, per sample"
        + (" and epoch." if n.history else "."),
    ]
    paths = [e.path for e in n.extreme if e.path]
    if paths:
        lines.append("- Open the worst images: " + ", ".join(f"`{p}`" for p in paths) + ".")
    return lines


def diagnosis_texts(
    n: VerdictNumbers, reports: Sequence[str] = (), figures: Sequence[str] = (), tensorboard: bool = True
) -> tuple[str, str]:
    """``(diagnosis.md, the console summary)`` of a verdict.

    ``reports`` and ``figures`` name the report models and figures written next to it (only those are
    pointed to); ``tensorboard`` says whether the text and images went to TensorBoard too.
    """
    f = n.final
    lines = ["# Diagnosis: why does val loss rise?", "", headline(n), ""]
    todo = n.advice
    if todo:
        lines += [f"What to try: {todo}", ""]
    for note in notes(n):
        lines += [note, ""]
    lines += [rules_line(n), ""]
    lines += ["## Where the final val loss comes from" if n.history else "## Where the loss comes from", ""]
    lines += _where_lines(n)
    cols = ["index", "file", "true", "predicted", "p(true)", "confidence", "loss"]
    cols += [f"loss at epoch {n.min_epoch}"] if n.shows_min else []
    lines += ["", "Most extreme samples (highest loss):", ""]
    lines += ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for e in n.extreme:
        lines.append(
            f"| {e.index} | {e.path or '-'} | {e.true} | {e.pred} | {_p(e.p_true)} | {e.conf:.4f} "
            f"| {max(e.loss, 0.0):.2f} |" + (f" {max(e.loss_at_min, 0.0):.2f} |" if n.shows_min else "")
        )
    if n.extreme:
        lines += ["", _extreme_words(n)]
    lines += ["", "## Calibration", "", *_calibration_lines(n)]
    lines += ["", "## The bounded loss's view", "", *_bounded_lines(n)]
    lines += ["", "## What to look at next", "", *_next_lines(n, reports, figures, tensorboard)]
    markdown = "\n".join(lines) + "\n"
    summary = "\n".join(summary_lines(n, f))
    return markdown, summary


def summary_lines(n: VerdictNumbers, f: ModelNumbers) -> list[str]:
    """The console summary: the verdict, what to try, where the loss comes from, calibration."""
    out = [headline(n).replace("**", "")]
    todo = n.advice
    if todo:
        out.append(f"What to try: {todo}")
    wrong = f"misclassified ones {pct(f.wrong_share)}" if f.n_wrong else "no sample is misclassified"
    worst = f"; worst p(true) {_p(n.extreme[0].p_true)}" if n.extreme else ""
    of = "the final loss" if n.history else "the loss"
    out.append(f"Worst 1% of samples carry {pct(f.top1_share)} of {of}, {wrong}{worst}.")
    if f.temperature_status == "ok":
        calib = (
            f"ECE {_number(f.ece, '.4f')}, fitted temperature {f.temperature:.3f}, NLL after temperature scaling "
            f"{_number(f.nll_crossfit, '.4f')} (cross-fitted)."
        )
    else:
        calib = f"ECE {_number(f.ece, '.4f')}; temperature {_temperature_cell(f)}: it says nothing about calibration."
    out.append(calib)
    return out
