"""TensorBoard with many runs, as a person opens it: the run's name under the ``--logdir`` the console prints,
the order of the Scalars tab's tag groups, evaluations named by checkpoint and folder, every TensorBoard image
also a PNG under ``figures/``, and figures that read at TensorBoard's card size with a legend for every colour.

One real ``python -m src.train`` run and one ``python -m src.evaluate`` of it, started in a user's working
directory, are read back with TensorBoard's own event readers.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.text import Text
from omegaconf import OmegaConf

from lossdiag.callbacks.tensorboard import HPARAM_METRICS
from lossdiag.rundir.metrics_csv import read_history
from tests.conftest import png_pixels, read_events, read_images, run_module

EPOCHS = 3
# "Run folder: <run>  (TensorBoard: tensorboard --logdir <logdir>, run <name>)", the console's last line
LAST_LINE = re.compile(
    r"Run folder: (?P<run>.+)  \(TensorBoard: tensorboard --logdir (?P<logdir>.+), run (?P<name>.+)\)"
)


@pytest.fixture(scope="module")
def user_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess, Path]:
    cwd = tmp_path_factory.mktemp("user")
    proc = run_module(
        "src.train", "loss=bounded", f"trainer.max_epochs={EPOCHS}", "data.train_size=60",
        "callbacks.diagnosis.figures_every_n_epochs=2", cwd=cwd,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (cwd / "outputs" / "runs").glob("*/*")
    return cwd, proc, run


def tensorboard_runs(logdir: Path) -> dict[str, set[str]]:
    """What TensorBoard lists for ``tensorboard --logdir <logdir>``: run name -> the plugins it has data for."""
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    mux = EventMultiplexer().AddRunsFromDirectory(str(logdir))
    mux.Reload()
    runs: dict[str, set[str]] = {name: set() for name in mux.Runs()}
    for plugin in ("hparams", "scalars", "images"):
        for name in mux.PluginRunToTagToContent(plugin):
            runs[name].add(plugin)
    return runs


# -- 1. the run's name under the printed --logdir ----------------------------------------------------
@pytest.mark.slow
def test_the_printed_logdir_lists_the_run_by_its_folder_name(user_run) -> None:
    cwd, proc, run = user_run
    printed = LAST_LINE.fullmatch(proc.stdout.splitlines()[-1])
    assert printed, proc.stdout.splitlines()[-1]
    assert cwd / printed["run"] == run and printed["name"] == run.name
    runs = tensorboard_runs(cwd / printed["logdir"])
    # TensorBoard names a run by its event files' folder relative to --logdir: never "." (also HParams' Trial ID)
    assert runs == {run.name: {"hparams", "scalars", "images"}}
    assert re.fullmatch(r"\d\d-\d\d-\d\d_.*loss=bounded.*", run.name), run.name  # its time and overrides


# -- 2. the Scalars tab: train/ and val/ first ----------------------------------------------------------
def _compare_tag_names(a: str, b: str) -> int:
    """TensorBoard's ``compareTagNames`` (tensorboard/webapp/metrics/utils.ts), which orders the cards of a
    dashboard: digit runs compare as numbers, ``/`` (and a digit) before any other character, else by code."""

    def number_end(s: str, i: int) -> int:
        match = re.match(r"\d+(\.\d*)?([eE][+-]?\d+)?", s[i:])
        return i + (match.end() if match else 0)

    i = j = 0
    while True:
        if i == len(a):
            return 0 if j == len(b) else -1
        if j == len(b):
            return 1
        if a[i].isdigit() and b[j].isdigit():
            i2, j2 = number_end(a, i), number_end(b, j)
            x, y = float(a[i:i2]), float(b[j:j2])
            if x != y:
                return -1 if x < y else 1
            i, j = i2, j2
            continue
        a_break, b_break = a[i] == "/" or a[i].isdigit(), b[j] == "/" or b[j].isdigit()
        if a_break != b_break:
            return -1 if a_break else 1
        if not a_break and a[i] != b[j]:
            return -1 if a[i] < b[j] else 1
        i, j = i + 1, j + 1


def tag_groups(tags: list[str]) -> list[str]:
    """The tag groups as TensorBoard shows them, top to bottom: tags sorted by :func:`_compare_tag_names`, each
    group (the part before the first ``/``) where its first tag is."""
    from functools import cmp_to_key

    groups: list[str] = []
    for tag in sorted(tags, key=cmp_to_key(_compare_tag_names)):
        if tag.split("/", 1)[0] not in groups:
            groups.append(tag.split("/", 1)[0])
    return groups


def test_tensorboard_group_order_reproduces_the_complaint() -> None:
    before = ["val/acc", "train/loss", "loss/cap", "hparams/val_acc_best", "val/loss_p99", "val/loss_p9"]
    assert tag_groups(before) == ["hparams", "loss", "train", "val"]  # what the issue saw
    assert _compare_tag_names("val/loss_p9", "val/loss_p99") < 0 < _compare_tag_names("val/a10", "val/a9")
    assert _compare_tag_names("val/x", "val_x/a") < 0  # "/" before any other character


@pytest.mark.slow
def test_scalars_tab_opens_on_train_and_val_and_hparams_use_their_names(user_run) -> None:
    _, _, run = user_run
    events = read_events(run)
    scalars = events.Tags()["scalars"]
    assert tag_groups(scalars) == ["train", "val"]  # no one-point summary group (hparams/, loss/) before them
    history = read_history(run)
    assert set(scalars) <= set(history)  # one name for each metric: TensorBoard, CSV, HParams
    for metric in HPARAM_METRICS:  # the HParams tab shows each one's value at the last epoch
        assert [s.step for s in events.Scalars(metric)] == list(range(EPOCHS)), metric
    assert history["train/loss_cap"] == [history["train/loss_cap"][0]] * EPOCHS


# -- 3. evaluations named by checkpoint and folder ------------------------------------------------------
@pytest.mark.slow
def test_an_evaluation_is_named_by_its_checkpoint_and_run(user_run) -> None:
    cwd, _, run = user_run
    ckpt = run / "checkpoints" / "best_val_acc.ckpt"
    proc = run_module("src.evaluate", f"ckpt_path={ckpt.relative_to(cwd)}", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (evaluation,) = (cwd / "outputs" / "evaluations").glob("*/*")
    assert re.fullmatch(rf"\d\d-\d\d-\d\d_best_val_acc_of_{re.escape(run.name)}", evaluation.name), evaluation.name
    printed = LAST_LINE.fullmatch(proc.stdout.splitlines()[-1])
    assert printed and cwd / printed["run"] == evaluation
    assert set(tensorboard_runs(cwd / printed["logdir"])) == {evaluation.name}


def test_evaluation_names_say_which_checkpoint_of_which_run_on_which_folder(tmp_path: Path) -> None:
    from lossdiag.app.resolvers import evaluation_suffix

    run = tmp_path / "runs" / "10-26-53_data=folder"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(
        OmegaConf.create({"data": {"root": str(tmp_path / "animals")}}), run / ".hydra" / "config.yaml"
    )
    ckpt = run / "checkpoints" / "last.ckpt"
    assert evaluation_suffix(str(ckpt)) == "_last_of_10-26-53_data=folder"
    assert (
        evaluation_suffix(str(ckpt), str(tmp_path / "animals")) == "_last_of_10-26-53_data=folder"
    )  # its own
    assert evaluation_suffix(str(ckpt), str(tmp_path / "pets")) == "_last_of_10-26-53_data=folder_on_pets"
    assert evaluation_suffix(str(tmp_path / "model.ckpt")) == "_model"  # not in a run folder
    assert evaluation_suffix(None) == ""  # no checkpoint: src.evaluate says so in one line
    sweep_job = tmp_path / "sweeps" / "d" / "t" / "loss=bounded,seed=1" / "checkpoints" / "best.ckpt"
    assert evaluation_suffix(str(sweep_job)) == "_best_of_loss=bounded,seed=1"


# -- 4. every TensorBoard image is also a PNG under figures/ ---------------------------------------------
def figure_file(run: Path, tag: str, step: int) -> Path:
    """Where the PNG of TensorBoard image ``tag`` at ``step`` is: ``val/<x>`` (drawn during training) under
    ``figures/epochs/<x>_<step>.png``, ``suspects/<split>`` as ``suspects_<split>.png``, others by their name."""
    group, name = tag.split("/", 1)
    if group == "val":
        return run / "figures" / "epochs" / f"{name}_{step:04d}.png"
    if group == "suspects" and name in ("train", "val"):
        return run / "figures" / f"suspects_{name}.png"
    return run / "figures" / f"{name}.png"


@pytest.mark.slow
def test_every_tensorboard_image_is_also_a_png_under_figures(user_run) -> None:
    _, _, run = user_run
    images = read_images(read_events(run))
    grids = {"val/worst_samples", "diagnosis/worst_samples", "suspects/train", "suspects/val"}
    assert {
        "val/reliability",
        "diagnosis/reliability",
        "diagnosis/loss_distribution",
        "suspects/data_map",
    } | grids <= set(images)
    written = set()
    for tag, steps in images.items():
        for step, pngs in steps:
            path = figure_file(run, tag, step)
            # the PNG is the TensorBoard image, pixel for pixel: a grid's rows (one sample each) stacked
            np.testing.assert_array_equal(
                png_pixels(path.read_bytes()), np.concatenate([png_pixels(p) for p in pngs]), err_msg=tag
            )
            written.add(path)
            # a grid of 9 is 3 TensorBoard images of one row each; a chart one image
            assert len(pngs) == (3 if tag in grids else 1), (tag, len(pngs))
    assert written == set((run / "figures").rglob("*.png"))  # and no PNG TensorBoard does not show
    assert [step for step, _ in images["val/worst_samples"]] == [1, 2]


# -- 5. legible at card size, a legend for every colour ---------------------------------------------------
def _figures() -> dict[str, Figure]:
    """One of each figure TensorBoard shows, from made-up numbers shaped like a run's."""
    from lossdiag.diagnosis.judge.causes import GROUPS
    from lossdiag.functional.learning_rate import smooth
    from lossdiag.render.figures import (
        WORST_TILES,
        data_map_figure,
        groups_figure,
        loss_distribution_figure,
        lr_find_figure,
        reliability_figure,
        worst_caption,
        worst_samples_figure,
    )

    rng = np.random.default_rng(0)
    conf = rng.uniform(0.1, 1.0, 449)
    losses = {
        name: rng.exponential(scale, 449) for name, scale in (("initial", 2.3), ("best", 0.3), ("last", 0.4))
    }
    captions = [worst_caption("golden_retriever", "cat", 3.2e-12, 26.1) for _ in range(WORST_TILES)]
    lrs = np.geomspace(1e-5, 3.0, 90)
    lr_losses = 2.3 - 1.2 / (1 + (1e-2 / lrs) ** 1.5) + np.maximum(lrs - 1, 0) * 5 + rng.normal(0, 0.05, 90)
    return {
        "reliability": reliability_figure(conf, rng.uniform(size=449) < conf, title="final model, val"),
        "loss_distribution": loss_distribution_figure(losses, epochs={"initial": -1, "best": 7, "last": 99}),
        "data_map": data_map_figure(
            rng.uniform(size=150), rng.uniform(0, 0.4, 150), rng.uniform(size=150) < 0.1
        ),
        "worst_samples": worst_samples_figure(torch.rand(WORST_TILES, 3, 32, 32), captions, title="title"),
        "lr_find": lr_find_figure(lrs, lr_losses, smooth(lr_losses), (0.933, "lowest smoothed loss"), 0.1),
        "rise_by_group": groups_figure(
            {g: {"n": 10, "rise": r, "share": r / 0.3} for g, r in zip(GROUPS, (0.2, 0.0, 0.15, 0.05, -0.02, -0.08), strict=True)},
            {g: {"n": 10, "loss": v, "share": v / 0.5} for g, v in zip(GROUPS, (0.2, 0.0, 0.2, 0.05, 0.01, 0.04), strict=True)},
        ),
    }


@pytest.mark.parametrize(
    "name", ["reliability", "loss_distribution", "data_map", "worst_samples", "rise_by_group", "lr_find"]
)
def test_every_text_is_legible_in_tensorboards_card(name: str) -> None:
    from lossdiag.render.figures import CARD_TEXT_PX, card_scale, figure_samples, render

    fig = _figures()[name]
    image = render(fig)
    samples = figure_samples(fig, image)
    height, width = samples[0].shape[:2]  # what one TensorBoard card shows
    scale = card_scale(width, height)
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert len(texts) > 5
    for text in texts:
        shown = text.get_fontsize() * fig.dpi / 72 * scale
        assert shown >= CARD_TEXT_PX, (name, text.get_text(), round(shown, 1), (width, height))
    assert min(width, height) >= 300  # and large enough on disk


def _rgb(colour) -> tuple[float, ...]:
    return tuple(round(c, 2) for c in to_rgb(colour))


def drawn_colours(fig: Figure) -> set[tuple[float, ...]]:
    """Every colour a figure's axes draw data in (lines, markers, bars, outlines, scatter points, bands)."""
    out = set()
    for ax in fig.axes:
        out |= {_rgb(line.get_color()) for line in ax.get_lines() if line.get_visible()}
        for patch in ax.patches:
            out.add(_rgb(patch.get_facecolor() if patch.get_fill() else patch.get_edgecolor()))
        for collection in ax.collections:
            out |= {_rgb(c) for c in collection.get_facecolors()}
    return out - {_rgb("white")}


def legend_colours(fig: Figure) -> set[tuple[float, ...]]:
    """Every colour the figure's legends name."""
    out = set()
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]
    for handle in (h for legend in legends for h in legend.legend_handles):
        if hasattr(handle, "get_color") and not hasattr(handle, "get_facecolors"):
            out.add(_rgb(handle.get_color()))
        elif hasattr(handle, "get_facecolors"):
            out |= {_rgb(c) for c in handle.get_facecolors()}
        else:
            out.add(_rgb(handle.get_facecolor() if handle.get_fill() else handle.get_edgecolor()))
    return out


def test_every_colour_of_every_figure_is_in_a_legend() -> None:
    from lossdiag.render.history_figures import CurveBand, sweep_figure

    figures = {name: fig for name, fig in _figures().items() if name != "worst_samples"}
    band = CurveBand(np.arange(1, 6), np.array([0.5, 0.3, 0.35, 0.4, 0.45]), np.full(5, 0.02))
    acc = CurveBand(np.arange(1, 6), np.linspace(0.5, 0.9, 5), np.full(5, 0.01))
    figures["report"] = sweep_figure([("loss=standard (n=3)", band, acc), ("loss=bounded (n=3)", band, acc)])
    for name, fig in figures.items():
        missing = drawn_colours(fig) - legend_colours(fig)
        assert not missing, (name, missing)
