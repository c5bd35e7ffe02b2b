"""The ``experiment`` presets run for real."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from lossdiag.app.pipeline import train
from lossdiag.rundir.metrics_csv import read_history
from tests.conftest import run_module
from tests.test_data import _write_folder


def test_forum_experiment_trains_shallownet_on_an_rgb_image_folder(make_cfg, tmp_path: Path) -> None:
    root = tmp_path / "animals"
    _write_folder(root, {"cats": 8, "dogs": 8, "pandas": 8})
    cfg = make_cfg("experiment=forum", f"data.root={root}", "data.train_size=null", "callbacks=none")
    assert (cfg.data.image_size, cfg.data.channels, cfg.optimizer.lr) == (32, 3, 0.01)
    metrics = train(cfg)
    assert 0 <= metrics["val/acc"] <= 1 and math.isfinite(metrics["val/loss"])
    assert read_history(tmp_path)["epoch"] == [0.0, 1.0]


@pytest.mark.slow
def test_compare_losses_sweep_and_its_report(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_module(
        "src.train",
        "-m",
        "experiment=compare_losses",
        "hydra.sweeper.params.seed=0",  # one seed instead of three: 2 jobs
        "debug=fast",
        "threads=1",
        "~callbacks.progress_bar",
        "callbacks.diagnosis.figures_every_n_epochs=0",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the experiment sweeps loss (seed is fixed here): its jobs are named by the loss alone
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["loss=bounded", "loss=standard"]
    report = run_module("src.report", str(sweep))
    assert report.returncode == 0, report.stderr[-3000:]
    with (sweep / "report.csv").open(newline="") as handle:
        rows = {r["loss"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"standard", "bounded"}
    for row in rows.values():
        assert row["n"] == "1"
        assert 0 < float(row["last_val_ece_mean"]) < 1  # the diagnosis callback's val/ece, aggregated


@pytest.mark.parametrize(
    ("override", "factor"),
    [
        ("scheduler.T_max=2", 0.5),  # one epoch into a 2-epoch cosine: lr * (1 + cos(pi / 2)) / 2
        ("scheduler.step_size=1", 0.1),  # StepLR: lr * gamma after one epoch
    ],
)
def test_scheduler_changes_the_learning_rate_each_epoch(make_cfg, override: str, factor: float) -> None:
    from lossdiag.app import pipeline

    scheduler = "cosine" if "T_max" in override else "step"
    overrides = ("optimizer.lr=0.1", "trainer.max_epochs=1", "callbacks=none", "~logger")
    cfg = make_cfg(f"scheduler={scheduler}", override, *overrides)
    pipeline.prepare(cfg)
    dm = pipeline.build_datamodule(cfg)
    trainer = pipeline.build_trainer(cfg)
    trainer.fit(pipeline.build_module(cfg, dm), datamodule=dm)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * factor)


def test_debug_profile_writes_a_profiler_report(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("debug=profile", "trainer.max_epochs=1", "callbacks=none")
    train(cfg)
    report = (tmp_path / "fit-profile.txt").read_text()
    assert "run_training_epoch" in report and "Total" in report


def test_debug_overfit_fits_its_tiny_training_set(make_cfg) -> None:
    metrics = train(make_cfg("debug=overfit", "callbacks=none", "~logger"))
    assert metrics["train/acc"] == 1.0 and metrics["train/loss"] < 0.05
