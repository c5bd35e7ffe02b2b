"""Finding finished training runs under an outputs folder."""

from __future__ import annotations

from pathlib import Path

from lossdiag.errors import UserError
from lossdiag.rundir.paths import (
    CONFIG_FILE,
    DIAGNOSIS_FILE,
    HYDRA_FILE,
    METRICS_CSV,
    OVERRIDES_FILE,
    SAMPLES_FILE,
)

RUN_DIR_ENV = "LOSSDIAG_RUN_DIR"
# what makes a finished training run (a run still training has no diagnosis.md; an evaluation no CSV)
RUN_FILES = (SAMPLES_FILE, METRICS_CSV, DIAGNOSIS_FILE)


def is_run(path: str | Path) -> bool:
    """A finished training run: ``samples.npz``, ``csv/metrics.csv`` and ``diagnosis.md``.

    A run still training (or killed) has no ``diagnosis.md`` yet; a ``src.evaluate`` folder has no CSV.
    """
    path = Path(path)
    return all((path / name).is_file() for name in RUN_FILES)


def latest_run(root: str | Path = "outputs") -> Path:
    """The training run under ``root`` whose ``samples.npz`` was written last (runs and sweeps alike)."""
    root = Path(root)
    runs = [p.parent for p in root.rglob(str(SAMPLES_FILE)) if is_run(p.parent)] if root.is_dir() else []
    if not runs:
        raise UserError(
            f"no finished training run under {root}/ (a folder with {', '.join(map(str, RUN_FILES))}): "
            f"train one with `python -m src.train`, or set RUN_DIR (or ${RUN_DIR_ENV}) to a run folder"
        )
    return max(runs, key=lambda p: ((p / SAMPLES_FILE).stat().st_mtime, str(p)))


def remove_unfinished(folder: str | Path, log_name: str) -> bool:
    """Remove ``folder`` when it holds nothing but what Hydra writes into every job's folder.

    That is ``.hydra/{config,hydra,overrides}.yaml`` and the job's log ``log_name``: a job that failed
    before writing anything of its own then leaves no empty folder behind. Anything else in it (an earlier
    evaluation's files, the user's own) and the folder is left exactly as it is. True when removed.
    """
    folder = Path(folder)
    hydra_files = {CONFIG_FILE, HYDRA_FILE, OVERRIDES_FILE, Path(log_name)}
    if not folder.is_dir():
        return False
    entries = list(folder.rglob("*"))
    files = {p.relative_to(folder) for p in entries if not p.is_dir()}
    dirs = {p.relative_to(folder) for p in entries if p.is_dir()}
    if not files <= hydra_files or not dirs <= {CONFIG_FILE.parent}:
        return False
    for name in files:
        (folder / name).unlink()
    for name in dirs:
        (folder / name).rmdir()
    folder.rmdir()
    return True
