"""Resuming an interrupted run in its own folder, and checking checkpoints before Lightning loads them.

``python -m src.train resume=<run dir>`` re-runs the command that created ``<run dir>`` (its
``.hydra/overrides.yaml``) in that same folder (``hydra.run.dir``) from its
``checkpoints/last.ckpt`` (``ckpt_path``). Lightning restores weights, optimizer, epoch and step,
the bounded-loss cap (buffer ``loss_cap``) and ``val/acc_best``; the shuffle order depends only on
seed and epoch, so the resumed run ends with the same numbers as an uninterrupted one.
Overrides given next to ``resume=`` win over the recorded ones (e.g. ``trainer.max_epochs=200``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lossdiag.app.resolvers import LAUNCH_KEYS
from lossdiag.errors import UserError
from lossdiag.rundir.metrics_csv import read_history
from lossdiag.rundir.paths import CONFIG_FILE, LAST_CKPT, OVERRIDES_FILE
from lossdiag.rundir.status import COMPLETE, read_summary

RESUME_KEY = "resume"


def override_key(override: str) -> str:
    """``"+loss.k=2"`` -> ``"loss.k"``; ``"loss=bounded"`` -> ``"loss"``."""
    return override.split("=", 1)[0].lstrip("~+")


def quote(value: str) -> str:
    """``value`` as a single-quoted Hydra override value (any character allowed)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def expand_resume(argv: list[str]) -> list[str]:
    """Replace ``resume=<run dir>`` in the command-line arguments by what it means.

    Arguments without ``resume=`` come back unchanged.
    """
    given = [arg for arg in argv if arg.startswith(f"{RESUME_KEY}=")]
    if not given:
        return argv
    if len(given) > 1 or any(arg in ("-m", "--multirun") for arg in argv):
        raise UserError(
            "resume= takes one run folder and works for single runs only: resume each run of a sweep on its own"
        )
    run_dir = Path(given[0].split("=", 1)[1]).expanduser()
    if not run_dir.is_dir():
        raise UserError(
            f"resume={run_dir} is not a folder: give a run folder such as outputs/runs/<date>/<time>"
        )
    overrides_file = run_dir / OVERRIDES_FILE
    if not overrides_file.is_file():
        raise UserError(
            f"resume={run_dir} has no {OVERRIDES_FILE}: give a run folder written by python -m src.train"
        )
    ckpt = run_dir / LAST_CKPT
    if not ckpt.is_file():
        raise UserError(
            f"resume={run_dir} has no {LAST_CKPT} (it stopped before its first epoch ended): start it again without resume="
        )
    from omegaconf import OmegaConf

    recorded = [str(o) for o in OmegaConf.load(overrides_file)]
    extra = [arg for arg in argv if arg not in given]
    _refuse_finished(run_dir, extra)
    _refuse_rescheduling(run_dir, extra)
    replaced = {override_key(o) for o in extra if "=" in o and not o.startswith("-")} | {
        "hydra.run.dir",
        "ckpt_path",
    }
    # a resumed job is one single run, even when it was a job of a sweep or search
    kept = [o for o in recorded if override_key(o) not in replaced | LAUNCH_KEYS]
    return [*kept, *extra, f"hydra.run.dir={quote(str(run_dir))}", f"ckpt_path={quote(str(ckpt))}"]


def resume_command(cfg: Any) -> str:
    """The command that continues the run ``cfg`` describes."""
    return f"python -m src.train {RESUME_KEY}={cfg.paths.output_dir}"


def _refuse_rescheduling(run_dir: Path, extra: list[str]) -> None:
    """A learning-rate schedule comes back from the checkpoint as planned for the first length
    (e.g. cosine's ``T_max``), so a resume that changes ``trainer.max_epochs`` would not follow it."""
    from omegaconf import OmegaConf

    config = run_dir / CONFIG_FILE
    if not config.is_file() or OmegaConf.select(OmegaConf.load(config), "scheduler") is None:
        return
    if any(override_key(arg) == "trainer.max_epochs" for arg in extra):
        raise UserError(
            f"resume={run_dir} uses a learning-rate schedule planned for its own trainer.max_epochs, which a "
            "resume cannot change: resume without trainer.max_epochs, or start a new, longer run"
        )


def _refuse_finished(run_dir: Path, extra: list[str]) -> None:
    """A complete run resumed with the same ``trainer.max_epochs`` would only rewrite its summary."""
    from omegaconf import OmegaConf

    summary = read_summary(run_dir)
    config = run_dir / CONFIG_FILE
    if not summary or summary.get("status") != COMPLETE or not config.is_file():
        return
    epochs = OmegaConf.select(OmegaConf.load(config), "trainer.max_epochs")
    for arg in extra:
        if override_key(arg) == "trainer.max_epochs":
            epochs = OmegaConf.from_dotlist([arg.lstrip("+")]).trainer.max_epochs
    try:
        done = len(read_history(run_dir)["epoch"])
    except (OSError, ValueError):
        return
    if isinstance(epochs, int) and done >= epochs:
        raise UserError(
            f"resume={run_dir} already finished its {done} epochs: add trainer.max_epochs=<more than {done}> "
            "to train it longer"
        )
