"""What keeps training fast: Lightning's logging fast path, contiguous image tensors, and a torch-free start-up."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.trainer.connectors.logger_connector.result import _Metadata, _ResultMetric
from PIL import Image

from src import speedups
from src.images import decode_folder
from src.pipeline import train

ROOT = Path(__file__).resolve().parents[1]


def _result_metric() -> _ResultMetric:
    metric = _ResultMetric(_Metadata(fx="on_train_epoch_end", name="train/acc"), is_tensor=True)
    metric.update(torch.tensor(0.5), batch_size=1)
    return metric


def test_install_is_idempotent_and_keeps_lightnings_to_reachable() -> None:
    assert speedups.install()
    patched = _ResultMetric.to
    assert speedups.install()
    assert _ResultMetric.to is patched
    assert patched.__wrapped__ is not patched  # Lightning's own implementation, used for real moves


def test_fast_path_skips_only_same_device_moves() -> None:
    speedups.install()
    metric = _result_metric()
    meta = metric.meta
    assert metric.to(torch.device("cpu")) is metric
    assert metric.meta is meta  # no walk/deep copy happened
    metric.to(torch.device("meta"))  # another device: Lightning's implementation moves the states
    assert metric.value.device.type == "meta"
    assert metric.cumulated_batch_size.device.type == "meta"


def test_logged_metrics_are_identical_with_and_without_the_fast_path(make_cfg, monkeypatch) -> None:
    cfg = make_cfg("callbacks=none", "~logger")
    fast = train(cfg)
    monkeypatch.setattr(_ResultMetric, "to", _ResultMetric.to.__wrapped__)
    slow = train(cfg)
    assert fast.keys() == slow.keys()
    assert len(fast) > 20  # the per-class metrics are there
    for key, value in fast.items():
        assert value == pytest.approx(slow[key], nan_ok=True), key
    assert not any(math.isnan(v) for k, v in fast.items() if k.endswith("/loss"))


def test_decoded_images_are_contiguous_nchw(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    x, y, _ = decode_folder(tmp_path, ["a", "b"], image_size=4, channels=3)
    assert x.shape == (6, 3, 4, 4) and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert x.is_contiguous()  # not channels-last: slices of it feed the conv layer every step
    assert x[2:5].is_contiguous()


@pytest.mark.parametrize("flag", ["--help", "--cfg=job"])
def test_cli_start_up_imports_no_torch_or_lightning(flag: str) -> None:
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['src.train', {flag!r}]\n"
        "try:\n    runpy.run_module('src.train', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'lightning', 'torchvision', 'torchmetrics') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout, out.stdout[-2000:]


def test_plain_callbacks_are_the_defaults_without_the_diagnosis_ones(make_cfg) -> None:
    default, plain = make_cfg("callbacks=default").callbacks, make_cfg("callbacks=plain").callbacks
    kept = {k: v for k, v in plain.items() if v is not None}
    assert kept and all(default[k] == v for k, v in kept.items())  # same checkpoint/progress settings
    dropped = {default[k]._target_ for k in default if k not in kept}
    assert dropped and all(t.startswith(("src.callbacks.", "src.diagnosis_callbacks.")) for t in dropped)


def test_checkpoint_monitor_candidates_equal_lightnings_copies() -> None:
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import ModelCheckpoint

    speedups.install()
    fast = ModelCheckpoint._monitor_candidates
    assert fast.__wrapped__ is not fast
    metrics = {"val/acc": torch.tensor(0.9), "train/loss": torch.tensor(0.25), "epoch": torch.tensor(3.0)}
    trainer = SimpleNamespace(callback_metrics=metrics, current_epoch=3, global_step=40)
    cb = ModelCheckpoint(monitor="val/acc")
    got, want = fast(cb, trainer), fast.__wrapped__(cb, trainer)
    assert got.keys() == want.keys() == {"val/acc", "train/loss", "epoch", "step"}
    for key in want:
        assert torch.equal(got[key], want[key]) and got[key].dtype == want[key].dtype, key
    assert got["val/acc"] is not metrics["val/acc"]  # a copy, as deepcopy makes
    metrics["grad"] = torch.ones(1, requires_grad=True)  # needs autograd: Lightning's own code path
    assert fast(cb, trainer)["grad"].requires_grad
