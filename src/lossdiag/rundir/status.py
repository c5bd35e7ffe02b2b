"""``<run>/metrics.json``: how a run ended and its final metrics, written atomically by the run itself.

Reports read it to tell complete runs from failed ones and from runs that were killed (the file
still says ``running``, or is missing when the job never started training).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lossdiag.errors import user_error_cause
from lossdiag.rundir.atomic import atomic_write_text
from lossdiag.rundir.paths import SUMMARY_FILE

RUNNING, COMPLETE, FAILED = "running", "complete", "failed"


@dataclass
class RunOutcome:
    """Filled in by the code inside :func:`recorded_run`."""

    metrics: dict[str, float] = field(default_factory=dict)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def write_summary(
    run_dir: str | Path, status: str, metrics: dict[str, float] | None = None, error: str | None = None
) -> Path:
    """Atomically (re)write ``<run_dir>/metrics.json``; non-finite metrics become ``null`` (valid JSON)."""
    payload: dict[str, Any] = {"status": status}
    if metrics is not None:
        payload["metrics"] = {k: _finite_or_none(float(v)) for k, v in sorted(metrics.items())}
    if error is not None:
        payload["error"] = error
    return atomic_write_text(Path(run_dir) / SUMMARY_FILE, json.dumps(payload, indent=2) + "\n")


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's summary, or ``None`` when it has none (or an unreadable one)."""
    path = Path(run_dir) / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


@contextmanager
def recorded_run(run_dir: str | Path) -> Iterator[RunOutcome]:
    """Mark the run ``running``; on exit ``complete`` with ``outcome.metrics``, or ``failed`` with the error."""
    write_summary(run_dir, RUNNING)
    outcome = RunOutcome()
    try:
        yield outcome
    except BaseException as err:
        shown = user_error_cause(err) or err  # a config node's UserError, not Hydra's wrapper around it
        write_summary(run_dir, FAILED, error=f"{type(shown).__name__}: {shown}")
        raise
    write_summary(run_dir, COMPLETE, metrics=outcome.metrics)
