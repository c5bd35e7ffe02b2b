"""``src.report`` / ``lossdiag.rundir.status`` / ``lossdiag.app.resolvers`` on hand-made run folders (no training)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from lossdiag.app.resolvers import MAX_DIRNAME_BYTES, safe_dirname
from lossdiag.app.sweep_report import (
    build_report,
    group_runs,
    load_runs,
    mean_std,
    parse_overrides,
    run_metrics,
    swept_keys,
)
from lossdiag.rundir.status import read_summary, recorded_run, write_summary


def make_run(
    sweep: Path,
    overrides: list[str],
    val_acc: list[float],
    val_loss: list[float],
    *,
    ece: list[float] | None = None,
    status: str | None = "complete",
    max_epochs: int | None = None,
    config: dict | None = None,
) -> Path:
    """A run folder as src.train writes it: .hydra/{config,overrides}.yaml, csv/metrics.csv, metrics.json.
    ``config`` adds keys to the saved config (e.g. ``{"loss": {"name": "focal"}}``)."""
    run = sweep / ",".join(overrides)
    (run / ".hydra").mkdir(parents=True)
    seed = next((int(o.split("=")[1]) for o in overrides if o.startswith("seed=")), 0)
    config = {**(config or {}), "seed": seed, "trainer": {"max_epochs": max_epochs or len(val_acc)}}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*overrides, "debug=fast"]))
    header = ["epoch", "step", "val/acc", "val/loss", "val/loss_bounded", *(["val/ece"] if ece else [])]
    rows = [",".join(header)]
    for epoch, (acc, loss) in enumerate(zip(val_acc, val_loss, strict=True)):
        rows.append(
            ",".join(map(str, [epoch, epoch * 2 + 1, acc, loss, loss / 2, *([ece[epoch]] if ece else [])]))
        )
        rows.append(
            f"{epoch},{epoch * 2 + 1}" + "," * (len(header) - 2)
        )  # a train-only row, as Lightning writes
    (run / "csv").mkdir()
    (run / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")
    if status:
        write_summary(run, status, metrics={"val/acc": val_acc[-1]} if status == "complete" else None)
    return run


def test_safe_dirname() -> None:
    assert safe_dirname("loss=bounded,seed=1") == "loss=bounded,seed=1"
    assert safe_dirname("data.root=/a/b\\c,x=1") == "data.root=_a_b_c,x=1"
    assert safe_dirname("") == "default" and safe_dirname("..") == "__"
    long_a, long_b = "x=" + "a" * 300 + "1", "x=" + "a" * 300 + "2"
    assert len(safe_dirname(long_a).encode()) <= MAX_DIRNAME_BYTES
    assert safe_dirname(long_a) != safe_dirname(long_b)
    assert len(safe_dirname("é" * 300).encode()) <= MAX_DIRNAME_BYTES


def test_recorded_run_writes_complete_or_failed(tmp_path: Path) -> None:
    with recorded_run(tmp_path / "ok") as outcome:
        assert read_summary(tmp_path / "ok") == {"status": "running"}
        outcome.metrics = {"val/acc": 0.5, "val/loss": math.inf}
    assert read_summary(tmp_path / "ok") == {
        "status": "complete",
        "metrics": {"val/acc": 0.5, "val/loss": None},
    }
    with pytest.raises(RuntimeError), recorded_run(tmp_path / "bad"):
        raise RuntimeError("loss is nan")
    assert read_summary(tmp_path / "bad") == {"status": "failed", "error": "RuntimeError: loss is nan"}


def test_parse_overrides_and_swept_keys() -> None:
    params = parse_overrides(
        [
            "loss=bounded",
            "+tag=a=b",
            "~callbacks.progress_bar",
            "launcher=joblib",
            "hydra.x=1",
            "hparams_search=optuna",
            "ckpt_path='/run/checkpoints/last.ckpt'",
        ]  # a resumed job stays in its group
    )
    assert params == {"loss": "bounded", "tag": "a=b", "callbacks.progress_bar": ""}
    sets = [
        {"loss": "a", "seed": "0", "debug": "fast"},
        {"loss": "b", "seed": "1", "debug": "fast"},
        {"loss": "a", "debug": "fast"},
    ]
    assert swept_keys(sets) == ["loss", "seed"]


def test_run_metrics_and_mean_std() -> None:
    history = {
        "val/acc": [0.5, 0.8, 0.8, 0.7],
        "val/loss": [1.0, 0.4, 0.6, math.nan],
        "val/loss_bounded": [0.3, 0.2, 0.1, 0.2],
    }
    m = run_metrics(history)
    assert (m["best_val_acc"], m["last_val_acc"], m["epochs_to_best"]) == (0.8, 0.7, 2.0)
    assert (m["min_val_loss"], m["last_val_loss"], m["epoch_min_val_loss"]) == (0.4, 0.6, 2.0)
    assert m["last_val_loss_bounded"] == 0.2 and math.isnan(m["last_val_ece"])
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    mean, std = mean_std([1.0, math.nan])
    assert mean == 1.0 and math.isnan(std)


def test_report_on_hand_made_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    make_run(sweep, ["loss=standard", "seed=0"], [0.5, 0.9], [1.0, 1.2], ece=[0.1, 0.2])
    make_run(sweep, ["loss=standard", "seed=1"], [0.6, 0.7], [0.8, 0.9], ece=[0.1, 0.4])
    make_run(sweep, ["loss=bounded", "seed=0"], [0.5, 0.6], [1.0, 0.5])
    make_run(sweep, ["loss=bounded", "seed=1"], [0.5], [1.0], max_epochs=2)  # stopped after 1 of 2 epochs
    make_run(sweep, ["loss=bounded", "seed=2"], [0.5, 0.5], [1.0, 1.0], status="running")  # killed
    make_run(sweep, ["loss=bounded", "seed=3"], [0.5], [1.0], status="failed")

    groups, runs, markdown = build_report(sweep)
    assert [(g.params, len(g.runs)) for g in groups] == [({"loss": "bounded"}, 1), ({"loss": "standard"}, 2)]
    standard = groups[1]
    assert standard.mean["best_val_acc"] == pytest.approx(0.8)
    assert standard.std["best_val_acc"] == pytest.approx(math.sqrt(2 * 0.1**2))
    assert standard.mean["min_val_loss"] == pytest.approx(0.9)  # (1.0 + 0.8) / 2
    assert standard.mean["last_val_ece"] == pytest.approx(0.3)
    assert standard.mean["epoch_min_val_loss"] == 1.0
    assert math.isnan(groups[0].mean["last_val_ece"])  # no val/ece column: n/a, not an error
    assert "| bounded | 1 | 0.6000 |" in markdown and "n/a" in markdown
    statuses = {r.path.name: (r.status, r.reason) for r in runs}
    assert statuses["loss=bounded,seed=1"] == ("incomplete", "1 of 2 epochs logged")
    assert (
        statuses["loss=bounded,seed=2"][0] == "incomplete"
        and "'running'" in statuses["loss=bounded,seed=2"][1]
    )
    assert statuses["loss=bounded,seed=3"][0] == "failed"
    assert markdown.count("\n- `loss=bounded,seed=") == 3
    csv_lines = (sweep / "report.csv").read_text().splitlines()
    assert csv_lines[0].startswith("loss,n,best_val_acc_mean,best_val_acc_std,")
    assert csv_lines[1].startswith("bounded,1,0.6,,")  # std of one seed is empty, not 0


def test_group_runs_ignores_unswept_and_seed_keys(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for seed in "01":
        make_run(sweep, ["optimizer.lr=0.1", f"seed={seed}"], [0.5, 0.6], [1.0, 0.9])
    groups = group_runs(load_runs(sweep))
    assert len(groups) == 1 and groups[0].params == {} and groups[0].label == "all runs"
