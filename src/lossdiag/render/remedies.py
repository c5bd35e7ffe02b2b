"""The remedies in words: the sweep report's recommendation line and the verdict's "What you can do" section.

Only what the project measures is stated as a fact: this run's own numbers (its best-accuracy epoch, its
fitted temperature) and, when a remedies sweep was run on the same data, that sweep's numbers. Without
one, the remedies are named with the command that measures them, not ranked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from lossdiag.functional.calibration import T_MAX, T_MIN
from lossdiag.functional.remedies import ACC_WINDOW, Recommendation, RemedyResult, recommend
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


def what_you_can_do(
    phenomenon: bool,
    temperature: float,
    best_acc_epoch: int,
    best_acc: float,
    last_acc: float,
    nll: float = math.nan,
    nll_scaled: float = math.nan,
    remedies: Sequence[RemedyResult] = (),
    suspects_file: str | None = None,
) -> str:
    """The "What you can do" section of ``diagnosis.md`` (``""`` unless the run shows the phenomenon).

    ``temperature``, ``nll`` and ``nll_scaled`` are the final model's fitted temperature and its val NLL before
    and after scaling; ``remedies`` the rows of a remedies sweep's report on the same data (with a
    ``remedy=cross_entropy`` row), if there is one; ``suspects_file`` a list of likely label errors, if written.
    """
    if not phenomenon:
        return ""
    lines = ["", "## What you can do", ""]
    lines.append(
        f"- **Keep the best-accuracy model, not the last one.** Val accuracy peaked at {best_acc:.3f} in epoch "
        f"{best_acc_epoch} (last epoch: {last_acc:.3f}); with the default callbacks that model is "
        "`checkpoints/best.ckpt`. It was chosen on this val split, so its accuracy there is optimistic."
    )
    if not math.isfinite(temperature):
        scaled = "no temperature could be fitted for this run."
    elif temperature >= T_MAX or temperature <= T_MIN:
        scaled = (
            f"the fitted temperature hit its search bound ({temperature:g}), so scaling is not determined by "
            "this val split."
        )
    else:
        gain = (
            f"; cross-fitted on val (each half scaled by the other half's T), that takes the val cross-entropy "
            f"from {nll:.4f} to {nll_scaled:.4f}"
            if math.isfinite(nll) and math.isfinite(nll_scaled)
            else ""
        )
        scaled = (
            f"divide the final model's logits by T = {temperature:.3f} before the softmax{gain}. Predictions (and "
            "accuracy) do not change. T was fitted on this val split, so fit it on held-out data before you rely "
            "on the probabilities."
        )
    lines.append(f"- **Temperature-scale for calibrated probabilities**: {scaled}")
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
    else:
        named = ", ".join(
            f"`remedy={name}` ({words})" for name, words in REMEDY_WORDS.items() if name != "cross_entropy"
        )
        lines.append(
            f"- **Regularise or change the objective**: {named}. They were measured side by side on the default "
            'digits data (docs/remedies.md, "What to do about it"), not on this data: to measure them here run '
            "`python -m src.train -m experiment=remedies` with this run's data overrides, then "
            "`python -m src.report <sweep folder>`."
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
