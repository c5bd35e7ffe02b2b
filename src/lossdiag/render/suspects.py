"""Likely label errors in words and tables: ``suspects.md`` and the "Possibly mislabeled" section."""

from __future__ import annotations

from collections.abc import Sequence

from lossdiag.diagnosis.judge.suspects import SHOWN, SuspectRow
from lossdiag.functional.suspects import TRAIN_SCORE, VAL_SCORE
from lossdiag.render.tables import markdown_table
from lossdiag.render.text import plural


def suspect_caption(row: SuspectRow) -> str:
    return (
        f"{row.split} #{row.index}\ngiven {row.given}\nmodel says {row.suspected}\np(given)={row.p_given:.2g}"
    )


def _how() -> str:
    return (
        f"Training images are scored by minus the area under the margin (`{TRAIN_SCORE}`, Pleiss et al. 2020): "
        "the given label's logit minus the largest other logit, averaged over every epoch's training step; "
        f"validation images by `{VAL_SCORE}` under the best model, which never trained on them. `score` is the "
        "image's suspicion quantile within its split (1 = most suspect), so both lists merge into one. "
        "`flagged` = a training image whose given label was on average out-scored by another class (AUM < 0), "
        "or a validation image the best model assigns to another class."
    )


def suspects_markdown(rows: Sequence[SuspectRow], shown: int = SHOWN) -> str:
    """``suspects.md``: how the list is made and its first ``shown`` rows."""
    flagged = {s: sum(r.flagged for r in rows if r.split == s) for s in ("train", "val")}
    totals = {s: sum(r.split == s for r in rows) for s in ("train", "val")}
    lines = [
        "# Possibly mislabeled images",
        "",
        f"{plural(flagged['train'], 'training image')} of {totals['train']} and "
        f"{plural(flagged['val'], 'validation image')} of {totals['val']} are flagged. Open each one and fix its "
        "label (move the file to the right class folder) or drop it; the full ranked list is `suspects.csv`.",
        "",
        _how(),
        "",
        markdown_table(
            ["rank", "split", "index", "file", "given", "model says", "score", "p(given)", "flagged"],
            [
                [
                    r.rank,
                    r.split,
                    r.index,
                    r.path or "-",
                    r.given,
                    r.suspected,
                    r.score,
                    r.p_given,
                    "yes" if r.flagged else "",
                ]
                for r in rows[:shown]
            ],
            digits=3,
        ),
    ]
    return "\n".join(lines)


def _and(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def mislabeled_section(
    rows: Sequence[SuspectRow], worst_val: Sequence[int], also: Sequence[str] = (), few: int = 5
) -> str:
    """The "Possibly mislabeled" section of ``diagnosis.md``: how many of the worst val samples and of the
    training set are flagged, the first few with their files, and what to do. ``also``: the other places that show
    them (TensorBoard grids, the data map), named only when they were written."""
    by_key = {(r.split, r.index): r for r in rows}
    worst_flagged = sum(by_key[("val", i)].flagged for i in worst_val if ("val", i) in by_key)
    n_train = sum(r.split == "train" for r in rows)
    train_flagged = sum(r.flagged for r in rows if r.split == "train")
    top = [r for r in rows if r.flagged][:few]
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
    if top:
        lines += ["", "Most suspect first:", ""]
        lines += [
            f"- {r.split} #{r.index}{f' `{r.path}`' if r.path else ''}: labelled {r.given}, the model says "
            f"{r.suspected} (p(given) = {r.p_given:.2g})"
            for r in top
        ]
    lines += [
        "",
        f"Open `suspects.csv`{f' (or {_and(also)})' if also else ''}, then fix or drop the labels that are wrong "
        "and train again. A flag is a place to look, not a proof: hard but correct images get flagged too.",
    ]
    return "\n".join(lines) + "\n"
