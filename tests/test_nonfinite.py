"""A run whose loss turns NaN/inf stops with epoch and step, keeping what it wrote before."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.compat.proto.summary_pb2 import Summary

from lossdiag.callbacks.tensorboard import histogram_values
from lossdiag.errors import UserError
from lossdiag.rundir.metrics_csv import read_history
from tests.conftest import read_events, run_module


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(make_cfg, tmp_path: Path) -> None:
    from lossdiag.app.pipeline import train

    cfg = make_cfg(
        "trainer.max_epochs=3",
        "+callbacks.poison._target_=tests.probes.PoisonWeights",
        "+callbacks.poison.epoch=1",
    )
    with pytest.raises(
        UserError, match=r"training loss became NaN/inf in epoch 1, step 0 of that epoch"
    ) as err:
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
    proc = run_module(
        "src.train", "debug=fast", "optimizer.lr=1e20", "~callbacks.progress_bar", f"hydra.run.dir={tmp_path}"
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: training loss became NaN/inf in epoch 0, step 1"), proc.stderr[-1500:]
    assert "no checkpoint had been saved yet" in error and "lower optimizer.lr (it was 1e+20)" in error


def test_loss_histograms_and_tails_skip_non_finite_values(tmp_path: Path) -> None:
    from lossdiag.functional.breakdown import loss_distributions

    logits = torch.tensor([[2.0, 0.0], [float("nan"), 0.0], [float("inf"), 0.0], [0.0, 3.0], [1.0, 1.0]])
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 0, 1, 1, 0]), reduction="none")
    clean = ce.nan_to_num(nan=0.5, posinf=0.5)
    # a block of epochs: one with NaN/inf losses (its own path) and a clean one (the vectorised path)
    logged = loss_distributions(torch.stack([ce, clean]), 1.0)
    assert logged["n_above_cap"].tolist() == [2, 0]  # the NaN and the inf loss
    finite = ce[torch.isfinite(ce)].double()
    assert logged["loss_max"][0] == finite.max() and logged["loss_median"][0] == finite.median()
    assert logged["loss_max"][1] == clean.double().max()
    tb = TensorBoardLogger(tmp_path, name="", version="")
    (histograms,) = histogram_values(
        {"val": ([3], ce.numpy()[None]), "train": ([3], clean.numpy()[None])}
    ).values()
    tb.experiment.file_writer.add_summary(Summary(value=histograms), global_step=3)
    tb.experiment.flush()
    events = read_events(tmp_path)
    (val,) = events.Histograms("val/loss_per_sample")
    assert val.step == 3 and val.histogram_value.num == 3  # the three finite losses
    assert events.Histograms("train/loss_per_sample")[0].histogram_value.num == 5
