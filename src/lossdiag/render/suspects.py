"""Likely label errors in words and tables: ``suspects.md`` and the "Possibly mislabeled" section."""

from __future__ import annotations

import math
from collections.abc import Sequence

from lossdiag.diagnosis.judge.suspects import (
    NO_THRESHOLDS,
    NOT_LEARNING,
    SHOWN,
    SUSPECT_COLUMNS,
    FlagGate,
    RunSuspects,
    SuspectRow,
)
from lossdiag.functional.suspects import CLEANLAB, CONFIDENT_OTHER, EARLY_DYNAMICS
from lossdiag.render.tables import csv_text, markdown_table
from lossdiag.render.text import plural

RULE_WORDS = {
    CONFIDENT_OTHER: "the model prefers another class above that class's threshold",
    EARLY_DYNAMICS: "another class out-scored its label before memorisation",
    CLEANLAB: "cleanlab's confident learning on the out-of-fold probabilities, its dynamics agreeing",
}


def suspect_caption(row: SuspectRow) -> str:
    flag = " (flagged)" if row.flagged else ""
    return (
        f"{row.split} #{row.index}{flag}\ngiven {row.given}\nmodel says {row.suspected or '-'}\n"
        f"p(given)={row.p_given:.2g}"
    )


def gate_line(gate: FlagGate) -> str:
    """One line on where flags are off and why ("" when they may fall anywhere)."""
    if gate.off == NOT_LEARNING:
        return (
            "No image is flagged: the model did not learn (verdict `not_learning`), so a label it disagrees with "
            "says nothing about the label. The ranking is still written."
        )
    if gate.off == NO_THRESHOLDS:
        return (
            "No image is flagged: the checkpoint's run folder has no `suspects.json` with this model's per-class "
            "thresholds, and thresholds fitted on these images themselves would flag every confident mistake."
        )
    if gate.excluded:
        names = ", ".join(gate.excluded)
        return (
            f"Images labelled {names} are never flagged: the model never predicts {'this' if len(gate.excluded) == 1 else 'these'} "
            "collapsed class(es) correctly, so it cannot judge their labels."
        )
    return ""


def _how(run: RunSuspects) -> str:
    if run.window_end is None:  # one evaluated model (src.evaluate)
        ranking = f"Images are scored by 1 - p(given label) under the {run.thresholds_from} model."
    else:
        ranking = (
            "Training images are scored by minus their area under the margin (the given label's logit minus the "
            f"largest other logit, from their own training steps) over epochs 0-{run.window_end}: twice the epochs "
            f"up to the lowest val loss (epoch {run.min_epoch}), before the model memorises the training images, "
            "mislabeled ones included"
        )
        if run.folds:
            ranking += (
                f", averaged with the same area in the {run.folds} extra trainings of `suspects.folds` that also "
                "learned the image, and combined half and half with cleanlab's label quality of the image in the "
                "one that held it out (`oof_p_given`, out of fold)"
            )
        ranking += (
            f"; validation images by 1 - the mean of p(given label) under the {run.thresholds_from} model and over "
            "the same early epochs (`early_p_given`)"
        )
        ranking += (
            f", combined with their area under the margin in the {run.folds} folds." if run.folds else "."
        )
    flags = (
        "An image is flagged (`flag_rule`) when a model that has not memorised it disagrees with its label "
        "confidently: a validation image when the model prefers another class with at least that class's "
        "threshold (the mean p(given label) of the validation images of that class: per class, as in confident "
        "learning); a training image when, over the early epochs, another class out-scored its label by more than "
        "the images of its class usually trail (below 0 and below the class's median minus two robust standard "
        "deviations)"
    )
    if run.folds:
        flags += (
            ", or when cleanlab's confident-learning filter finds it on the out-of-fold probabilities and its "
            "training dynamics put it in the most suspect quarter of the training images"
        )
    return (
        f"{ranking} `score` is the image's suspicion quantile within its split (1 = most suspect), so both lists "
        f"merge into one. {flags}."
    )


def _flag_cell(r: SuspectRow) -> str:
    return r.flag_rule if r.flagged else ""


def suspects_csv(rows: Sequence[SuspectRow]) -> str:
    """``suspects.csv``: every row, in :data:`SUSPECT_COLUMNS` order (``oof_p_given`` empty without folds)."""
    table = [
        [r.rank, r.split, r.index, r.path, r.given, r.suspected, f"{r.score:.6g}", f"{r.raw_score:.6g}",
         f"{r.p_given:.6g}", f"{r.early_p_given:.6g}", "" if math.isnan(r.oof_p_given) else f"{r.oof_p_given:.6g}",
         r.ranked_by, int(r.flagged), r.flag_rule]
        for r in rows
    ]  # fmt: skip
    return csv_text(SUSPECT_COLUMNS, table)


def suspects_markdown(rows: Sequence[SuspectRow], run: RunSuspects, shown: int = SHOWN) -> str:
    """``suspects.md``: how the list is made, where flags are off, and its first ``shown`` rows."""
    flagged = {s: sum(r.flagged for r in rows if r.split == s) for s in ("train", "val")}
    totals = {s: sum(r.split == s for r in rows) for s in ("train", "val")}
    parts = [
        f"{plural(flagged[s], f'{name} image')} of {totals[s]}"
        for s, name in (("train", "training"), ("val", "validation"))
        if totals[s]
    ]
    lines = [
        "# Possibly mislabeled images",
        "",
        f"{' and '.join(parts)} {'is' if sum(flagged.values()) == 1 else 'are'} flagged. Open the top rows and fix "
        "the wrong labels (move the file to the right class folder) or drop the images; the full ranked list is "
        "`suspects.csv`.",
    ]
    line = gate_line(run.gate)
    lines += ["", line] if line else []
    with_oof = any(not math.isnan(r.oof_p_given) for r in rows)
    header = ["rank", "split", "index", "file", "given", "model says", "score", "p(given)", "early p(given)"]
    header += ["out-of-fold p(given)"] if with_oof else []
    table = [
        [
            r.rank,
            r.split,
            r.index,
            r.path or "-",
            r.given,
            r.suspected or "-",
            r.score,
            r.p_given,
            r.early_p_given,
        ]
        + ([r.oof_p_given] if with_oof else [])
        + [_flag_cell(r)]
        for r in rows[:shown]
    ]
    lines += ["", _how(run), "", markdown_table([*header, "flagged"], table, digits=3)]
    return "\n".join(lines)


def _and(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def mislabeled_section(
    rows: Sequence[SuspectRow],
    run: RunSuspects,
    worst_val: Sequence[int],
    also: Sequence[str] = (),
    few: int = 5,
) -> str:
    """The "Possibly mislabeled" section of ``diagnosis.md``: how many of the worst val samples and of the
    training set are flagged, the top of the ranking with its flags, and what to do. ``also``: the other places
    that show them (TensorBoard grids, the data map), named only when they were written."""
    by_key = {(r.split, r.index): r for r in rows}
    worst_flagged = sum(by_key[("val", i)].flagged for i in worst_val if ("val", i) in by_key)
    n_train = sum(r.split == "train" for r in rows)
    train_flagged = sum(r.flagged for r in rows if r.split == "train")
    lines = ["", "## Possibly mislabeled", ""]
    parts = [f"{worst_flagged} of the {len(worst_val)} highest-loss val samples" if worst_val else ""]
    if n_train:
        parts.append(f"{train_flagged} of the {n_train} training samples")
    lines.append(
        "Confidently wrong samples are often mislabeled or ambiguous images. "
        + " and ".join(p for p in parts if p)
        + (" are" if worst_flagged + train_flagged != 1 else " is")
        + " flagged as likely label errors (the rule and the full ranking are in `suspects.md` / `suspects.csv`)."
    )
    line = gate_line(run.gate)
    lines += ["", line] if line else []
    if rows:
        lines += ["", "Most suspect first (the top of the ranking, flagged or not):", ""]
        lines += [
            f"- {r.split} #{r.index}{f' `{r.path}`' if r.path else ''}: labelled {r.given}"
            + (f", the model says {r.suspected}" if r.suspected and r.suspected != r.given else "")
            + f" (p(given) = {r.p_given:.2g}, early {r.early_p_given:.2g}"
            + (f", out of fold {r.oof_p_given:.2g})" if not math.isnan(r.oof_p_given) else ")")
            + (f" **flagged**: {RULE_WORDS.get(r.flag_rule, r.flag_rule)}" if r.flagged else "")
            for r in rows[:few]
        ]
    lines += [
        "",
        f"Open `suspects.csv`{f' (or {_and(also)})' if also else ''}, then fix or drop the labels that are wrong "
        "and train again. A flag is a place to look, not a proof: hard but correct images get flagged too.",
    ]
    return "\n".join(lines) + "\n"
