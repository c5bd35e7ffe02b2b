"""Classification reports in the layout of the seed's tables (scikit-learn's ``classification_report``).

Computed with torchmetrics (``average=None``; torchmetrics has no report), laid out as
``{class: {precision, recall, f1-score, support}, "accuracy": float, "macro avg": {...},
"weighted avg": {...}}``, the same dict ``sklearn.metrics.classification_report(output_dict=True)``
returns. Undefined precision/recall (no predictions / no samples of a class) count as 0.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics.functional.classification import (
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

Report = dict[str, dict[str, float] | float]
COLUMNS = ("precision", "recall", "f1-score", "support")


def classification_report(pred: np.ndarray, target: np.ndarray, class_names: Sequence[str]) -> Report:
    """Per-class precision, recall, F1 and support, accuracy, macro and support-weighted averages."""
    preds = torch.as_tensor(np.asarray(pred, dtype=np.int64))
    targets = torch.as_tensor(np.asarray(target, dtype=np.int64))
    c = len(class_names)
    per_class = {
        "precision": multiclass_precision(preds, targets, c, average=None).double(),
        "recall": multiclass_recall(preds, targets, c, average=None).double(),
        "f1-score": multiclass_f1_score(preds, targets, c, average=None).double(),
    }
    support = torch.bincount(targets, minlength=c).double()
    report: Report = {
        name: {**{k: float(v[i]) for k, v in per_class.items()}, "support": float(support[i])}
        for i, name in enumerate(class_names)
    }
    total = float(support.sum())
    report["accuracy"] = float((preds == targets).double().mean()) if total else 0.0
    report["macro avg"] = {**{k: float(v.mean()) for k, v in per_class.items()}, "support": total}
    weights = support / total if total else support
    report["weighted avg"] = {**{k: float((v * weights).sum()) for k, v in per_class.items()}, "support": total}
    return report


def _rows(report: Report) -> list[tuple[str, list[float | None]]]:
    """Table rows as in the seed: classes, then accuracy (F1 column + support), then the averages."""
    rows: list[tuple[str, list[float | None]]] = []
    for name, value in report.items():
        if name == "accuracy":
            support = report["macro avg"]["support"]  # type: ignore[index]
            rows.append((name, [None, None, value, support]))  # type: ignore[list-item]
        else:
            rows.append((name, [value[k] for k in COLUMNS]))  # type: ignore[index]
    return rows


def _fmt(value: float | None, column: str, digits: int) -> str:
    if value is None:
        return ""
    return str(int(value)) if column == "support" else f"{value:.{digits}f}"


def report_markdown(report: Report, title: str = "", digits: int = 2) -> str:
    """A markdown table: ``| class | precision | recall | f1-score | support |``."""
    lines = [f"## {title}", ""] if title else []
    lines += ["| | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for name, values in _rows(report):
        lines.append(f"| {name} | " + " | ".join(_fmt(v, c, digits) for v, c in zip(values, COLUMNS, strict=True)) + " |")
    return "\n".join(lines) + "\n"


def report_csv(report: Report) -> str:
    """The same table as CSV with full precision (empty cells where the seed's table is empty)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["", *COLUMNS])
    for name, values in _rows(report):
        writer.writerow([name, *("" if v is None else (int(v) if c == "support" else repr(v))
                                 for v, c in zip(values, COLUMNS, strict=True))])
    return out.getvalue()
