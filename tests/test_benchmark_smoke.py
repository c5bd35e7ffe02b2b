"""The speed benchmark runs end to end on tiny settings and writes its tables (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

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
