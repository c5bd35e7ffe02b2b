"""The verdict's "What you can do" section for a run folder: its own numbers, plus its sweep's remedies report.

A run of a remedies sweep (``python -m src.train -m experiment=remedies``) lives in ``<sweep>/<job>/``; once
``python -m src.report <sweep>`` has written ``<sweep>/report.csv``, a diagnosis written again for that run
(resumed, or re-evaluated) quotes the sweep's measured numbers (:func:`lossdiag.render.remedies.what_you_can_do`).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from lossdiag.functional.remedies import RemedyResult
from lossdiag.functional.verdict import VerdictNumbers
from lossdiag.render.remedies import what_you_can_do
from lossdiag.rundir.paths import SWEEP_REPORT_CSV


def _float(row: dict[str, str], key: str) -> float:
    value = row.get(key) or ""
    try:
        return float(value)
    except ValueError:
        return math.nan


def read_remedies_report(path: str | Path) -> list[RemedyResult]:
    """The rows of a remedies report (``report.csv`` with a ``remedy`` column); ``[]`` for any other file."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "remedy" not in rows[0] or "last_val_loss_mean" not in rows[0]:
        return []
    return [
        RemedyResult(
            label=f"remedy={row['remedy']}",
            n=int(_float(row, "n")) if math.isfinite(_float(row, "n")) else 0,
            last_acc=_float(row, "last_val_acc_mean"),
            last_acc_std=_float(row, "last_val_acc_std"),
            last_ce=_float(row, "last_val_loss_mean"),
            last_ce_std=_float(row, "last_val_loss_std"),
            rise_ratio=_float(row, "rise_ratio_mean"),
            best_acc=_float(row, "best_val_acc_mean"),
            min_ce=_float(row, "min_val_loss_mean"),
            last_ece=_float(row, "last_val_ece_mean"),
        )
        for row in rows
    ]


def what_you_can_do_section(
    numbers: VerdictNumbers, out_dir: str | Path, suspects_file: str | None = None
) -> str:
    """:func:`what_you_can_do` for a verdict written into ``out_dir`` (a sweep's report one folder up is used)."""
    final = numbers.final
    return what_you_can_do(
        phenomenon=numbers.phenomenon,
        temperature=final.temperature,
        best_acc_epoch=numbers.acc_best_epoch,
        best_acc=numbers.acc_best,
        last_acc=numbers.acc_last,
        nll=final.loss,
        nll_scaled=final.nll_crossfit,  # cross-fitted: not scored on the samples T was fitted on
        remedies=read_remedies_report(Path(out_dir).resolve().parent / SWEEP_REPORT_CSV),
        suspects_file=suspects_file,
    )
