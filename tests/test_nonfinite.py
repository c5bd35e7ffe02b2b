"""A run whose loss turns NaN/inf stops with epoch and step, keeping what it wrote before."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from src.callbacks import LossDiagnosis
from src.errors import UserError
from src.rundir.metrics_csv import read_history
from tests.conftest import run_module


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(make_cfg, tmp_path: Path) -> None:
    from src.app.pipeline import train

    cfg = make_cfg(
        "trainer.max_epochs=3",
        "+callbacks.poison._target_=tests.probes.PoisonWeights",
        "+callbacks.poison.epoch=1",
    )
    with pytest.raises(UserError, match=r"training loss became NaN/inf in epoch 1, step 0 of that epoch") as err:
        train(cfg)
    assert "last.ckpt" in str(err.value) and "lower optimizer.lr" in str(err.value)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    history = read_history(tmp_path)
    assert history["epoch"] == [0.0] and history["val/loss"][0] > 0
    assert list(tmp_path.glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_huge_learning_rate_from_the_command_line(tmp_path: Path) -> None:
    # SGD with lr=1e6 stays finite on this model (losses ~1e6); 1e20 overflows in the first steps
    proc = run_module("src.train", "debug=fast", "optimizer.lr=1e20", "~callbacks.progress_bar", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: training loss became NaN/inf in epoch 0, step 1"), proc.stderr[-1500:]
    assert "no checkpoint had been saved yet" in error and "lower optimizer.lr (it was 1e+20)" in error


def test_loss_histograms_skip_non_finite_values(tmp_path: Path) -> None:
    logits = torch.tensor([[2.0, 0.0], [float("nan"), 0.0], [float("inf"), 0.0], [0.0, 3.0], [1.0, 1.0]])
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 0, 1, 1, 0]), reduction="none")
    tb = TensorBoardLogger(tmp_path, name="", version="")
    trainer = SimpleNamespace(global_rank=0, loggers=[tb], current_epoch=3, sanity_checking=False)
    logged = LossDiagnosis(tmp_path)._log_distribution(trainer, "val", ce, 1.0)
    tb.experiment.flush()
    assert logged["val/n_above_cap"] == 2  # the NaN and the inf loss
    assert torch.isfinite(logged["val/loss_max"])
    assert list(tmp_path.glob("events.out.tfevents.*"))
