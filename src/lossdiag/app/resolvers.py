"""Hydra resolvers and folder naming: ``${unique_dir:...}``, ``${safe_dirname:...}``, ``${run_suffix:...}``,
``${sweep_job_dirname:...}``, ``${evaluation_suffix:...}``; "are we in a sweep?".

Importing this module registers the resolvers used by ``hydra.run.dir`` and ``hydra.sweep.subdir`` in
``conf/train.yaml`` and ``conf/evaluate.yaml``. ``lossdiag.app.cli`` imports it, so every process that runs a
job (the basic launcher's own process, joblib workers, submitit jobs) has them before Hydra names the job folder.

TensorBoard names a run by its folder, so folder names say what differs:

- a single run: ``<date>/<time>_<overrides>`` (``run_suffix``; the plain default run is just ``<time>``). Two
  runs started in the same second would otherwise write into the same folder: ``unique_dir`` claims the folder
  with an atomic ``mkdir`` and, when it is taken, uses ``<time>-1_<overrides>``, ``<time>-2_<overrides>``, ...
  instead. Within one process the same name always maps to the same folder.
- a sweep job: only its values of the keys the sweep varies (``sweep_job_dirname``): what every job shares
  (``data.root=...,experiment=remedies``) is left out, so the part that differs is never cut off. The launching
  process records those keys in the sweep folder before any job starts (:class:`lossdiag.app.hydra_callbacks.
  SweepJobNames`), so jobs running in other processes (joblib, submitit, Optuna trials) name themselves alike.
- an evaluation: ``<date>/<time>_<checkpoint>_of_<run>[_on_<folder>]`` (``evaluation_suffix``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from lossdiag.rundir.paths import CHECKPOINTS_DIR, SWEEP_KEYS_FILE

if TYPE_CHECKING:
    from hydra.core.override_parser.types import Override

# file systems allow at most 255 bytes per path component; leave room for Hydra's own suffixes
MAX_DIRNAME_BYTES = 200
# the overrides part of a single run's folder name: short enough to read in TensorBoard's run list
MAX_RUN_SUFFIX_BYTES = 100
# overrides that say how jobs are launched or searched, not what one job computes: a job's folder
# name, a sweep report's grouping and a resumed single run all leave them out
LAUNCH_KEYS = frozenset({"launcher", "hparams_search"})
_UNSAFE = re.compile(r"[/\\\x00-\x1f]")


def safe_dirname(name: str, max_bytes: int = MAX_DIRNAME_BYTES) -> str:
    """``name`` usable as ONE folder name: path separators and control characters become ``_``,
    and a name longer than ``max_bytes`` is cut and suffixed with a short hash of the
    full name (so two long names never collide). An empty name (no overrides) becomes ``default``.
    """
    safe = _UNSAFE.sub("_", str(name)) or "default"
    if safe in (".", ".."):
        safe = safe.replace(".", "_")
    if len(safe.encode("utf-8")) <= max_bytes:
        return safe
    digest = hashlib.sha1(safe.encode("utf-8")).hexdigest()[:10]
    head = safe.encode("utf-8")[: max_bytes - len(digest) - 1].decode("utf-8", errors="ignore")
    return f"{head}-{digest}"


def _abbreviate(item: str) -> str:
    """``callbacks.diagnosis.worst_k=8`` -> ``c.d.worst_k=8``: parent keys by their first letter."""
    key, sep, value = item.partition("=")
    *parents, last = key.split(".")
    return ".".join([*(p[:1] for p in parents), last]) + sep + value


def run_suffix(overrides: str) -> str:
    """``"_loss=bounded"`` for a single run's folder name (``hydra.job.override_dirname``); ``""`` for none.

    Longer than :data:`MAX_RUN_SUFFIX_BYTES`: parent keys are abbreviated (``t.max_epochs=3``), then the
    rest is cut as :func:`safe_dirname` cuts.
    """
    if not overrides:
        return ""
    if len(overrides.encode("utf-8")) > MAX_RUN_SUFFIX_BYTES:
        overrides = ",".join(_abbreviate(item) for item in overrides.split(","))
    return f"_{safe_dirname(overrides, MAX_RUN_SUFFIX_BYTES)}"


def _parse(overrides: Sequence[str]) -> list[Override]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides([str(o) for o in overrides])


def _values(override: Override) -> int:
    """How many distinct values a sweep override takes (2 for a ``glob`` of config options this parser cannot list)."""
    from hydra.errors import HydraException

    if not override.is_discrete_sweep():
        return 2  # interval(...): a continuous range
    try:
        return len(set(override.sweep_string_iterator()))
    except HydraException:  # glob(...) lists the options of a config group, which needs Hydra's config loader
        return 2


def varying_keys(overrides: Sequence[str], exclude: Iterable[str] = ()) -> list[str]:
    """The keys a sweep's jobs differ by, sorted: ``overrides`` whose value is a sweep of more than one value
    (``a,b``, ``range(3)``, ``choice(...)``, Optuna's ``interval(...)``).

    ``overrides`` are what the sweeper expands: ``hydra.sweeper.params`` as ``key=value``, then the command line;
    a later override of a key replaces an earlier one, as in Hydra's basic and Optuna sweepers. Keys in ``exclude``
    (``hydra.job.config.override_dirname.exclude_keys``) are left out, as from Hydra's own ``override_dirname``.
    """
    final = {override.get_key_element(): override for override in _parse(overrides)}
    skip = set(exclude)
    return sorted(
        key
        for key, override in final.items()
        if override.key_or_group not in skip and override.is_sweep_override() and _values(override) > 1
    )


def write_varying_keys(sweep_dir: str | Path, keys: Sequence[str]) -> Path:
    """Record a sweep's :func:`varying_keys` in its folder (``varying_keys.yaml``), for its jobs to name themselves by."""
    path = Path(sweep_dir) / SWEEP_KEYS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create({"varying": list(keys)}), path)
    return path


def read_varying_keys(sweep_dir: str | Path) -> list[str] | None:
    """The keys :func:`write_varying_keys` recorded for the sweep in ``sweep_dir``; ``None`` when none were."""
    path = Path(sweep_dir) / SWEEP_KEYS_FILE
    if not path.is_file():
        return None
    return [str(key) for key in OmegaConf.load(path).get("varying") or []]


def sweep_job_dirname(sweep_dir: str, task_overrides: Sequence[str], override_dirname: str = "") -> str:
    """A sweep job's folder name: its overrides of the keys the sweep varies, sorted, as ``key=value`` joined by
    ``,`` (``loss=bounded,seed=1``), made safe by :func:`safe_dirname`.

    ``task_overrides`` are the job's (``hydra.overrides.task``). Without recorded keys, or when the sweep varies
    nothing (a multirun of one job), the job's whole ``override_dirname``, as Hydra names it.
    """
    keys = set(read_varying_keys(sweep_dir) or ())
    lines = [str(o.input_line) for o in _parse(task_overrides) if o.get_key_element() in keys] if keys else []
    return safe_dirname(",".join(sorted(lines)) if lines else override_dirname)


def evaluation_suffix(ckpt_path: str | None, data_root: str | None = None) -> str:
    """``"_best_val_acc_of_10-26-53_loss=bounded"`` for ``ckpt_path=<run>/checkpoints/best_val_acc.ckpt`` (the checkpoint, then the
    run it comes from), plus ``"_on_<folder>"`` when ``data.root`` is another image folder than the run's own;
    ``""`` without a checkpoint. For an evaluation's folder name (``conf/evaluate.yaml``).
    """
    from lossdiag.app.run_config import other_folder  # which imports this module (LAUNCH_KEYS, via resume)

    if not ckpt_path:
        return ""
    ckpt = Path(str(ckpt_path)).expanduser()
    name = ckpt.stem
    if ckpt.parent.name == CHECKPOINTS_DIR.name and ckpt.parent.parent.name:
        name += f"_of_{ckpt.parent.parent.name}"
    folder = other_folder(ckpt, data_root)
    if folder is not None:
        name += f"_on_{folder.name}"
    return f"_{safe_dirname(name, MAX_DIRNAME_BYTES - 20)}"  # room for <time>-<n>_


def in_multirun() -> bool:
    """True inside a job launched by ``-m`` / ``hydra.mode=MULTIRUN`` (any launcher, any sweeper)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False
    return HydraConfig.get().mode == RunMode.MULTIRUN


_claimed: dict[tuple[str, str], str] = {}


def claim_unique_dir(base: str, suffix: str = "") -> str:
    """Create and return ``base + suffix`` or, if it exists, the first free ``base-1 + suffix``, ``base-2 + suffix``, ..."""
    key = (base, suffix)
    if key in _claimed:
        return _claimed[key]
    Path(base).parent.mkdir(parents=True, exist_ok=True)
    candidate, n = base + suffix, 0
    while True:
        try:
            Path(candidate).mkdir()
            break
        except FileExistsError:
            n += 1
            candidate = f"{base}-{n}{suffix}"
    _claimed[key] = candidate
    return candidate


def claimed_here(path: str | Path) -> bool:
    """Whether this process created the run folder ``path`` (through ``${unique_dir:...}``)."""
    resolved = Path(path).resolve()
    return any(Path(p).resolve() == resolved for p in _claimed.values())


def register_resolvers() -> None:
    """Make this module's resolvers (``${unique_dir:...}``, ...) available (idempotent)."""
    for name, resolver in (
        ("unique_dir", claim_unique_dir),
        ("safe_dirname", safe_dirname),
        ("run_suffix", run_suffix),
        ("sweep_job_dirname", sweep_job_dirname),
        ("evaluation_suffix", evaluation_suffix),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


register_resolvers()
