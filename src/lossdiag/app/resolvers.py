"""Hydra resolvers and run-folder naming: ``${unique_dir:...}``, ``${safe_dirname:...}``,
``${run_suffix:...}``; "are we in a sweep?".

Importing this module registers the resolvers used by ``hydra.run.dir`` and ``hydra.sweep.subdir`` in
``conf/train.yaml``. ``lossdiag.app.cli`` imports it, so every process that runs a job (the basic launcher's
own process, joblib workers, submitit jobs) has them before Hydra names the job folder.

A single run's folder is ``<date>/<time>_<overrides>`` (``run_suffix``; the plain default run is just
``<time>``), so TensorBoard's run list says what differs. Two runs started in the same second would
otherwise write into the same folder: ``unique_dir`` claims the folder with an atomic ``mkdir`` and,
when it is taken, uses ``<time>-1_<overrides>``, ``<time>-2_<overrides>``, ... instead. Within one
process the same name always maps to the same folder.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from omegaconf import OmegaConf

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
    """Make ``${unique_dir:...}``, ``${safe_dirname:...}`` and ``${run_suffix:...}`` available (idempotent)."""
    for name, resolver in (
        ("unique_dir", claim_unique_dir),
        ("safe_dirname", safe_dirname),
        ("run_suffix", run_suffix),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


register_resolvers()
