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

# the caches of this test session (paths.cache_dir, default $LOSSDIAG_CACHE_DIR: the decode cache of image folders
# and optimizer.lr=auto's range tests), in-process and in the entry points it runs: a fresh temporary folder, never
# the repository's outputs/cache or a user's; their results are deterministic, so sharing them changes no number
TEST_CACHE_DIR = tempfile.mkdtemp(prefix="lossdiag-test-cache-")
os.environ["LOSSDIAG_CACHE_DIR"] = TEST_CACHE_DIR
atexit.register(shutil.rmtree, TEST_CACHE_DIR, ignore_errors=True)


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


def child_env() -> dict[str, str]:
    """The environment of a subprocess a test starts: this checkout's code first (its ``src/`` and root, whatever
    the interpreter's editable install points at), unbuffered output, one thread."""
    path = os.pathsep.join(p for p in (str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def run_module(
    module: str, *args: str, cwd: Path = ROOT, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m <module> <args>`` as the user would (:func:`child_env`, updated by ``env``); the completed
    process."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env={**child_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_spawned(
    module: str, *args: str, cwd: Path = ROOT, output: Path | None = None
) -> subprocess.CompletedProcess:
    """:func:`run_module` for a run whose trainer spawns processes (ddp_spawn + gloo). Seen about once in 15
    runs: a spawned gloo process aborts in C++ ("terminate called without an active exception", SIGABRT) with no
    Python error; that crash of the process machinery gets one fresh attempt (``output``, the run's folder, is
    removed first)."""
    proc = run_module(module, *args, cwd=cwd)
    if proc.returncode != 0 and "terminated with signal SIGABRT" in proc.stderr:
        if output is not None:
            shutil.rmtree(output, ignore_errors=True)
        proc = run_module(module, *args, cwd=cwd)
    return proc


def read_events(run_dir: str | Path) -> Any:
    """Every TensorBoard event under ``run_dir``, nothing sampled away (scalars, histograms, images, tensors)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    guidance = {"scalars": 0, "histograms": 0, "images": 0, "tensors": 0}
    return EventAccumulator(str(run_dir), size_guidance=guidance).Reload()


def read_images(events: Any) -> dict[str, list[tuple[int, list[bytes]]]]:
    """The images of :func:`read_events`' ``events``: tag -> ``[(step, [PNG of each sample]), ...]``.

    TensorBoard's image format: a string tensor ``[width, height, png, png, ...]`` (one PNG per sample).
    """
    return {
        tag: [(e.step, list(e.tensor_proto.string_val[2:])) for e in events.Tensors(tag)]
        for tag in events.PluginTagToContent("images")
    }


def png_pixels(png: bytes) -> Any:
    """A PNG's pixels as an ``(H, W, 3)`` uint8 array."""
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def write_tree(root: Path, files: dict[str, str]) -> None:
    """Write ``{relative path: text}`` under ``root`` (texts dedented): a small project made by a test."""
    import textwrap

    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
