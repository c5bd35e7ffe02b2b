"""What keeps training fast without touching Lightning's internals: uint8 contiguous images, a torch-free start-up."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lossdiag.data.images import decode_folder

ROOT = Path(__file__).resolve().parents[1]


def test_decoded_images_are_contiguous_nchw(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)).save(
                tmp_path / name / f"{i}.png"
            )
    x, y, _ = decode_folder(tmp_path, ["a", "b"], image_size=4, channels=3)
    assert x.shape == (6, 3, 4, 4) and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert x.dtype == torch.uint8  # 4x less memory than float32; converted per batch
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
    assert dropped == {"lossdiag.callbacks.LossDiagnosis"}


def test_no_module_patches_or_imports_lightning_internals() -> None:
    """Public APIs only: no ``from lightning... import _private``, no assignment to a Lightning class attribute."""
    private_import = re.compile(r"from (lightning|torchmetrics)\S* import [^\n]*\b_[A-Za-z]")
    patch = re.compile(r"^\s*(ModelCheckpoint|Trainer|LightningModule|Callback|Logger|_\w+)\.\w+\s*=", re.M)
    offenders = [
        str(f.relative_to(ROOT))
        for f in sorted((ROOT / "src").rglob("*.py"))
        if private_import.search(f.read_text()) or patch.search(f.read_text()) or "setattr(" in f.read_text()
    ]
    assert offenders == []
