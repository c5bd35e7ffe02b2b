"""The verdict's calibration and bounded-loss sections in words: what temperature scaling shows out of sample,
over many random splits, and what the capped loss sees.

"Over-confident" is said only when the fitted temperature improves the out-of-sample NLL or ECE across the middle
90% of the random splits; "the rise is over-confidence" only when they all remove some of it.
"""

from __future__ import annotations

import math

from lossdiag.diagnosis.judge.causes import Cause
from lossdiag.diagnosis.judge.verdict import ModelNumbers, Verdict
from lossdiag.functional.crossfit import CROSSFIT_SPLITS
from lossdiag.functional.temperature import T_MAX, T_MIN
from lossdiag.render.text import loss_text, pct, plural

FEW_SHARE = 0.05  # "a few samples": at most this share of them
LARGE_ZERO_GRADIENT_SHARE = 0.05  # bounded loss: this share of training samples above the cap is called large


def temperature_cell(m: ModelNumbers) -> str:
    if m.temperature_status == "not_identifiable":
        return "not identifiable"
    return f"{m.temperature:.3f}" + (" (at bound)" if m.temperature_status == "at_bound" else "")


def number(x: float, fmt: str) -> str:
    return format(x, fmt) if math.isfinite(x) else "-"


def _with_range(value: float, low_high: tuple[float, float]) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:.4f} ({low_high[0]:.4f} to {low_high[1]:.4f})"


def calibration_lines(n: Verdict) -> list[str]:
    cols = ["", "NLL (mean loss)", "ECE (15 bins)", "temperature", "NLL after scaling*", "ECE after scaling*"]
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    final_label = f"final, epoch {n.stats.last_epoch}" if n.history else "this model"
    rows = [(f"at min val loss, epoch {n.stats.min_epoch}", n.at_min or n.final), (final_label, n.final)]
    for label, v in rows if n.shows_min else rows[1:]:
        lines.append(
            f"| {label} | {loss_text(v.loss)} | {number(v.ece, '.4f')} | {temperature_cell(v)} | "
            f"{_with_range(v.nll_crossfit, v.nll_crossfit_range)} | {_with_range(v.ece_crossfit, v.ece_crossfit_range)} |"
        )
    lines += [
        "",
        "\\* cross-fitted: the temperature is fitted on one random half of the samples and scores the other half, "
        "and the other way round, so no sample is scored with a temperature fitted on itself; the median over "
        f"{CROSSFIT_SPLITS} random splits, and (in brackets) the range of the middle 90% of them.",
        "",
        temperature_words(n.final, "the final model" if n.history else "the model"),
    ]
    if n.stats.significant_rise:
        lines += ["", scaling_words(n)]
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
    if not m.scaling_helps:
        return (
            f"The fitted temperature of {who} is {t:.3f}, but scaling by it does not improve the NLL or the ECE out "
            f"of sample across 90% of {CROSSFIT_SPLITS} random splits, so it does not show {who} mis-calibrated."
        )
    if t > 1.05:
        return f"A fitted temperature of {t:.3f} (> 1) means {who} is over-confident: its probabilities are too extreme."
    if t < 0.95:
        return f"A fitted temperature of {t:.3f} (< 1) means {who} is under-confident: its probabilities are too flat."
    return f"A fitted temperature of {t:.3f} (about 1) means {who} is about calibrated."


def scaling_words(n: Verdict) -> str:
    """How much of the rise temperature scaling removes, over the splits; a claim only where every split agrees."""
    f, m = n.final, n.at_min or n.final
    r, span = n.scaling_removes, n.scaling_removes_range
    if r is None or span is None:
        bad = [
            label
            for label, v in ((f"epoch {n.stats.min_epoch}", m), (f"epoch {n.stats.last_epoch}", f))
            if v.temperature_status != "ok"
        ]
        return (
            "Temperature scaling cannot tell whether the rise is over-confidence here: the temperature is not usable "
            f"at {' and '.join(bad) or 'one of the two epochs'} (see above)."
        )
    text = (
        f"Temperature-scaled NLL (cross-fitted, median of {CROSSFIT_SPLITS} splits) goes {loss_text(m.nll_crossfit)} "
        f"-> {loss_text(f.nll_crossfit)} while the raw NLL goes {loss_text(m.loss)} -> {loss_text(f.loss)}: "
        f"scaling removes {pct(r)} of the rise ({pct(span[0])} to {pct(span[1])} in 90% of the splits)"
    )
    if span[0] <= 0:
        return text + ", a range that includes no gain, so it does not tell whether the rise is over-confidence."
    if n.cause in (Cause.COLLAPSED_CLASSES, Cause.LABEL_ERRORS):
        return text + f"; but the rise is carried by {str(n.cause).replace('_', ' ')}, not by over-confidence alone."
    if span[0] >= 0.5:
        return text + ", so the rise is mostly over-confidence."
    return text + ", so the rise is partly over-confidence: the class ranking itself got worse on some samples."


def zero_gradient_words(n: Verdict) -> list[str]:
    if n.objective != "bounded" or n.n_train_above_cap is None or not n.n_train:
        return []
    k, total = n.n_train_above_cap, n.n_train
    if k == 0:
        return [f"No training sample is above the cap ({n.loss_cap:.3f}) at the end: every one still has a gradient."]
    text = (
        f"At the end, {k} of {plural(total, 'training sample')} ({pct(k / total)}) {'has' if k == 1 else 'have'} a "
        f"loss above the cap ({n.loss_cap:.3f}): the bounded loss gives them zero gradient, so training no longer "
        "learns from them."
    )
    if k / total >= LARGE_ZERO_GRADIENT_SHARE:
        text += (
            f" That is a large share (at least {pct(LARGE_ZERO_GRADIENT_SHARE)}): whole classes can be given up "
            "this way."
        )
    return [text]


def bounded_lines(n: Verdict) -> list[str]:
    f, m = n.final, n.at_min or n.final
    if not math.isfinite(n.loss_cap):
        return ["No cap was recorded for this model, so there is no bounded view."]
    text = (
        f"Capping every sample's loss at {n.loss_cap:.3f} (mean + k std of the untrained model's losses): "
        f"{loss_text(f.bounded)}{' at the end' if n.history else ''} with {plural(f.n_above_cap, 'sample')} above the cap"
        + (f", {loss_text(m.bounded)} at epoch {n.stats.min_epoch} ({m.n_above_cap} above). " if n.shows_min else ". ")
    )
    if not n.stats.significant_rise:
        text += (
            "No sample is above the cap, so the bounded and the raw loss agree."
            if f.n_above_cap == 0
            else f"The {plural(f.n_above_cap, 'sample')} above the cap {'is' if f.n_above_cap == 1 else 'are'} "
            "the highest-loss ones (the worst are listed above)."
        )
    elif f.bounded <= m.bounded * (1 + n.stats.rise_threshold):
        few = f.n_above_cap <= FEW_SHARE * f.n
        text += (
            f"The bounded loss does not rise while the raw loss does: the rise lives in the "
            f"{plural(f.n_above_cap, 'sample')} ({pct(f.n_above_cap / f.n)} of them) whose loss exceeds the cap"
            + (", a few extreme ones." if few else ".")
        )
    else:
        text += "The bounded loss rises too: the rise is not confined to the samples above the cap."
    return [text, *zero_gradient_words(n)]
