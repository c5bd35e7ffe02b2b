"""Classification reports in the layout of the seed's tables (scikit-learn's ``classification_report``).

Computed with torchmetrics (``average=None``; torchmetrics has no report), laid out as
``{class: {precision, recall, f1-score, support}, "accuracy": float, "macro avg": {...},
"weighted avg": {...}}``, the same dict ``sklearn.metrics.classification_report(output_dict=True)``
returns. Undefined precision/recall (no predictions / no samples of a class) count as 0.
"""

from __future__ import annotations

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
    report["weighted avg"] = {
        **{k: float((v * weights).sum()) for k, v in per_class.items()},
        "support": total,
    }
    return report
