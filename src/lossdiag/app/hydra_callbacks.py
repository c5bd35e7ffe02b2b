"""Hydra callbacks (``hydra.callbacks`` in ``conf/train.yaml``): what a multirun says when it ends.

A sweep's jobs print their own lines as they run; at the end the launching process names the sweep
folder, how its jobs ended, and the command that compares them. Hydra calls ``on_multirun_end`` only
when every job succeeded, so the same lines are also printed at exit after a sweep with failed jobs.
"""

from __future__ import annotations

import atexit
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lossdiag.rundir.paths import SUMMARY_FILE, display_path
from lossdiag.rundir.status import read_summary


def sweep_summary(sweep_dir: str | Path) -> str:
    """``Sweep folder: ... (4 complete, 4 failed)`` and the ``python -m src.report`` command for it."""
    sweep = Path(sweep_dir)
    statuses = Counter(
        (read_summary(path.parent) or {}).get("status", "unknown") for path in sweep.glob(f"*/{SUMMARY_FILE}")
    )
    counts = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    shown = display_path(sweep)
    return (
        f"Sweep folder: {shown}" + (f" ({counts})" if counts else "") + "\n"
        f"Compare its runs: python -m src.report {shown}  (TensorBoard: tensorboard --logdir {shown})"
    )


class SweepSummary(Callback):
    """Prints :func:`sweep_summary` once at the end of a multirun, whether or not every job succeeded."""

    def __init__(self) -> None:
        self._sweep_dir: str | None = None

    def _print(self) -> None:
        if self._sweep_dir is not None:
            sweep_dir, self._sweep_dir = self._sweep_dir, None
            print(f"\n{sweep_summary(sweep_dir)}", flush=True)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._sweep_dir = str(config.hydra.sweep.dir)
        atexit.register(self._print)  # a failed job ends the multirun with an exception, not on_multirun_end

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._print()
