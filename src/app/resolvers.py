"""Hydra resolvers and run-folder naming: ``${unique_dir:...}``, ``${safe_dirname:...}``; "are we in a sweep?".

Importing this module registers the resolvers used by ``hydra.run.dir`` and ``hydra.sweep.subdir`` in
``conf/train.yaml``. ``src.app.cli`` imports it, so every process that runs a job (the basic launcher's
own process, joblib workers, submitit jobs) has them before Hydra names the job folder.

Two runs started in the same second would otherwise write into the same ``<date>/<time>`` folder:
``unique_dir`` claims the folder with an atomic ``mkdir`` and, when it is taken, uses ``<time>-1``,
``<time>-2``, ... instead. Within one process the same base always maps to the same folder.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from omegaconf import OmegaConf

# file systems allow at most 255 bytes per path component; leave room for Hydra's own suffixes
MAX_DIRNAME_BYTES = 200
# overrides that say how jobs are launched or searched, not what one job computes: a job's folder
# name, a sweep report's grouping and a resumed single run all leave them out
LAUNCH_KEYS = frozenset({"launcher", "hparams_search"})
_UNSAFE = re.compile(r"[/\\\x00-\x1f]")


def safe_dirname(name: str) -> str:
    """``name`` usable as ONE folder name: path separators and control characters become ``_``,
    and a name longer than :data:`MAX_DIRNAME_BYTES` is cut and suffixed with a short hash of the
    full name (so two long names never collide). An empty name (no overrides) becomes ``default``.
    """
    safe = _UNSAFE.sub("_", str(name)) or "default"
    if safe in (".", ".."):
        safe = safe.replace(".", "_")
    if len(safe.encode("utf-8")) <= MAX_DIRNAME_BYTES:
        return safe
    digest = hashlib.sha1(safe.encode("utf-8")).hexdigest()[:10]
    head = safe.encode("utf-8")[: MAX_DIRNAME_BYTES - len(digest) - 1].decode("utf-8", errors="ignore")
    return f"{head}-{digest}"


def in_multirun() -> bool:
    """True inside a job launched by ``-m`` / ``hydra.mode=MULTIRUN`` (any launcher, any sweeper)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False
    return HydraConfig.get().mode == RunMode.MULTIRUN


_claimed: dict[str, str] = {}


def claim_unique_dir(base: str) -> str:
    """Create and return ``base`` or, if it exists, the first free ``base-1``, ``base-2``, ..."""
    if base in _claimed:
        return _claimed[base]
    Path(base).parent.mkdir(parents=True, exist_ok=True)
    candidate, n = base, 0
    while True:
        try:
            Path(candidate).mkdir()
            break
        except FileExistsError:
            n += 1
            candidate = f"{base}-{n}"
    _claimed[base] = candidate
    return candidate


def register_resolvers() -> None:
    """Make ``${unique_dir:...}`` and ``${safe_dirname:...}`` available to the configs (idempotent)."""
    if not OmegaConf.has_resolver("unique_dir"):
        OmegaConf.register_new_resolver("unique_dir", claim_unique_dir)
    if not OmegaConf.has_resolver("safe_dirname"):
        OmegaConf.register_new_resolver("safe_dirname", safe_dirname)


register_resolvers()
