"""A quiet console: every line once, no adverts, no warnings about choices we made on purpose.

Hydra configures the job's logging from ``conf/hydra/job_logging/quiet.yaml``: the console shows our
messages plain (``warning: ...`` for warnings) and leaves Lightning's informational lines ("GPU
available: False", "`Trainer.fit` stopped") to ``train.log``; both drop Lightning's litlogger
advertisement. Lightning's own package adds a second console handler to its ``lightning`` logger when
imported, which prints each of its lines again on stderr; :func:`quiet_lightning` removes it, so its
records reach the console and ``train.log`` once, through the root logger Hydra set up.

This module imports no torch or Lightning at import time: Hydra builds the formatter and filters before
the job runs, and ``--help`` stays instant.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path

from lossdiag.rundir.paths import display_path

# warnings Lightning or torch raise about how they are used together, not about anything a user can change
NOISE = (
    # Lightning's pytree helper calls an API newer torch deprecated
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",
    # epoch-level values go to the loggers once per epoch (lossdiag.models.epoch_log): step logging is unused
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    # multi-process runs: Lightning's all_gather (which gathers the per-sample records) calls a deprecated torch API
    r"torch\.distributed\.nn\.functional\.all_gather is deprecated",
    # val/loss and val/acc are computed from records already gathered over every process: no sync needed
    r"It is recommended to use `self\.log\('(val|train)/[^']*', \.\.\., sync_dist=True\)`",
)
ADVERT = "litlogger"
# train.log's line format (as in conf/hydra/job_logging/quiet.yaml)
FILE_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
# the job's log file, for processes spawned for multi-process training (Hydra configures only the job's)
LOG_FILE_ENV = "LOSSDIAG_LOG_FILE"


class ConsoleFormatter(logging.Formatter):
    """``message`` for INFO, ``warning: message`` / ``error: message`` above it (never twice)."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno <= logging.INFO:
            return message
        prefix = f"{record.levelname.lower()}: "
        return message if message.startswith(prefix) else prefix + message


class NoAdverts(logging.Filter):
    """Drops Lightning's "Tip: ... try installing litlogger" advertisement."""

    def filter(self, record: logging.LogRecord) -> bool:
        return ADVERT not in record.getMessage()


class QuietLibraries(logging.Filter):
    """Keeps informational lines of third-party libraries (Lightning) off the console; warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or record.name.split(".")[0] not in ("lightning", "torch")


def quiet_warnings() -> None:
    """Ignore the :data:`NOISE` warnings (in this process and in processes it spawns that import src.train)."""
    for message in NOISE:
        warnings.filterwarnings("ignore", message=message)


def _route_lightning_to_root() -> None:
    import lightning  # noqa: F401  # adds its handler on import; remove it after, not before

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True


def quiet_lightning() -> None:
    """Let Lightning's log records reach the root logger's handlers once, not also Lightning's own.

    Only when the root logger has handlers (Hydra configured it); otherwise Lightning's handler is the
    only way its lines are shown and is kept. The job's log file is remembered in the environment
    (:data:`LOG_FILE_ENV`), so processes spawned for multi-process training log into it too.
    """
    root = logging.getLogger()
    if not root.handlers:
        return
    _route_lightning_to_root()
    for handler in root.handlers:
        if isinstance(handler, logging.FileHandler):
            os.environ[LOG_FILE_ENV] = handler.baseFilename


def quiet_spawned_process() -> None:
    """Log in a process spawned for multi-process training as the launching job does (Hydra configures
    only that one): plain console lines without Lightning's per-process chatter, everything in its
    ``train.log`` (:data:`LOG_FILE_ENV`)."""
    log_file = os.environ.get(LOG_FILE_ENV)
    root = logging.getLogger()
    if not log_file or root.handlers:
        return
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(ConsoleFormatter())
    console.addFilter(NoAdverts())
    console.addFilter(QuietLibraries())
    file = logging.FileHandler(log_file)
    file.setFormatter(logging.Formatter(FILE_FORMAT))
    file.addFilter(NoAdverts())
    root.setLevel(logging.INFO)
    root.addHandler(console)
    root.addHandler(file)
    _route_lightning_to_root()


def run_folder_line(run_dir: str | Path) -> str:
    """The console's last line after a run: where everything is and how to look at it in TensorBoard.

    TensorBoard names a run by its event files' folder relative to ``--logdir``: pointed at the run folder itself
    it would call the run "." (and "Trial ID ." in HParams). So the line names the folder that holds the run
    (the day's runs, the sweep's jobs), where TensorBoard lists this run by its folder name next to its
    neighbours, and says which name that is.
    """
    run = Path(run_dir).resolve()
    if not any(run.glob("events.out.tfevents.*")):  # no TensorBoard logger (e.g. ~logger): nothing to open
        return f"Run folder: {display_path(run)}"
    return (
        f"Run folder: {display_path(run)}  "
        f"(TensorBoard: tensorboard --logdir {display_path(run.parent)}, run {run.name})"
    )


def finished(run_dir: str | Path) -> None:
    """End a run's console output (and ``train.log``) with :func:`run_folder_line`."""
    logging.getLogger("lossdiag").info(run_folder_line(run_dir))


def discard_if_rejected(run_dir: str | Path) -> bool:
    """Remove the folder of a single run rejected before any work; True if removed.

    Only a folder this process created (``${unique_dir:...}``, so never a resumed run's) that holds
    nothing but Hydra's ``.hydra/``, the job log and ``metrics.json`` goes, with its date folder when
    that is left empty. A sweep keeps its failed jobs' folders: its report lists them.
    """
    import shutil

    from lossdiag.app.resolvers import claimed_here, in_multirun
    from lossdiag.rundir.paths import CONFIG_FILE, SUMMARY_FILE, TRAIN_LOG

    path = Path(run_dir)
    if in_multirun() or not claimed_here(path) or not path.is_dir():
        return False
    no_work = {CONFIG_FILE.parts[0], str(SUMMARY_FILE), str(TRAIN_LOG)}
    if any(entry.name not in no_work for entry in path.iterdir()):
        return False
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir(path.parent)  # only when no other run is in that date folder
    return not path.exists()
