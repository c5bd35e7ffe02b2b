"""Likely label errors end to end: a generated folder with images filed under the wrong class, the real CLI,
``suspects.csv`` / ``suspects.md`` / the data map / the TensorBoard grids / the diagnosis section read back."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lossdiag.functional.suspects import rank_suspects
from tests.conftest import read_events, read_images, run_module
from tests.images import pattern

CLASSES = ("cats", "dogs", "pandas")


def folder_with_moved_images(root: Path, per_class: int = 44, moved_per_class: int = 3) -> set[str]:
    """``root/<class>/<i>.png``; the first ``moved_per_class`` images of each class show the next class."""
    rng = np.random.default_rng(0)
    moved = set()
    for class_id, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            wrong = i < moved_per_class
            path = root / name / f"{i:03d}.png"
            Image.fromarray(pattern((class_id + 1) % len(CLASSES) if wrong else class_id, 32, rng)).save(path)
            if wrong:
                moved.add(str(path))
    return moved


def test_rank_suspects_merges_the_splits_by_quantile() -> None:
    margin = np.array(
        [[2.0, -1.0, 0.5, -3.0], [2.0, -2.0, 1.0, -3.0]]
    )  # sample 3 never learned, 1 below 0 too
    ranked = rank_suspects(margin, np.array([0.9, 0.1, 0.6, 0.01]), np.array([0, 1, 0, 2]),
                           np.array([0.2, 0.9]), np.array([1, 0]), np.array([0, 0]))  # fmt: skip
    assert list(zip(ranked.split, ranked.where, strict=True)) == [
        ("train", 3), ("val", 0), ("train", 1), ("val", 1), ("train", 2), ("train", 0)
    ]  # fmt: skip
    assert ranked.score.tolist() == [1.0, 1.0, 0.75, 0.5, 0.5, 0.25]  # quantiles within each split
    assert ranked.flagged.tolist() == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]  # AUM < 0; val: model says another
    assert ranked.top("train", 2).tolist() == [3, 1]


@pytest.mark.slow
def test_moved_images_rank_near_the_top_of_suspects_csv(tmp_path: Path) -> None:
    moved = folder_with_moved_images(tmp_path / "images")
    run = tmp_path / "run"
    proc = run_module(
        "src.train", "data=folder", f"data.root={tmp_path / 'images'}", "trainer.max_epochs=15",
        "~callbacks.progress_bar", f"hydra.run.dir={run}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (run / "suspects.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 * 44  # every image once, train and val
    assert rows[0].keys() >= {"split", "index", "path", "given", "suspected", "score", "p_given"}
    ranks = {r["path"]: int(r["rank"]) for r in rows}
    moved_ranks = sorted(ranks[p] for p in moved)
    # 9 of 132 images are moved: most of them are among the first 20 rows, and all within the top half
    assert sum(r <= 20 for r in moved_ranks) >= 6, moved_ranks
    assert max(moved_ranks) <= len(rows) // 2, moved_ranks
    first_moved = next(r for r in rows if r["path"] in moved)
    true_class = CLASSES[(CLASSES.index(first_moved["given"]) + 1) % 3]
    assert first_moved["suspected"] == true_class  # the class the model prefers is the one the image shows

    assert "flagged" in (run / "suspects.md").read_text()
    assert (run / "figures" / "data_map.png").stat().st_size > 5000
    diagnosis = (run / "diagnosis.md").read_text()
    assert "## Possibly mislabeled" in diagnosis and "suspects.csv" in diagnosis
    events = read_events(run)
    assert {"suspects/train", "suspects/val", "suspects/data_map"} <= set(read_images(events))
