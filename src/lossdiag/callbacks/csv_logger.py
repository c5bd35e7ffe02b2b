"""A Lightning logger (public ``Logger`` API) writing ``<run>/csv/metrics.csv`` that a resumed run continues."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from lossdiag.rundir.metrics_csv import MetricsCSV


class ResumableCSVLogger(Logger):
    """Every ``log_metrics`` record is one row of ``<save_dir>/<name>/metrics.csv`` (``epoch``, ``step``, metrics).

    Unlike Lightning's ``CSVLogger`` it keeps an existing file: a run resumed from epoch ``e`` keeps the rows
    of the epochs before ``e`` (see :class:`lossdiag.rundir.metrics_csv.MetricsCSV`).
    """

    def __init__(self, save_dir: str | Path, name: str = "csv", version: str | int = "") -> None:
        super().__init__()
        self._save_dir = str(save_dir)
        self._name = name
        self._version = version
        self._csv: MetricsCSV | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str | int:
        return self._version

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def log_dir(self) -> str:
        return str(Path(self._save_dir) / self._name / str(self._version))

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """The run's config is in ``.hydra/config.yaml``; nothing to add here."""

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._csv is not None:
            self._csv.close()

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self._csv is None:
            self._csv = MetricsCSV(Path(self.log_dir) / "metrics.csv")
        record = {k: float(v) for k, v in metrics.items()}
        if step is not None:
            record["step"] = float(step)
        self._csv.append(record)
