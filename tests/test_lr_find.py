"""optimizer.lr=auto: the learning-rate range test (the curve's arithmetic, the test leaving the run untouched, its
files and TensorBoard entries, the cache shared by runs and by a sweep's parallel jobs)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra.utils import instantiate

from lossdiag.app import lr_find as app_lr_find
from lossdiag.app import pipeline
from lossdiag.callbacks.lr_find import LR_FIND_TAG
from lossdiag.errors import UserError
from lossdiag.functional.learning_rate import SKIP_START, memorized, round_125, smooth, suggest
from lossdiag.models.lr_range_test import range_test
from lossdiag.render.reasons import Context
from tests.conftest import png_pixels, read_events, read_images, run_module
from tests.test_run_kinds import balanced_target, run


# -- the curve's arithmetic --------------------------------------------------------------------
def test_round_125() -> None:
    assert [round_125(v) for v in (0.0933, 0.107, 0.142, 0.0132, 0.003, 0.0035, 1e-3, 7.0)] == [
        0.1, 0.1, 0.2, 0.01, 0.002, 0.005, 0.001, 5.0,
    ]  # fmt: skip


def test_suggest_reads_the_minimum_or_the_steepest_fall() -> None:
    lrs = np.geomspace(1e-5, 10, 100)
    # falls from 2.3 towards 0.3 around lr 0.01, blows up past lr 1: the smoothed minimum lags to about lr 1
    turning = 0.3 + 2.0 / (1 + (lrs / 0.01) ** 2) + np.where(lrs > 1, (lrs - 1) * 5, 0)
    choice = suggest(lrs, turning)
    assert choice.rule == "min" and 0.5 < choice.at <= 2 and choice.lr == round_125(choice.at / 10)
    assert choice.conclusive
    # never turns (a training set learned by heart): the steepest fall, near lr 0.01
    flat_end = 0.01 + 2.0 / (1 + (lrs / 0.01) ** 2)
    choice = suggest(lrs, flat_end)
    assert choice.rule == "steepest" and 0.003 < choice.at < 0.03
    assert not suggest(lrs, np.full(100, 2.3)).conclusive


def test_smooth_is_the_bias_corrected_moving_average() -> None:
    values = [2.0, 1.0, 4.0]
    expected, avg = [], 0.0
    for i, v in enumerate(values):
        avg = 0.98 * avg + 0.02 * v
        expected.append(avg / (1 - 0.98 ** (i + 1)))
    assert smooth(values) == pytest.approx(expected)
    assert smooth([3.0])[0] == pytest.approx(3.0)  # no bias towards 0 at the start


def test_memorized_needs_several_tiny_losses_in_a_row() -> None:
    assert memorized([2.3, 1.0, 0.01, 0.01, 0.01, 0.01, 0.01])
    assert not memorized([2.3, 0.01, 0.01, 0.5, 0.01, 0.01])


# -- the test itself ---------------------------------------------------------------------------
def test_range_test_leaves_the_network_and_the_random_state_alone(make_cfg) -> None:
    cfg = make_cfg()
    dm = pipeline.build_datamodule(cfg)
    net = pipeline.build_net(cfg, dm)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loader = dm.train_dataloader()

    def batches(epoch: int):
        loader.sampler.set_epoch(epoch)
        return loader

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sgd = instantiate(cfg.optimizer, lr=1e-5)
    first = range_test(net, sgd, batches, 1e-5, 10.0, 100, seed=0)
    assert torch.equal(torch.rand(3), expected)  # the global random state is where it was
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the weights too
    assert len(first.lrs) > SKIP_START
    # seeded: a network that draws random numbers (dropout) gives the same curve for the same seed only
    dropout = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(64, 10))
    curves = [range_test(dropout, sgd, batches, 1e-5, 10.0, 30, seed=s) for s in (0, 0, 1)]
    assert curves[0] == curves[1] != curves[2]


def test_a_model_that_does_not_learn_is_a_one_line_error(make_cfg) -> None:
    cfg = make_cfg("lr_find.max_lr=1e-4", "lr_find.min_lr=1e-7", "lr_find.cache_dir=null")
    dm = pipeline.build_datamodule(cfg)
    # up to lr 1e-4 the loss barely moves: larger rates, as the diagnosis advises for a loss that barely moved
    with pytest.raises(
        UserError, match=r"smoothed loss fell only .*: raise lr_find.max_lr \(now 0.0001\) or give"
    ):
        pipeline.build_module(cfg, dm)


@pytest.mark.parametrize(
    ("ctx", "words"),
    [
        (Context(lr=0.05, lr_auto=True), "Raise `optimizer.lr` from the 0.05 `optimizer.lr=auto` chose (e.g. 10x: `optimizer.lr=0.5`): "),
        (Context(lr=1e-6), "Raise `optimizer.lr` from 1e-06 (e.g. 10x: `optimizer.lr=1e-05`), or let `optimizer.lr=auto` measure it: "),
        (Context(lr=0.05, config_keys=False), "Raise the learning rate (e.g. 10x, to 0.5): "),
        (Context(), "Raise `optimizer.lr` (e.g. 10x): "),
    ],
)  # fmt: skip
def test_a_loss_that_barely_moved_is_advised_a_number(ctx: Context, words: str) -> None:
    """The diagnosis's "raise the lr" names the rate the run trained at, a number to try, and ``auto``."""
    rng = np.random.default_rng(0)
    target = balanced_target(400)
    judged = run(np.log(4) + rng.normal(0, 0.01, (5, 400)), rng.integers(0, 4, (5, 400)), target, ctx=ctx)
    assert judged.kind == "not_learning" and judged.advice.startswith(words), judged.advice


def test_parallel_jobs_measure_once(make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs of a sweep with the same key: one measures, the others wait for its result and read it."""
    cfg = make_cfg(f"lr_find.cache_dir={tmp_path / 'cache'}")  # empty: not the session's
    dm = pipeline.build_datamodule(cfg)
    net = pipeline.build_net(cfg, dm)
    measured: list[int] = []
    measure = app_lr_find._measure

    def slow_measure(*args, **kwargs):
        measured.append(1)
        time.sleep(0.5)  # long enough for every other job to be waiting on the lock
        return measure(*args, **kwargs)

    monkeypatch.setattr(app_lr_find, "_measure", slow_measure)
    found: list[app_lr_find.FoundLR] = []
    jobs = [
        threading.Thread(target=lambda: found.append(app_lr_find.find_learning_rate(cfg, net, dm)))
        for _ in range(3)
    ]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    assert len(measured) == 1 and len(found) == 3
    assert sorted(f.cached is None for f in found) == [False, False, True]
    assert len({(f.lr, tuple(f.losses)) for f in found}) == 1


# -- through the command line ------------------------------------------------------------------
@pytest.mark.slow
def test_auto_lr_writes_its_curve_is_cached_and_changes_nothing_else(tmp_path: Path) -> None:
    """The default digits data: the test's value and curve in the run folder and TensorBoard; a second run reads
    the cache; a run given that value as a number starts from the same weights and trains identically."""
    cache = tmp_path / "cache"
    common = ["trainer.max_epochs=2", "~callbacks.progress_bar", f"paths.cache_dir={cache}"]
    runs = [tmp_path / name for name in ("auto", "auto_again", "number")]
    proc = run_module("src.train", *common, f"hydra.run.dir={runs[0]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("optimizer.lr=auto: "))
    assert line.startswith("optimizer.lr=auto: 0.1 (learning-rate range test, ") and " steps in " in line
    rows = (runs[0] / "lr_find.csv").read_text().splitlines()
    assert rows[0] == "step,lr,loss,loss_smoothed" and SKIP_START < len(rows) - 1 <= 100
    events = read_events(runs[0])
    # the figure is the TensorBoard image, pixel for pixel (at step 0), and the console line its text
    [(step, [png])] = read_images(events)[LR_FIND_TAG]
    figure = png_pixels((runs[0] / "figures" / "lr_find.png").read_bytes())
    assert step == 0 and figure.shape[0] >= 300 and np.array_equal(figure, png_pixels(png))
    [text] = events.Tensors(f"{LR_FIND_TAG}/text_summary")
    assert text.tensor_proto.string_val[0].decode() == line
    assert yaml.safe_load((runs[0] / "hparams.yaml").read_text())["optimizer"]["lr"] == 0.1
    assert len(list((cache / "lr_find").glob("*.json"))) == 1

    proc = run_module("src.train", *common, f"hydra.run.dir={runs[1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "optimizer.lr=auto: 0.1 (learning-rate range test, cached in " in proc.stdout
    assert (runs[1] / "lr_find.csv").read_text() == (runs[0] / "lr_find.csv").read_text()

    proc = run_module("src.train", *common, "optimizer.lr=0.1", f"hydra.run.dir={runs[2]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (runs[2] / "lr_find.csv").exists()
    initial = [
        torch.load(r / "checkpoints" / "initial.ckpt", weights_only=False)["state_dict"] for r in runs[::2]
    ]
    assert all(torch.equal(initial[0][k], initial[1][k]) for k in initial[0])
    last = [torch.load(r / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"] for r in runs[::2]]
    assert all(torch.equal(last[0][k], last[1][k]) for k in last[0])  # trained identically


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("lr_find.steps=5", "lr_find.steps=5 must be a whole number >= 20"),
        ("lr_find.min_lr=20", "lr_find.min_lr=20 and lr_find.max_lr=10.0 must satisfy 0 < min_lr < max_lr"),
        ("lr_find.min_lr=1", "the range test's loss diverged within 10 steps"),  # no curve before it blows up
    ],
)
def test_bad_range_test_settings_are_one_line_errors(make_cfg, override: str, needle: str) -> None:
    with pytest.raises(UserError) as err:
        pipeline.train(make_cfg(override))
    assert needle in str(err.value)
