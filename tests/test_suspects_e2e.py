"""Likely label errors end to end: generated folders with images filed under the wrong class, the real CLI,
``suspects.csv`` / ``suspects.md`` / ``suspects.json`` / the data map / the TensorBoard grids / the diagnosis section
read back; an untrained run; ``src.evaluate`` on another folder; ``suspects.folds`` and its resume."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lossdiag.diagnosis.samples import load_samples
from lossdiag.functional.suspects import confident_other
from tests.conftest import read_events, read_images, run_module
from tests.images import pattern

CLASSES = ("cats", "dogs", "pandas")


def folder_with_moved_images(
    root: Path, per_class: int = 44, moved_per_class: int = 3, seed: int = 0
) -> set[str]:
    """``root/<class>/<i>.png``; the first ``moved_per_class`` images of each class show the next class."""
    rng = np.random.default_rng(seed)
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


def read_suspects(run: Path) -> list[dict[str, str]]:
    with (run / "suspects.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def moved_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """One 15-epoch run on a folder with 9 of its 132 images filed under the wrong class."""
    tmp = tmp_path_factory.mktemp("moved")
    moved = folder_with_moved_images(tmp / "images")
    run = tmp / "run"
    proc = run_module(
        "src.train", "data=folder", f"data.root={tmp / 'images'}", "trainer.max_epochs=15",
        "~callbacks.progress_bar", f"hydra.run.dir={run}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, moved


@pytest.mark.slow
def test_moved_images_are_the_top_rows_and_the_flags(moved_run: tuple[Path, set[str]]) -> None:
    run, moved = moved_run
    rows = read_suspects(run)
    assert len(rows) == 3 * 44  # every image once, train and val
    assert rows[0].keys() >= {"split", "path", "given", "suspected", "p_given", "early_p_given", "flag_rule"}
    ranks = sorted(int(r["rank"]) for r in rows if r["path"] in moved)
    # 9 of 132 images are moved: the first 9 rows hold at least 7 of them, the first 15 all
    assert sum(r <= 9 for r in ranks) >= 7 and max(ranks) <= 15, ranks
    first_moved = next(r for r in rows if r["path"] in moved)
    true_class = CLASSES[(CLASSES.index(first_moved["given"]) + 1) % 3]
    assert first_moved["suspected"] == true_class  # the class the model prefers is the one the image shows
    flagged = [r["path"] for r in rows if r["flagged"] == "1"]
    hits = sum(p in moved for p in flagged)
    assert hits / len(flagged) >= 0.8 and hits / len(moved) >= 0.5, (len(flagged), hits)
    assert {r["flag_rule"] for r in rows if r["flagged"] == "1"} <= {"early_dynamics", "confident_other"}
    thresholds = json.loads((run / "suspects.json").read_text())["thresholds"]
    assert (
        set(thresholds) == {"initial", "best_val_acc", "min_val_loss", "last"}
        and len(thresholds["best_val_acc"]) == 3
    )

    assert "flagged" in (run / "suspects.md").read_text()
    assert (run / "figures" / "data_map.png").stat().st_size > 5000
    diagnosis = (run / "diagnosis.md").read_text()
    section = diagnosis.split("## Possibly mislabeled")[1].split("\n## ")[0]
    # the top of the ranking, flagged or not, with its files
    assert "Most suspect first" in section and rows[0]["path"] in section and "suspects.csv" in section
    events = read_events(run)
    assert {"suspects/train", "suspects/val", "suspects/data_map"} <= set(read_images(events))


@pytest.mark.slow
def test_evaluating_another_folder_flags_with_the_training_runs_thresholds(
    moved_run: tuple[Path, set[str]], tmp_path: Path
) -> None:
    run, _ = moved_run
    ckpt = run / "checkpoints" / "best_val_acc.ckpt"

    def evaluate(folder: Path, out: Path) -> list[dict[str, str]]:
        proc = run_module("src.evaluate", f"ckpt_path={ckpt}", f"data.root={folder}", f"hydra.run.dir={out}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        return read_suspects(out)

    clean = tmp_path / "clean"
    folder_with_moved_images(clean, per_class=20, moved_per_class=0, seed=1)
    rows = evaluate(clean, tmp_path / "eval_clean")
    assert len(rows) == 60 and sum(r["flagged"] == "1" for r in rows) <= 3  # at most 5% of a clean folder

    other = tmp_path / "other"
    new_moved = folder_with_moved_images(other, per_class=20, moved_per_class=2, seed=2)
    rows = evaluate(other, tmp_path / "eval_other")
    samples = load_samples(tmp_path / "eval_other")
    ev = samples.models["best_val_acc"]["val"]
    stored = json.loads((run / "suspects.json").read_text())["thresholds"]["best_val_acc"]
    expected = confident_other(ev.pred, ev.conf, samples.val.target, np.asarray(stored))
    by_path = {r["path"]: r["flagged"] == "1" for r in rows}
    assert [by_path[p] for p in samples.val.path] == expected.tolist()
    assert sum(by_path[p] for p in new_moved) >= 4  # the moved images, confidently out-scored
    # thresholds from training, not from these images: raised above 1 in the run's suspects.json, nothing is flagged
    saved = (run / "suspects.json").read_text()
    try:
        data = json.loads(saved)
        data["thresholds"]["best_val_acc"] = [1.01] * 3
        (run / "suspects.json").write_text(json.dumps(data))
        assert not any(r["flagged"] == "1" for r in evaluate(other, tmp_path / "eval_high"))
        (run / "suspects.json").unlink()  # none stored: no flags, and suspects.md says why
        assert not any(r["flagged"] == "1" for r in evaluate(other, tmp_path / "eval_none"))
        assert "has no `suspects.json`" in (tmp_path / "eval_none" / "suspects.md").read_text()
    finally:
        (run / "suspects.json").write_text(saved)


@pytest.mark.slow
def test_a_run_that_does_not_learn_flags_nothing(tmp_path: Path) -> None:
    folder_with_moved_images(tmp_path / "images", per_class=20)
    run = tmp_path / "run"
    proc = run_module(
        "src.train", "data=folder", f"data.root={tmp_path / 'images'}", "optimizer.lr=1e-6",
        "trainer.max_epochs=3", "~callbacks.progress_bar", f"hydra.run.dir={run}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "diagnosis.json").read_text())["verdict"] == "not_learning"
    rows = read_suspects(run)
    assert len(rows) == 60 and not any(r["flagged"] == "1" for r in rows)
    line = "No image is flagged: the model did not learn"
    assert line in (run / "suspects.md").read_text() and line in (run / "diagnosis.md").read_text()


@pytest.mark.slow
def test_folds_rank_with_out_of_fold_probabilities_and_a_resume_keeps_finished_folds(tmp_path: Path) -> None:
    folder_with_moved_images(tmp_path / "images", per_class=16, moved_per_class=2)
    run = tmp_path / "run"
    args = ["data=folder", f"data.root={tmp_path / 'images'}", "data.image_size=16", "trainer.max_epochs=4",
            "suspects.folds=2", "launcher=joblib", "~callbacks.progress_bar"]  # fmt: skip
    proc = run_module("src.train", *args, f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "suspects.folds: fold 1/2 done" in proc.stdout and "fold 2/2 done" in proc.stdout
    # in parallel joblib jobs, as a sweep's, with the run's console: Lightning's lines only in its train.log
    assert "2 at a time (launcher=joblib)" in proc.stdout or (os.cpu_count() or 1) < 2
    assert (
        "GPU available" not in proc.stdout + proc.stderr
        and "GPU available" in (run / "train.log").read_text()
    )
    rows = read_suspects(run)
    train = [r for r in rows if r["split"] == "train"]
    assert train and all(r["ranked_by"] == "early_aum+cleanlab_2_folds" and r["oof_p_given"] for r in train)
    assert all(
        r["ranked_by"] == "p_given+early_p_given+early_aum_2_folds" for r in rows if r["split"] == "val"
    )
    samples = load_samples(run)
    assert samples.oof_folds == 2 and samples.train_oof.shape == (len(train), 3)
    # the folds' own dynamics: every training image learned by 1 fold, every val image by both
    assert samples.train_folds_aum.shape == (len(train),) and samples.val_folds_aum.shape == (
        len(rows) - len(train),
    )
    np.testing.assert_allclose(samples.train_oof.sum(axis=1), 1.0, rtol=1e-5)
    folds = run / "suspects_folds"
    assert sorted(p.name for p in folds.iterdir()) == ["fold_0.npz", "fold_1.npz"]
    assert "2 extra trainings" in (run / "suspects.md").read_text()

    # killed during the second fold: its file never written, the run not complete
    first = (folds / "fold_0.npz").read_bytes()
    os.utime(folds / "fold_0.npz", (1, 1))
    (folds / "fold_1.npz").unlink()
    (run / "metrics.json").write_text('{"status": "running"}')
    (run / "suspects.csv").unlink()
    proc = run_module("src.train", f"resume={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 kept from an earlier attempt" in proc.stdout and "fold 2/2 done" in proc.stdout
    assert "fold 1/2 done" not in proc.stdout
    assert (folds / "fold_0.npz").stat().st_mtime == 1 and (folds / "fold_0.npz").read_bytes() == first
    assert (folds / "fold_1.npz").is_file() and read_suspects(run) == rows  # the same training: the same list
