"""Run folders that are never shared: ``${unique_dir:outputs/runs/<date>/<time>}``.

Two runs started in the same second would otherwise write into the same ``<date>/<time>`` folder.
The resolver claims the folder with an atomic ``mkdir`` and, when it is taken, uses
``<time>-1``, ``<time>-2``, ... instead. Within one process the same base always maps to the same
folder, however often Hydra resolves the config.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

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
    """Make ``${unique_dir:...}`` available to the configs (idempotent)."""
    if not OmegaConf.has_resolver("unique_dir"):
        OmegaConf.register_new_resolver("unique_dir", claim_unique_dir)
