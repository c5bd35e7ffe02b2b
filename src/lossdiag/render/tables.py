"""The table writers: markdown and CSV text from numbers (classification reports, generic tables).

No pandas needed; every markdown/CSV table the project writes comes from here.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

from lossdiag.functional.class_report import COLUMNS, Report


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value).replace("|", "\\|") if value != "" else "-"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 4) -> str:
    """``| a | b |`` table; floats with ``digits`` significant digits; nan and empty strings as ``-``."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row has {len(row)} cells, header has {len(header)}: {row!r}")
        lines.append("| " + " | ".join(_cell(v, digits) for v in row) + " |")
    return "\n".join(lines) + "\n"


def csv_text(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """CSV text (``\n`` line ends) of ``header`` and ``rows`` as given."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


# -- classification reports (the layout of scikit-learn's classification_report) ----------------
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
        lines.append(
            f"| {name} | "
            + " | ".join(_fmt(v, c, digits) for v, c in zip(values, COLUMNS, strict=True))
            + " |"
        )
    return "\n".join(lines) + "\n"


def report_csv(report: Report) -> str:
    """The same table as CSV with full precision (empty cells where the seed's table is empty)."""
    rows = [
        [
            name,
            *(
                "" if v is None else (int(v) if c == "support" else repr(v))
                for v, c in zip(values, COLUMNS, strict=True)
            ),
        ]
        for name, values in _rows(report)
    ]
    return csv_text(["", *COLUMNS], rows)
