"""The speed benchmark runs end to end on tiny settings and writes its tables (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.train_speed import CASES, main, make_image_folder


def test_benchmark_writes_json_and_markdown_tables(tmp_path: Path) -> None:
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        rows = main(
            [
                "--datasets=digits,folder",
                "--epochs=2",
                "--warmup=1",
                "--repeats=1",
                "--digits-repeats=2",
                "--folder-images=24",
                "--digits-train-size=40",
                f"--cache={tmp_path / 'cache'}",
                f"--out={tmp_path / 'out'}",
            ]
        )
    finally:
        torch.use_deterministic_algorithms(deterministic)
    cases = {(r.dataset, r.case) for r in rows}
    assert cases == {("digits", c) for c in CASES if c != "naive_imagefolder"} | {
        ("folder", c) for c in CASES
    }
    data = json.loads((tmp_path / "out" / "train_speed.json").read_text())
    assert {r["case"] for r in data["rows"]} == set(CASES)
    assert all(
        r["epoch_ms"] > 0 and r["cpu_ms"] > 0 and len(run["epoch_s"]) == 2
        for r in data["rows"]
        for run in data["runs"]
    )
    repeats = {(run["dataset"], run["case"]): run["repeat"] + 1 for run in data["runs"]}
    assert repeats[("digits", "c_project")] == 2 and repeats[("folder", "c_project")] == 1
    ratios = data["ratios"]["folder threads=1"]
    assert {"c/a", "c/b", "c/d", "naive/c", "c/b cpu", "naive/c cpu"} <= set(ratios)
    table = (tmp_path / "out" / "train_speed.md").read_text()
    assert "| folder | 1 | naive_imagefolder |" in table
    assert "c/a" in table and "naive/c" in table


def test_generated_folder_is_made_once(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "f", 9)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    assert len(files) == 9 and {f.split("/")[0] for f in files} == {"cats", "dogs", "pandas"}
    stamp = (root / "cats" / files[0].split("/")[1]).stat().st_mtime_ns
    make_image_folder(tmp_path / "f", 9)
    assert (root / "cats" / files[0].split("/")[1]).stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_scale_benchmark_runs_the_entry_point_and_a_plain_loop(tmp_path: Path) -> None:
    """``benchmarks.scale`` at a tiny size: a plain loop and two project runs (cold, then warm decode cache),
    each in its own measured process, and the tables."""
    from benchmarks.scale import main as scale

    results = scale(
        ["--sizes=40x16", "--epochs=1", f"--data={tmp_path / 'data'}", f"--out={tmp_path / 'out'}"]
    )
    assert [r.case for r in results] == ["plain", "project cold", "project auto"]
    for r in results:
        assert r.returncode == 0 and len(r.epoch_s) == 1
        assert (
            0 < r.first_batch_s < r.wall_s and r.end_s >= 0 and r.peak_rss_mb > 0 and r.peak_tree_pss_mb > 0
        )
    assert "decoded into the cache" in results[1].note and "read from the decode cache" in results[2].note
    data = json.loads((tmp_path / "out" / "scale.json").read_text())
    assert [r["case"] for r in data["results"]] == ["plain", "project cold", "project auto"]
    table = (tmp_path / "out" / "scale.md").read_text()
    assert "| 40 | 16 | project auto |" in table and "Goals (issue 23)" in table
    assert len(list((tmp_path / "data").glob("stripes-40x16/*/*.png"))) == 40  # the generated folder stays


def test_label_error_prototype_runs_on_tiny_folders(tmp_path: Path) -> None:
    from benchmarks.suspects_prototype import main as prototype

    table = prototype(["--kinds", "colours", "--epochs", "3", "--folds", "2", "--per-class", "12",
                       "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "proto.md")])  # fmt: skip
    assert "(product)" in table and "folds: cleanlab alone" in table and "one training: flags" in table
    assert (tmp_path / "proto.md").read_text() == table
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3  # the run and its 2 folds, kept for a re-run


@pytest.mark.slow
def test_label_noise_benchmark_runs_the_real_pipeline(tmp_path: Path) -> None:
    from benchmarks.label_noise import main as label_noise

    table = label_noise(["--kinds", "colours", "--seeds", "0", "--epochs", "3", "--folds", "2", "--per-class", "12",
                         "--out", str(tmp_path)])  # fmt: skip
    results = json.loads((tmp_path / "label_noise.json").read_text())["results"]
    assert len(results) == 1 and results[0]["suspects.folds"]["trainings"] == 3
    assert {"one training", "suspects.folds", "cleanlab alone", "untrained", "clean folder"} <= set(
        results[0]
    )
    assert results[0]["untrained"]["flagged"] == 0
    assert "| colours | suspects.folds | 3 |" in table.replace(".00", "")
