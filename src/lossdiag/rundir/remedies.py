"""A sweep's remedies report (``<sweep>/report.csv``) read back for the diagnosis of one of its runs.

A run of a remedies sweep (``python -m src.train -m experiment=remedies``) lives in ``<sweep>/<job>/``; once
``python -m src.report <sweep>`` has written ``<sweep>/report.csv``, a diagnosis written again for that run
(resumed, or re-evaluated) quotes the sweep's measured numbers in its "What you can do" section.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from lossdiag.functional.remedies import RemedyResult


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
