"""What a checkpoint's training run was configured with, read back for ``src.evaluate``.

A checkpoint at ``<run>/checkpoints/x.ckpt`` has its run's config at ``<run>/.hydra/config.yaml`` and the
config-group options it was composed from (``data: folder``, ``loss: bounded``) in ``<run>/.hydra/hydra.yaml``.
Light (no torch): :func:`with_run_groups` runs on the command line before Hydra composes anything.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lossdiag import CONF_DIR
from lossdiag.app.resume import override_key
from lossdiag.rundir.paths import CONFIG_FILE, HYDRA_FILE

RUN_GROUPS = ("data", "model", "loss")  # config groups src.evaluate takes from the run
CKPT_KEY = "ckpt_path"


def run_dir_of(ckpt: str | Path) -> Path:
    """``<run>`` of ``<run>/checkpoints/<name>.ckpt``."""
    return Path(ckpt).expanduser().parent.parent


def run_cfg(ckpt: str | Path) -> DictConfig | None:
    """The run's saved config, or ``None`` when the checkpoint is not inside a run folder."""
    path = run_dir_of(ckpt) / CONFIG_FILE
    if not path.is_file():
        return None
    cfg = OmegaConf.load(path)
    return cfg if isinstance(cfg, DictConfig) else None


def other_folder(ckpt: str | Path, root: str | Path | None) -> Path | None:
    """The image folder ``root`` (``data.root``), resolved, when it is not the folder the checkpoint's run trained on.

    ``None`` for no ``root``, the run's own folder, or a checkpoint whose run config is unknown (outside its run
    folder: then the configured data is split as in training).
    """
    run = run_cfg(ckpt)
    if root is None or run is None:
        return None
    run_root = OmegaConf.select(run, "data.root", default=None)
    here = Path(str(root)).expanduser().resolve()
    if run_root is not None and Path(str(run_root)).expanduser().resolve() == here:
        return None
    return here


def run_choices(ckpt: str | Path) -> dict[str, str]:
    """The run's config-group options (``{"data": "folder", ...}``) for :data:`RUN_GROUPS`; ``{}`` if unknown."""
    path = run_dir_of(ckpt) / HYDRA_FILE
    if not path.is_file():
        return {}
    choices = OmegaConf.select(OmegaConf.load(path), "hydra.runtime.choices", default=None)
    if choices is None:
        return {}
    return {g: str(choices[g]) for g in RUN_GROUPS if choices.get(g) not in (None, "null")}


def with_run_groups(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` with ``<group>=<the run's option>`` added for each run group the command line leaves out.

    So ``data.root=<folder>`` composes for a folder run without repeating ``data=folder``. Returns
    ``(argv, added)``; ``added`` are not the user's choices (:func:`lossdiag.app.evaluate.with_run_config`
    must not treat them as a replacement of the run's group).
    """
    given = {override_key(a) for a in argv if "=" in a and not a.startswith("-")}
    ckpt = next((a.split("=", 1)[1] for a in argv if override_key(a) == CKPT_KEY and "=" in a), None)
    if not ckpt:
        return argv, []
    added = [
        f"{group}={choice}"
        for group, choice in run_choices(ckpt).items()
        if group not in given and (CONF_DIR / group / f"{choice}.yaml").is_file()
    ]
    return [*argv, *added], added
