"""Hydra callbacks (``hydra.callbacks`` in ``conf/train.yaml``): how a multirun names its jobs, and what it
says when it ends.

Before any job starts, the launching process records which keys the jobs differ by in the sweep folder
(:class:`SweepJobNames`), so every job, whatever process the launcher runs it in, names its folder by them.
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

from lossdiag.app.resolvers import varying_keys, write_varying_keys
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


class SweepJobNames(Callback):
    """Writes the sweep's :func:`~lossdiag.app.resolvers.varying_keys` into its folder before any job starts.

    The keys come from what the sweeper expands: ``hydra.sweeper.params`` (an experiment's sweep, Optuna's
    search space) and the command line. Each job's ``hydra.sweep.subdir``
    (:func:`~lossdiag.app.resolvers.sweep_job_dirname`) reads them back, in whichever process it runs.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra = config.hydra
        params = hydra.sweeper.get("params") or {}
        overrides = [*(f"{key}={value}" for key, value in params.items()), *hydra.overrides.task]
        keys = varying_keys(overrides, hydra.job.config.override_dirname.exclude_keys)
        write_varying_keys(hydra.sweep.dir, keys)
