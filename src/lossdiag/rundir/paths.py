"""Every file a run folder (or an evaluation folder) holds, named once.

Code that reads or writes a run folder uses these names, never a string of its own.
"""

from __future__ import annotations

from pathlib import Path

# the run's status and final metrics (lossdiag.rundir.status)
SUMMARY_FILE = Path("metrics.json")
# per-epoch metrics, one row per logged epoch-level record (lossdiag.rundir.metrics_csv)
METRICS_CSV = Path("csv") / "metrics.csv"
# per-sample records of every epoch and evaluated model (lossdiag.diagnosis.samples)
SAMPLES_FILE = Path("samples.npz")
# append-only per-epoch val records (lossdiag.rundir.journal): what a resumed run's history comes back from
VAL_JOURNAL = Path("records") / "val_epochs.bin"
# the same for the training set's dynamics (p of the given label, margin) of every epoch
TRAIN_JOURNAL = Path("records") / "train_dynamics.bin"
# the written verdict and its numbers (lossdiag.diagnosis.write)
DIAGNOSIS_FILE = Path("diagnosis.md")
DIAGNOSIS_JSON = Path("diagnosis.json")
# every sample of both splits ranked as a likely label error, and the first ones in words (lossdiag.diagnosis.write)
SUSPECTS_CSV = Path("suspects.csv")
SUSPECTS_MD = Path("suspects.md")
# how the suspects were flagged: per-class thresholds of every model (src.evaluate flags with them), early window
SUSPECTS_JSON = Path("suspects.json")
# suspects.folds=K: each fold's out-of-fold probabilities (lossdiag.app.folds), fold_<k>.npz, written atomically
FOLDS_DIR = Path("suspects_folds")
# the worst val samples with their loss history
WORST_FILE = Path("worst.csv")
# classification reports (<model>.md / .csv) and PNG figures
REPORTS_DIR = Path("reports")
FIGURES_DIR = Path("figures")
# checkpoints: best (val/acc), last (what resume= continues), initial (untrained weights)
CHECKPOINTS_DIR = Path("checkpoints")
# what Hydra saved of the run's configuration
CONFIG_FILE = Path(".hydra") / "config.yaml"
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
HYDRA_FILE = Path(".hydra") / "hydra.yaml"
# the job's log (Hydra's file handler, named after the entry point)
TRAIN_LOG = Path("train.log")
# optimizer.lr=auto: the learning-rate range test's curve (lossdiag.rundir.lr_find; figure: figures/lr_find.png)
LR_FIND_CSV = Path("lr_find.csv")
LR_FIND_FIGURE = "lr_find"
# a sweep folder's comparison (python -m src.report): table, the same as CSV, curves
SWEEP_REPORT_MD = Path("report.md")
SWEEP_REPORT_CSV = Path("report.csv")
SWEEP_REPORT_PNG = Path("report.png")
# the keys a sweep's jobs differ by, which name its job folders (lossdiag.app.resolvers.sweep_job_dirname)
SWEEP_KEYS_FILE = Path("varying_keys.yaml")


def report_path(run_dir: str | Path, model: str, suffix: str) -> Path:
    """``<run>/reports/<model>.<suffix>`` (``md`` or ``csv``)."""
    return Path(run_dir) / REPORTS_DIR / f"{model}.{suffix}"


def checkpoint_path(run_dir: str | Path, name: str) -> Path:
    """``<run>/checkpoints/<name>.ckpt`` (``initial``, ``best_val_acc``, ``min_val_loss``, ``last``)."""
    return Path(run_dir) / CHECKPOINTS_DIR / f"{name}.ckpt"


# relative to a run folder (``Path("") / x`` is ``x``)
LAST_CKPT = checkpoint_path("", "last")
INITIAL_CKPT = checkpoint_path("", "initial")


def figure_path(run_dir: str | Path, name: str) -> Path:
    """``<run>/figures/<name>.png``."""
    return Path(run_dir) / FIGURES_DIR / f"{name}.png"


def epoch_figure_path(run_dir: str | Path, name: str, epoch: int) -> Path:
    """``<run>/figures/epochs/<name>_<epoch, 4 digits>.png``: a figure drawn during training (TensorBoard's
    ``val/<name>`` at step ``epoch``), named so a folder listing is in epoch order."""
    return Path(run_dir) / FIGURES_DIR / "epochs" / f"{name}_{epoch:04d}.png"


def display_path(path: str | Path) -> str:
    """``path`` as shown to a person: relative to the working directory when below it (what they type), else absolute."""
    absolute = Path(path).resolve()
    try:
        return str(absolute.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(absolute)
