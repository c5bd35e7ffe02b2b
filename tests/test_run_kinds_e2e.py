"""End to end: ``python -m src.train`` decides the kind of run, and ``python -m src.evaluate`` a checkpoint on a
new image folder. Each kind's run is the real entry point in a subprocess; its ``diagnosis.json``,
``diagnosis.md``, console summary and TensorBoard text must all carry the same verdict."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lossdiag.diagnosis.samples import load_samples
from tests.conftest import ROOT, read_events
from tests.image_folders import write_image_folder

# kind -> the command-line arguments of a run of that kind (SGD lr 0.1, momentum 0.9 unless changed)
RUNS = {
    "phenomenon": [],  # the shipped defaults: 100 epochs on digits
    "no_rise": ["trainer.max_epochs=2"],  # val loss still falling
    "not_learning": ["optimizer.lr=1e-6", "trainer.max_epochs=2"],  # a learning rate too small to move
    "partial_collapse": ["loss=bounded", "trainer.max_epochs=10"],  # classes 2 and 5 given up
}


def _run_concurrently(
    module: str, commands: dict[str, list[str]], timeout: float = 300
) -> dict[str, subprocess.CompletedProcess]:
    """``python -m <module> <args>`` for every entry at once (one thread each), as the user would run it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    procs = {
        key: subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for key, args in commands.items()
    }
    done = {}
    for key, proc in procs.items():
        out, err = proc.communicate(timeout=timeout)
        done[key] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


FOLDER_CLASSES = {"cats": 16, "dogs": 16, "owls": 16}


@pytest.fixture(scope="module")
def kind_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """One run of each kind, and (key ``folder``) a short run on a generated image folder, all at once."""
    base = tmp_path_factory.mktemp("kinds")
    commands = {kind: [*args, f"hydra.run.dir={base / kind}"] for kind, args in RUNS.items()}
    write_image_folder(base / "train_imgs", FOLDER_CLASSES, size=8, seed=0)
    commands["folder"] = [
        "data=folder",
        f"data.root={base / 'train_imgs'}",
        "data.image_size=8",
        "trainer.max_epochs=3",
        f"hydra.run.dir={base / 'folder'}",
    ]
    done = _run_concurrently("src.train", commands)
    for kind, proc in done.items():
        assert proc.returncode == 0, (kind, proc.stderr[-3000:])
    return {kind: (base / kind, proc.stdout) for kind, proc in done.items()}


def _text_summary(run_dir: Path) -> str:
    events = read_events(run_dir)
    return events.Tensors("diagnosis/text_summary")[-1].tensor_proto.string_val[0].decode()


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(RUNS))
def test_each_kind_of_run_is_the_verdict_everywhere(kind_runs, kind: str) -> None:
    run_dir, stdout = kind_runs[kind]
    numbers = json.loads((run_dir / "diagnosis.json").read_text())
    assert numbers["verdict"] == kind, numbers["reason"]
    first = (run_dir / "diagnosis.md").read_text().splitlines()[2]
    cause = "." if numbers["cause"] == "none" else f", cause: {numbers['cause']}."
    assert first.startswith(f"**Verdict: {kind}{cause}**")  # the first line names the kind and the cause
    assert first in _text_summary(run_dir)
    assert f"\nVerdict: {kind}{cause}" in stdout
    assert "nan" not in (run_dir / "diagnosis.md").read_text()
    # the numbers are those of the per-sample records
    samples = load_samples(run_dir)
    means = samples.history.loss.astype(np.float64).mean(1)
    assert numbers["n_samples"] == len(samples.val.target) == 449
    assert numbers["min_loss"] == pytest.approx(means.min()) and numbers["last_loss"] == pytest.approx(
        means[-1]
    )
    initial = samples.models["initial"]["val"].loss.astype(np.float64).mean()
    assert numbers["initial_loss"] == pytest.approx(initial)
    lo, hi = numbers["rise_ci"]
    assert lo <= numbers["rise_rel"] <= hi
    # unlearned classes: recall 0 (with val samples) in reports/last.csv
    with (run_dir / "reports" / "last.csv").open() as handle:
        rows = {r[""]: r for r in csv.DictReader(handle)}
    zero = [c for c in samples.classes if float(rows[c]["recall"]) == 0 and float(rows[c]["support"]) > 0]
    assert numbers["unlearned_classes"] == zero


@pytest.mark.slow
def test_default_run_numbers_are_unchanged(kind_runs) -> None:
    numbers = json.loads((kind_runs["phenomenon"][0] / "diagnosis.json").read_text())
    assert (numbers["min_epoch"], numbers["last_epoch"]) == (7, 99)
    assert f"{numbers['min_loss']:.4f}" == "0.2718" and f"{numbers['last_loss']:.4f}" == "0.4035"
    assert numbers["rise_ci"][0] > 0 and numbers["acc_change_ci"][0] <= 0 <= numbers["acc_change_ci"][1]
    assert f"{numbers['acc_last']:.3f}" == "0.922"
    text = (kind_runs["phenomenon"][0] / "diagnosis.md").read_text()
    assert "was net unchanged at 0.922 (12 samples became wrong, 12 became right" in text
    # the verdict is decided on the 5-epoch moving average: 27% (95% CI 6% to 43%), not the single epoch's 48.5%
    assert numbers["rise_rel_smoothed"] == pytest.approx(0.265, abs=0.002) and numbers["rise_ci_smoothed"][0] > 0
    assert "rose 27% (95% CI 6% to 43%)" in text and "it is +48.5%" in text
    assert numbers["acc_flips"] == {"to_wrong": 12, "to_right": 12}
    assert numbers["final"]["temperature_status"] == "ok" and 0.5 <= numbers["scaling_removes"] <= 1.0


@pytest.mark.slow
def test_collapse_names_the_classes_and_the_samples_without_gradient(kind_runs) -> None:
    run_dir, _ = kind_runs["partial_collapse"]
    numbers = json.loads((run_dir / "diagnosis.json").read_text())
    assert numbers["collapsed_classes"] and set(numbers["collapsed_classes"]) <= set(
        numbers["unlearned_classes"]
    )
    samples = load_samples(run_dir)
    above = int((samples.models["last"]["train"].loss > samples.loss_cap).sum())
    assert numbers["objective"] == "bounded" and numbers["n_train_above_cap"] == above > 0
    assert numbers["n_train"] == len(samples.train.target)
    text = (run_dir / "diagnosis.md").read_text()
    assert f"recall 0: {', '.join(numbers['collapsed_classes'])}" in text
    assert f"At the end, {above} of {numbers['n_train']} training samples" in text and "zero gradient" in text
    # the cause is the collapse (never called over-confidence), and the advice fixes the loss, not the calibration
    assert numbers["cause"] == "collapsed_classes"
    assert numbers["rise_by_group"]["collapsed_class"]["share"] >= 0.5
    first = text.splitlines()[2]
    assert first.startswith("**Verdict: partial_collapse, cause: collapsed_classes.** The ") and "of the collapsed" in first
    assert "`loss=standard`" in numbers["advice"] and "zero gradient" in numbers["advice"]
    assert "is over-confidence" not in text and "mostly over-confidence" not in text


@pytest.mark.slow
def test_not_learning_says_what_to_try(kind_runs) -> None:
    run_dir, stdout = kind_runs["not_learning"]
    numbers = json.loads((run_dir / "diagnosis.json").read_text())
    assert numbers["acc_best_lower"] <= numbers["majority_rate"] + numbers["majority_margin"]
    # nothing was learned because the loss barely moved: raise the learning rate, never lower it
    assert numbers["cause"] == "none" and "What to try: Raise `optimizer.lr`" in stdout
    assert "Lower" not in numbers["advice"] and "barely moved" in numbers["advice"]
    # the rate it trained at, a number to try, and the range test that measures one
    assert "from 1e-06 (e.g. 10x: `optimizer.lr=1e-05`), or let `optimizer.lr=auto`" in numbers["advice"]


# ------------------------------------------------------------------------------------------- evaluation


@pytest.mark.slow
def test_evaluating_a_folder_run_on_another_folder_takes_every_image(kind_runs, tmp_path: Path) -> None:
    run = kind_runs["folder"][0]
    n_new = write_image_folder(tmp_path / "new_imgs", {"cats": 7, "dogs": 5, "owls": 6}, size=8, seed=1)
    ckpt = run / "checkpoints" / "last.ckpt"
    out, own = tmp_path / "eval", tmp_path / "eval_own"
    done = _run_concurrently(
        "src.evaluate",
        {
            # data.root alone: the run's data=folder (and its image_size) come from the run folder
            "new": [f"ckpt_path={ckpt}", f"data.root={tmp_path / 'new_imgs'}", f"hydra.run.dir={out}"],
            # the run's own folder: its val split, as in training
            "own": [f"ckpt_path={ckpt}", f"hydra.run.dir={own}"],
        },
    )
    for proc in done.values():
        assert proc.returncode == 0, proc.stderr[-3000:]
    numbers = json.loads((out / "diagnosis.json").read_text())
    assert numbers["n_samples"] == n_new == 18
    assert numbers["evaluated_on"] == f"every image of {tmp_path / 'new_imgs'} ({n_new} images)"
    assert numbers["verdict"] in ("single_evaluation", "not_learning", "partial_collapse")
    assert numbers["history"] is False and numbers["rise_ci"] is None and numbers["n_train_above_cap"] is None
    samples = load_samples(out)
    assert sorted(samples.val.path) == sorted(str(p) for p in (tmp_path / "new_imgs").rglob("*.png"))
    assert samples.train is None and samples.classes == list(FOLDER_CLASSES)
    text = (out / "diagnosis.md").read_text()
    assert (
        "every image counts and there is no train/val split" in text
        and "every image of" in done["new"].stdout
    )
    for absent in (
        "epoch",
        "val/worst_samples",
        "initial",
    ):  # one model: no history, no files it did not write
        assert absent not in text.split("## What to look at next")[1], absent
    assert "nan" not in text
    header = (out / "worst.csv").read_text().splitlines()[0]
    assert header == "rank,index,path,given,predicted,p_given,p_predicted,loss"
    # likely label errors of the evaluated images: val-only score (p of the given label under this model)
    suspects = (out / "suspects.csv").read_text().splitlines()
    assert len(suspects) == 1 + n_new and all(line.split(",")[1] == "val" for line in suspects[1:])
    own_numbers = json.loads((own / "diagnosis.json").read_text())
    assert own_numbers["evaluated_on"] == "val split"
    assert own_numbers["n_samples"] == len(load_samples(run).val.target) < 48
