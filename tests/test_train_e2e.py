"""End to end: the real entry point, the files it writes, and what TensorBoard will show."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lossdiag.app.pipeline import train
from lossdiag.rundir.metrics_csv import read_history
from tests.conftest import read_events, run_module

EPOCHS = 2
PER_STAGE_SCALARS = [
    "loss",
    "loss_bounded",
    "acc",
    "f1_macro",
    "loss_median",
    "loss_p90",
    "loss_p99",
    "loss_max",
    "loss_top1pct_share",
    "n_above_cap",
]


@pytest.fixture(scope="module", params=["standard", "bounded"])
def cli_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    run_dir = tmp_path_factory.mktemp(f"run_{request.param}")
    proc = run_module(
        "src.train",
        f"loss={request.param}",
        f"trainer.max_epochs={EPOCHS}",
        "data.train_size=60",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return request.param, run_dir


@pytest.mark.slow
def test_cli_run_writes_checkpoints_config_and_metrics(cli_run: tuple[str, Path]) -> None:
    loss, run_dir = cli_run
    assert (run_dir / ".hydra" / "config.yaml").read_text().count(f"name: {loss}") == 1
    for name in ("best_val_acc.ckpt", "min_val_loss.ckpt", "last.ckpt"):
        ckpt = torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=False)
        cap = ckpt["state_dict"]["loss_cap"]
        assert torch.isfinite(cap) and cap > 0
    history = read_history(run_dir)
    assert history["epoch"] == [0.0, 1.0]
    assert history["train/loss_cap"][0] == pytest.approx(float(cap))


@pytest.mark.slow
def test_cli_run_tensorboard_has_every_tag_every_epoch(cli_run: tuple[str, Path]) -> None:
    _, run_dir = cli_run
    events = read_events(run_dir)
    tags = events.Tags()
    for stage in ("train", "val"):
        for name in PER_STAGE_SCALARS:
            tag = f"{stage}/{name}"
            assert tag in tags["scalars"], tag
            assert len(events.Scalars(tag)) == EPOCHS, tag
        hist = f"{stage}/loss_per_sample"
        assert hist in tags["histograms"], tags["histograms"]
        assert len(events.Histograms(hist)) == EPOCHS
        assert [h.step for h in events.Histograms(hist)] == list(range(EPOCHS))  # x-axis: the epoch
        assert [s.step for s in events.Scalars(f"{stage}/loss")] == list(range(EPOCHS))
    # per-class precision/recall/F1 live in reports/, not as dozens of scalar tags per epoch
    assert not [t for t in tags["scalars"] if "/recall/" in t or "/precision/" in t]
    assert len(events.Scalars("train/loss_cap")) == EPOCHS
    # the HParams tab: what runs are compared by, with the metrics to compare them on
    hparams = events.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
    assert b"optimizer.lr" in hparams["_hparams_/session_start_info"]
    assert b"val/loss_min" in hparams["_hparams_/experiment"]
    assert len(events.Scalars("val/acc_best")) == len(events.Scalars("val/loss_min")) == EPOCHS


def test_same_seed_same_metrics_different_seed_differs(make_cfg) -> None:
    first = train(make_cfg("seed=5", "callbacks=none", "~logger"))
    again = train(make_cfg("seed=5", "callbacks=none", "~logger"))
    other = train(make_cfg("seed=6", "callbacks=none", "~logger"))
    assert first == again
    assert first["val/loss"] != other["val/loss"]


@pytest.mark.slow
def test_default_run_reproduces_the_forum_phenomenon(make_cfg) -> None:
    """The shipped defaults: val CE ends >= 20% above its minimum while val accuracy holds."""
    std = read_history_of(make_cfg("callbacks=none", fast=False))
    low = min(range(len(std["val/loss"])), key=std["val/loss"].__getitem__)
    assert std["val/loss"][-1] >= 1.2 * std["val/loss"][low]
    assert std["val/acc"][-1] >= std["val/acc"][low] - 0.02
    # the bounded view of the same run hardly moves
    assert std["val/loss_bounded"][-1] <= 1.1 * min(std["val/loss_bounded"])


def read_history_of(cfg) -> dict[str, list[float]]:
    train(cfg)
    return read_history(cfg.paths.output_dir)


@pytest.mark.slow
def test_bounded_run_keeps_val_loss_bounded_flat(make_cfg) -> None:
    bounded = read_history_of(make_cfg("callbacks=none", "loss=bounded", fast=False))
    assert bounded["val/loss_bounded"][-1] <= 1.1 * min(bounded["val/loss_bounded"])
