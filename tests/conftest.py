"""Shared fixtures: compose the real Hydra config in-process, with outputs under ``tmp_path``."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

torch.set_num_threads(1)  # tests are tiny; avoid oversubscribing the 2 CI cores

# optimizer.lr=auto's range-test cache (conf/paths/default.yaml): one per test session, outside the repository,
# for in-process configs and subprocesses alike; its results are deterministic, so sharing it changes no number
LR_CACHE = Path(tempfile.mkdtemp(prefix="lossdiag-lr-cache-"))
os.environ["LOSSDIAG_CACHE_DIR"] = str(LR_CACHE)
atexit.register(shutil.rmtree, LR_CACHE, ignore_errors=True)


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg("loss=bounded", ...)``: the composed train config, writing under ``tmp_path``.

    Uses the ``debug=fast`` profile (tiny data, 2 epochs) unless ``fast=False`` or a ``debug=`` override is given,
    and turns off the progress bar.
    """

    def _make(*overrides: str, config_name: str = "train", fast: bool = True) -> DictConfig:
        extra = ["debug=fast"] if fast and not any(o.startswith("debug=") for o in overrides) else []
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=[*extra, *overrides, f"paths.output_dir={tmp_path}"])
        with open_dict(cfg):
            if "progress_bar" in cfg.get("callbacks", {}):
                del cfg.callbacks.progress_bar
        return cfg

    return _make


def run_module(
    module: str, *args: str, cwd: Path = ROOT, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m <module> <args>`` as the user would (``env``: extra environment); the completed process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_events(run_dir: str | Path) -> Any:
    """Every TensorBoard event under ``run_dir``, nothing sampled away (scalars, histograms, images, tensors)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    guidance = {"scalars": 0, "histograms": 0, "images": 0, "tensors": 0}
    return EventAccumulator(str(run_dir), size_guidance=guidance).Reload()
