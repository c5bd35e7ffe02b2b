"""The remedies in words: the sweep report's recommendation line and the verdict's "What you can do" section.

Only what the project measures is stated as a fact: this run's own numbers (its best-accuracy epoch, its
fitted temperature) and, when a remedies sweep was run on the same data, that sweep's numbers. Without
one, the remedies are named with the command that measures them, not ranked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from lossdiag.diagnosis.judge.verdict import Verdict
from lossdiag.functional.remedies import ACC_WINDOW, Recommendation, RemedyResult, recommend
from lossdiag.render.reasons import BEST_ACC_CKPT, MIN_LOSS_CKPT, Context, checkpoint_words
from lossdiag.render.tables import markdown_table

# what each remedy of conf/remedy/ changes, in words (remedy=<name>)
REMEDY_WORDS: dict[str, str] = {
    "cross_entropy": "plain cross-entropy (the reference)",
    "bounded": "cross-entropy capped per sample, no gradient once capped",
    "label_smoothing": "label smoothing 0.1",
    "focal": "focal loss, gamma 3",
    "weight_decay": "weight decay 1e-3",
    "augment": "random flip + padded crop of the training images",
    "phuber": "PHuber cross-entropy, tau 10",
    "gce": "generalized cross-entropy, q 0.7",
}
REFERENCE_LABEL = "remedy=cross_entropy"


def _mean_std(mean: float, std: float, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if not math.isfinite(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def recommendation_text(rec: Recommendation, window: float = ACC_WINDOW) -> str:
    """One line: the recommended remedy and why, or ``none`` and why."""
    ref = rec.reference
    points = f"{100 * window:g} point"
    if rec.choice is None:
        if not rec.eligible:
            why = f"no other group kept its last val accuracy within {points} of `{ref.label}`'s {ref.last_acc:.3f}"
        else:
            why = (
                f"of the groups within {points} of `{ref.label}`'s last val accuracy ({ref.last_acc:.3f}), none "
                f"ended with a lower val cross-entropy than its {ref.last_ce:.3f}"
            )
        return f"**Recommendation: none**: {why}."
    c = rec.choice
    return (
        f"**Recommendation: `{c.label}`**: the lowest last val cross-entropy ({_mean_std(c.last_ce, c.last_ce_std)} "
        f"vs {_mean_std(ref.last_ce, ref.last_ce_std)} for `{ref.label}`; rise last/min {c.rise_ratio:.2f}x vs "
        f"{ref.rise_ratio:.2f}x) among the groups whose last val accuracy is within {points} of `{ref.label}`'s "
        f"({c.last_acc:.3f} vs {ref.last_acc:.3f}; mean over {c.n} seed(s))."
    )


def remedies_table(results: Sequence[RemedyResult]) -> str:
    """A short markdown table of a remedies sweep: last val accuracy, last val CE and the rise."""
    header = ("remedy", "seeds", "last val acc", "last val CE", "rise last/min")
    rows = [
        (
            f"`{r.label}`",
            r.n,
            _mean_std(r.last_acc, r.last_acc_std),
            _mean_std(r.last_ce, r.last_ce_std),
            f"{r.rise_ratio:.2f}x",
        )
        for r in results
    ]
    return markdown_table(header, rows).rstrip("\n")


def what_you_can_do(v: Verdict, ctx: Context, remedies: Sequence[RemedyResult] = ()) -> str:
    """The "What you can do" section of ``diagnosis.md`` (``""`` unless the run shows the phenomenon).

    It names only checkpoints that exist (``ctx.checkpoints``), the best-accuracy model only when it differs from
    the last, and temperature scaling as a fix only where it improves the probabilities out of sample.
    ``remedies`` are the rows of a remedies sweep's report on the same data (with a ``remedy=cross_entropy`` row),
    if there is one.
    """
    if v.kind != "phenomenon":
        return ""
    s, f = v.stats, v.final
    suspects_file = ctx.suspects_file
    lines = ["", "## What you can do", ""]
    lowest = checkpoint_words(ctx, MIN_LOSS_CKPT, "lowest val loss")
    if lowest:
        lines.append(
            f"- **Keep the model of the lowest val loss**: {lowest}. It was chosen on this val split, so its loss "
            "there is optimistic; check it on data of your own."
        )
    best = checkpoint_words(ctx, BEST_ACC_CKPT, "best val accuracy")
    if best and s.acc_best_epoch != s.last_epoch and f"{s.acc_best:.3f}" != f"{s.acc_last:.3f}":
        lines.append(
            f"- **Or the best-accuracy model**: {best}: val accuracy {s.acc_best:.3f} against {s.acc_last:.3f} at "
            "the last epoch. It was chosen on this val split, so its accuracy there is optimistic."
        )
    t = f.temperature
    if f.temperature_status != "ok" or not math.isfinite(t):
        scaled = f"the fitted temperature ({t:g}) is at a bound or not identifiable, so scaling is not determined here."
    elif not f.scaling_helps:
        scaled = (
            f"the fitted T = {t:.3f} does not improve the NLL or the ECE out of sample across 90% of the random splits "
            "of the val set, so it is not a fix this val set can vouch for."
        )
    else:
        scaled = (
            f"divide the final model's logits by T = {t:.3f} before the softmax; cross-fitted on val (each half scaled "
            f"by the other half's T, median of the splits), that takes the val cross-entropy from {f.loss:.4f} to "
            f"{f.nll_crossfit:.4f}. Predictions (and accuracy) do not change. Fit T on held-out data before you rely "
            "on the probabilities."
        )
    lines.append(f"- **Temperature scaling**: {scaled}")
    if remedies and any(r.label == REFERENCE_LABEL for r in remedies):
        rec = recommend(remedies, REFERENCE_LABEL)
        lines += [
            "- **Regularise or change the objective.** Measured by the remedies sweep this run belongs to "
            "(`python -m src.report` on it):",
            "",
            remedies_table(remedies),
            "",
            recommendation_text(rec),
            "",
        ]
    elif ctx.config_keys:
        named = ", ".join(
            f"`remedy={name}` ({words})" for name, words in REMEDY_WORDS.items() if name != "cross_entropy"
        )
        lines.append(
            f"- **Regularise or change the objective**: {named}. They were measured side by side on the default "
            'digits data (docs/remedies.md, "What to do about it"), not on this data: to measure them here run '
            "`python -m src.train -m experiment=remedies` with this run's data overrides, then "
            "`python -m src.report <sweep folder>`."
        )
    else:
        named = ", ".join(words for name, words in REMEDY_WORDS.items() if name != "cross_entropy")
        lines.append(
            f"- **Regularise or change the objective**: {named}. Measure them side by side on your data, with "
            "several seeds, before you pick one."
        )
    if suspects_file:
        lines.append(
            f"- **Check the suspects for label errors**: `{suspects_file}` lists the samples most likely to be "
            "mislabelled; if a label is wrong, fix it or remove the sample."
        )
    else:
        lines.append(
            "- **Look at the worst samples** (`worst.csv`, with file paths for folder data): a confidently-wrong "
            "sample may carry a wrong label; if so, fix it or remove the sample."
        )
    return "\n".join(lines) + "\n"
