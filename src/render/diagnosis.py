"""The verdict in words: ``diagnosis.md`` and the console summary, from :class:`VerdictNumbers`."""

from __future__ import annotations

import math

from src.functional.calibration import T_MAX
from src.functional.verdict import ACC_TOLERANCE, EXTREME_RATIO, RISE_TOLERANCE, VerdictNumbers


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _p(x: float) -> str:
    return f"{x:.3g}"


def _loss(x: float) -> str:
    return f"{x:.4f}"


def headline(n: VerdictNumbers) -> str:
    f = n.final
    if not n.history:
        weights = "untrained weights" if n.last_epoch < 0 else f"weights of epoch {n.last_epoch}"
        return (
            f"Single evaluation ({weights}): val loss {_loss(n.last_loss)}, "
            f"accuracy {f.acc:.3f}. With one point there is no rise to judge; the training run's "
            "diagnosis.md has the history."
        )
    rise = f"{_loss(n.min_loss)} at epoch {n.min_epoch} to {_loss(n.last_loss)} at epoch {n.last_epoch}"
    acc = f"val accuracy {n.acc_at_min:.3f} -> {n.acc_last:.3f}"
    if n.verdict == "phenomenon":
        return (
            f"**Yes, the phenomenon happened.** Val loss rose by {_pct(n.rise_rel)} after its minimum "
            f"({rise}) while {acc} held. The loss is not telling you the model classifies worse."
        )
    if n.rose:
        return (
            f"**Val loss rose and accuracy fell.** Val loss rose by {_pct(n.rise_rel)} ({rise}) and {acc} "
            f"dropped by more than {ACC_TOLERANCE:.2f}: the model got worse on val, not only more confident."
        )
    if n.min_epoch == n.last_epoch:
        detail = f"it is lowest at the last epoch ({_loss(n.last_loss)} at epoch {n.last_epoch})"
        acc = f"val accuracy {n.acc_last:.3f}"
    else:
        detail = f"{rise}, +{_pct(n.rise_rel)}, below the {_pct(RISE_TOLERANCE)} threshold"
    return f"**No, val loss did not rise** after its minimum: {detail}; {acc}. There is no rise to explain in this run."


def diagnosis_texts(n: VerdictNumbers) -> tuple[str, str]:
    """``(diagnosis.md, the three-line console summary)`` of a verdict."""
    f, m = n.final, n.at_min
    lines = ["# Diagnosis: why does val loss rise?", "", headline(n), ""]
    lines += [
        "## Where the final val loss comes from" if n.history else "## Where the val loss comes from",
        "",
        f"- Mean val cross-entropy {_loss(f.loss)} over {f.n} samples, accuracy {f.acc:.3f}.",
        f"- The worst 1% ({f.top1_n} samples) carry {_pct(f.top1_share)} of it; "
        f"the worst 5% ({f.top5_n} samples) carry {_pct(f.top5_share)}.",
        f"- The {f.n_wrong} misclassified samples carry {_pct(f.wrong_share)} "
        f"({_loss(f.loss_from_wrong)} of {_loss(f.loss)}); the correct ones {_loss(f.loss_from_correct)}.",
        f"- Mean confidence on wrong predictions: {f.conf_wrong_mean:.3f}; mean p(true) on correct ones: "
        f"{f.p_true_correct_mean:.4f}.",
    ]
    if n.history and n.rose:
        lines.append(
            f"- Of the rise of {_loss(n.rise)} since epoch {n.min_epoch}, the final worst 5% account for "
            f"{_loss(n.rise_from_worst5)} and the other samples for {_loss(n.rise_from_rest)}; "
            f"the final misclassified samples for {_loss(n.rise_from_wrong)}."
        )
    at_min_col = n.history and n.min_epoch != n.last_epoch
    cols = ["index", "file", "true", "predicted", "p(true)", "confidence", "loss"]
    cols += [f"loss at epoch {n.min_epoch}"] if at_min_col else []
    lines += ["", "Most extreme samples (highest loss):", ""]
    lines += ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for e in n.extreme:
        lines.append(
            f"| {e.index} | {e.path or '-'} | {e.true} | {e.pred} | {_p(e.p_true)} | {e.conf:.4f} "
            f"| {e.loss:.2f} |" + (f" {e.loss_at_min:.2f} |" if at_min_col else "")
        )
    if n.extreme:
        e = n.extreme[0]
        ratio = e.loss / f.loss if f.loss > 0 else math.inf
        lines += [
            "",
            f"The worst one: the model gives its true class {e.true} a probability of {_p(e.p_true)}, "
            f"so its loss alone is -log({_p(e.p_true)}) = {e.loss:.2f}, {ratio:.1f}x the mean. "
            + (
                "Cross-entropy is unbounded: a few confident mistakes like this one weigh as much as hundreds "
                "of correct samples."
                if ratio >= EXTREME_RATIO
                else f"That is not an extreme outlier (less than {EXTREME_RATIO:.0f}x the mean): the loss is "
                "spread over many samples."
            ),
        ]
    lines += ["", "## Calibration", ""]
    cols = ["", "val loss (NLL)", "ECE (15 bins)", "temperature", "NLL after scaling", "ECE after scaling"]
    lines += ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    final_label = "final, epoch " + str(n.last_epoch) if n.history else "this model"
    rows = [("at min val loss, epoch " + str(n.min_epoch), m), (final_label, f)]
    for label, v in rows if n.history and n.min_epoch != n.last_epoch else rows[1:]:
        lines.append(
            f"| {label} | {_loss(v.loss)} | {v.ece:.4f} | {v.temperature:.3f} | "
            f"{_loss(v.nll_temperature_scaled)} | {v.ece_temperature_scaled:.4f} |"
        )
    lines += ["", _calibration_words(n)]
    lines += ["", "## The bounded loss's view", ""]
    lines.append(
        f"Capping every sample's loss at {n.loss_cap:.3f} (mean + k std of the untrained model's losses): "
        f"{_loss(f.bounded)} at the end with {f.n_above_cap} sample(s) above the cap"
        + (
            f", {_loss(m.bounded)} at epoch {n.min_epoch} ({m.n_above_cap} above). "
            if n.history and n.min_epoch != n.last_epoch
            else ". "
        )
        + _bounded_words(n)
    )
    lines += [
        "",
        "## What to look at next",
        "",
        "- `worst.csv`: the worst samples with their loss at every epoch (and file paths for folder data).",
        "- TensorBoard images `val/worst_samples` (captioned true / predicted / p(true)) and `val/reliability`; "
        "histograms `val/loss_per_sample`; scalars `val/loss_from_wrong`, `val/ece`, `val/temperature`.",
        "- `reports/*.md`: per-class precision / recall / F1 of the initial, best and last models.",
        "- `samples.npz` (`src.rundir.samples.load_samples(run_dir)`): every number above, per sample and epoch.",
    ]
    paths = [e.path for e in n.extreme if e.path]
    if paths:
        lines.append("- Open the worst images: " + ", ".join(f"`{p}`" for p in paths) + ".")
    markdown = "\n".join(lines) + "\n"
    summary = "\n".join(
        [
            headline(n).replace("**", ""),
            f"Worst 1% of val samples carry {_pct(f.top1_share)} of the final val loss, misclassified ones "
            f"{_pct(f.wrong_share)}; worst p(true) {_p(n.extreme[0].p_true) if n.extreme else '-'}.",
            f"ECE {f.ece:.4f}, fitted temperature {f.temperature:.3f}, NLL after temperature scaling "
            f"{_loss(f.nll_temperature_scaled)}.",
        ]
    )
    return markdown, summary


def _calibration_words(n: VerdictNumbers) -> str:
    f, m = n.final, n.at_min
    t = f.temperature
    if t >= T_MAX:
        text = (
            f"The fitted temperature hits its upper limit ({T_MAX:.0f}): the model's probabilities are no better "
            "than uniform guessing, so calibration says nothing useful here."
        )
    elif t > 1.05:
        text = f"A fitted temperature of {t:.3f} (> 1) means the final model is over-confident: its probabilities are too extreme."
    elif t < 0.95:
        text = f"A fitted temperature of {t:.3f} (< 1) means the final model is under-confident: its probabilities are too flat."
    else:
        text = f"A fitted temperature of {t:.3f} (about 1) means the final model is about calibrated."
    if n.history and n.rose:
        scaled_rise = f.nll_temperature_scaled - m.nll_temperature_scaled
        removed = 1 - scaled_rise / n.rise if n.rise > 0 else 0.0
        text += (
            f" Temperature-scaled NLL goes {_loss(m.nll_temperature_scaled)} -> {_loss(f.nll_temperature_scaled)} "
            f"while the raw NLL goes {_loss(m.loss)} -> {_loss(f.loss)}: scaling removes {_pct(removed)} of the rise, "
        )
        text += (
            "so the rise is mostly over-confidence."
            if removed >= 0.5
            else "so the rise is not just over-confidence: the class ranking itself got worse on some samples."
        )
    return text


def _bounded_words(n: VerdictNumbers) -> str:
    f, m = n.final, n.at_min
    if not (n.history and n.rose):
        if f.n_above_cap == 0:
            return "No sample is above the cap, so the bounded and the raw loss agree."
        return f"The {f.n_above_cap} sample(s) above the cap are the highest-loss ones listed above."
    if f.bounded <= m.bounded * (1 + RISE_TOLERANCE):
        return (
            "The bounded loss does not rise while the raw loss does: the rise lives in the few samples whose "
            "loss exceeds the cap."
        )
    return "The bounded loss rises too: the rise is not confined to a few extreme samples."
