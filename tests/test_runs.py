"""Finding and reading run folders (lossdiag.app.notebook), markdown tables, curve figures: no training needed."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from lossdiag.app.notebook import RUN_DIR_ENV, is_run, latest_run, resolve_run_dir, run_config, value_at_epoch
from lossdiag.diagnosis.samples import SAMPLES_FILE
from lossdiag.errors import UserError
from lossdiag.render.history_figures import curves_figure
from lossdiag.render.tables import markdown_table
from lossdiag.rundir.metrics_csv import METRICS_CSV


def _fake_run(
    path: Path, mtime: float, samples: bool = True, metrics: bool = True, finished: bool = True
) -> Path:
    path.mkdir(parents=True)
    if finished:
        (path / "diagnosis.md").write_text("# Diagnosis")
    if metrics:
        (path / METRICS_CSV).parent.mkdir()
        (path / METRICS_CSV).write_text("epoch,step,val/loss\n0,1,0.5\n")
    if samples:
        (path / SAMPLES_FILE).write_bytes(b"")
        os.utime(path / SAMPLES_FILE, (mtime, mtime))
    return path


def test_latest_run_is_the_one_written_last_across_runs_and_sweeps(tmp_path: Path) -> None:
    root = tmp_path / "outputs"
    _fake_run(root / "runs" / "2026-01-02" / "10-00-00", mtime=3000)  # newest by name, older by time
    newest = _fake_run(root / "sweeps" / "2026-01-01" / "09-00-00" / "loss=bounded", mtime=5000)
    _fake_run(root / "runs" / "2026-01-03" / "00-00-00", mtime=9000, metrics=False)  # src.evaluate folder
    (root / "runs" / "2026-01-04").mkdir()  # a crashed run: nothing written
    _fake_run(root / "runs" / "2026-01-05" / "00-00-00", mtime=9500, finished=False)  # still training
    assert latest_run(root) == newest
    assert is_run(newest) and not is_run(root / "runs" / "2026-01-03" / "00-00-00")


def test_latest_run_without_runs_is_a_one_line_user_error(tmp_path: Path) -> None:
    for root in (tmp_path / "missing", tmp_path):
        with pytest.raises(UserError, match=r"python -m src\.train.*RUN_DIR"):
            latest_run(root)


def test_resolve_run_dir_prefers_argument_then_environment_then_newest(tmp_path: Path, monkeypatch) -> None:
    old = _fake_run(tmp_path / "outputs" / "a", mtime=1000)
    new = _fake_run(tmp_path / "outputs" / "b", mtime=2000)
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    assert resolve_run_dir(None, tmp_path / "outputs") == new
    monkeypatch.setenv(RUN_DIR_ENV, str(old))
    assert resolve_run_dir(None, tmp_path / "outputs") == old
    assert resolve_run_dir(str(new), tmp_path / "outputs") == new
    with pytest.raises(UserError, match="not a training run folder"):
        resolve_run_dir(tmp_path / "outputs", tmp_path / "outputs")


def test_run_config_missing_is_a_user_error(tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "run", mtime=1000)
    with pytest.raises(UserError, match=r"\.hydra/config\.yaml does not exist"):
        run_config(run)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("seed: 3\ndata:\n  seed: ${seed}\n")
    assert run_config(run).data.seed == 3


def test_value_at_epoch() -> None:
    history = {"epoch": [0.0, 1.0, 2.0], "val/loss": [0.9, 0.5, 0.7]}
    assert value_at_epoch(history, "val/loss", 1) == 0.5
    assert math.isnan(value_at_epoch(history, "val/loss", -1))
    assert math.isnan(value_at_epoch(history, "val/acc", 1))


def test_markdown_table_layout() -> None:
    text = markdown_table(
        ["model", "loss", "path"], [["best", 0.123456, ""], ["last", math.nan, "a|b"]], digits=3
    )
    assert text.splitlines() == [
        "| model | loss | path |",
        "|---|---|---|",
        "| best | 0.123 | - |",
        "| last | - | a\\|b |",
    ]
    with pytest.raises(ValueError, match="2 cells, header has 3"):
        markdown_table(["a", "b", "c"], [[1, 2]])


def test_curves_figure_plots_each_logged_metric_and_names_missing_ones() -> None:
    history = {
        "epoch": [0.0, 1.0, 2.0],
        "train/loss": [3.0, 2.0, 1.0],
        "val/loss": [2.0, 1.5, 1.8],
        "val/acc": [math.nan, math.nan, math.nan],
    }
    fig = curves_figure(history, {"loss": ["train/loss", "val/loss"], "accuracy": ["val/acc", "train/acc"]})
    loss_ax, acc_ax = fig.axes
    assert [line.get_label() for line in loss_ax.lines] == ["train/loss", "val/loss"]
    np.testing.assert_array_equal(loss_ax.lines[1].get_ydata(), [2.0, 1.5, 1.8])
    np.testing.assert_array_equal(loss_ax.lines[1].get_xdata(), [0.0, 1.0, 2.0])
    assert not acc_ax.lines
    assert "not logged: val/acc, train/acc" in acc_ax.get_title()
