"""What a person sees: run names, TensorBoard (epochs on the x-axis, HParams, Custom Scalars), the console
and train.log, the ``samples.npz`` table of docs/diagnosis.md, and no folder for a run rejected before any work.

One real ``python -m src.train`` run, as a user starts it (its own working directory, console redirected,
so stdout is not a terminal), is read back from its event files, console and files.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lossdiag.callbacks.lr_find import LR_FIND_TAG
from lossdiag.callbacks.tensorboard import HPARAM_METRICS, LAYOUT
from lossdiag.diagnosis.samples import FIELDS, load_samples
from lossdiag.functional.calibration import CALIBRATION_KEYS, SPLIT_KEYS
from lossdiag.functional.crossfit import CROSSFIT_SPLITS
from lossdiag.rundir.metrics_csv import read_history
from tests.conftest import ROOT, child_env, read_events, read_images

EPOCHS = 3
OVERRIDES = (
    "loss=bounded",
    f"trainer.max_epochs={EPOCHS}",
    "data.train_size=60",
    "callbacks.diagnosis.figures_every_n_epochs=2",
)


def run_train(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m src.train`` started in ``cwd`` (where ``outputs/`` goes), this checkout's code, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "src.train", *args],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def user_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    cwd = tmp_path_factory.mktemp("user")
    proc = run_train(cwd, *OVERRIDES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((cwd / "outputs" / "runs").glob("*/*"))
    assert len(runs) == 1, runs
    return proc, runs[0]


@pytest.fixture(scope="module")
def events(user_run) -> EventAccumulator:
    return read_events(user_run[1])


# -- 1. run names ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_run_folder_is_named_by_time_and_overrides(user_run) -> None:
    run = user_run[1]
    time, _, overrides = run.name.partition("_")
    assert re.fullmatch(r"\d\d-\d\d-\d\d", time), run.name
    assert overrides == ",".join(sorted(OVERRIDES)), run.name  # Hydra's override_dirname: sorted keys
    assert "loss=bounded" in run.name


def test_plain_default_run_keeps_just_the_time(tmp_path: Path) -> None:
    from lossdiag.app.resolvers import _claimed, claim_unique_dir, run_suffix

    assert run_suffix("") == ""
    assert run_suffix("loss=bounded") == "_loss=bounded"
    several = "callbacks.diagnosis.worst_k=8,data.train_size=60,loss=bounded,optimizer.weight_decay=0.001,trainer.max_epochs=30"
    assert (
        run_suffix(several)
        == "_c.d.worst_k=8,d.train_size=60,loss=bounded,o.weight_decay=0.001,t.max_epochs=30"
    )
    long = run_suffix(",".join(f"optimizer.param_{i}=0.{i}" for i in range(30)))
    assert len(long.encode()) <= 101 and long.startswith("_o.param_0=0.0,o.param_1=0.1,")
    assert run_suffix("data.root=/a/b") == "_data.root=_a_b"  # one folder, never a path
    _claimed.clear()
    base = str(tmp_path / "10-00-00")
    first = claim_unique_dir(base, "_loss=bounded")
    _claimed.clear()  # another process, same second, same overrides
    second = claim_unique_dir(base, "_loss=bounded")
    _claimed.clear()
    assert Path(first).name == "10-00-00_loss=bounded" and Path(second).name == "10-00-00-1_loss=bounded"


def test_run_folder_paths_are_quoted_for_hydra() -> None:
    from lossdiag.app.cli import quote_paths

    argv = ["ckpt_path=outputs/runs/d/10-00-00_loss=bounded,seed=1/checkpoints/best.ckpt", "loss=bounded"]
    assert quote_paths(argv) == [
        "ckpt_path='outputs/runs/d/10-00-00_loss=bounded,seed=1/checkpoints/best.ckpt'",
        "loss=bounded",
    ]
    untouched = ["data.root=/a,/b", "ckpt_path='x=y'", "seed=1"]
    assert quote_paths(untouched) == untouched


# -- 2. epochs on the x-axis ------------------------------------------------------------------------
@pytest.mark.slow
def test_every_scalar_histogram_image_and_text_is_at_an_epoch(events) -> None:
    tags = events.Tags()
    epochs = list(range(EPOCHS))
    assert [s.step for s in events.Scalars("val/loss")] == epochs
    assert [s.step for s in events.Scalars("train/loss")] == epochs
    for tag in tags["scalars"]:
        steps = [s.step for s in events.Scalars(tag)]
        assert set(steps) <= set(epochs), (tag, steps)
        assert len(steps) == len(set(steps)), (tag, steps)  # one value per epoch
    for tag in tags["histograms"]:
        assert [h.step for h in events.Histograms(tag)] == epochs, tag
    images = read_images(events)
    assert [step for step, _ in images["val/worst_samples"]] == [1, 2]  # every 2 epochs and the last
    last = EPOCHS - 1
    texts = [t for t in tags["tensors"] if "text" in t and not t.startswith(LR_FIND_TAG)]
    for tag in [t for t in images if t.startswith("diagnosis/")] + texts:
        steps = [e.step for e in events.Tensors(tag)]
        assert steps == [last], (tag, steps)
    # optimizer.lr=auto's range test ran before epoch 0: its curve and choice are at step 0
    assert [step for step, _ in images[LR_FIND_TAG]] == [0]
    assert [t.step for t in events.Tensors(f"{LR_FIND_TAG}/text_summary")] == [0]


# -- 3. HParams -------------------------------------------------------------------------------------
def _hparams(events: EventAccumulator) -> tuple[dict, list[str]]:
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    values = {}
    for key, value in start.session_start_info.hparams.items():
        kind = value.WhichOneof("kind")
        values[key] = getattr(value, kind)
    return values, [m.name.tag for m in experiment.experiment.metric_infos]


@pytest.mark.slow
def test_hparams_are_what_a_person_compares(events) -> None:
    values, metrics = _hparams(events)
    assert len(values) <= 25, sorted(values)
    assert (
        values["loss"] == "bounded"
        and values["trainer.max_epochs"] == EPOCHS
        and values["data.train_size"] == 60
    )
    assert values["callbacks.diagnosis.figures_every_n_epochs"] == 2  # every override
    for key in (
        "data",
        "image_size",
        "train_samples",
        "model",
        "optimizer",
        "optimizer.lr",
        "optimizer.weight_decay",
        "loss.k",
        "seed",
    ):
        assert key in values, (key, sorted(values))
    assert values["data"] == "digits" and values["image_size"] == "1x8x8" and values["train_samples"] == 60
    # optimizer.lr=auto: the number the range test chose (for these 60 training digits), not "auto"
    assert values["optimizer"] == "sgd" and values["optimizer.lr"] == pytest.approx(0.05)
    assert not [k for k in values if "_target_" in k or "dir" in k or "path" in k]
    assert not [v for v in values.values() if isinstance(v, str) and "/" in v]
    # the metrics the HParams tab compares are per-epoch tags the run wrote, named as in the CSV; the tab shows
    # each one's value at the last epoch, which sums the run up
    assert metrics == list(HPARAM_METRICS)
    history = read_history(events.path)
    for metric in metrics:
        assert [s.step for s in events.Scalars(metric)] == list(range(EPOCHS)), metric
        assert events.Scalars(metric)[-1].value == pytest.approx(history[metric][-1], rel=1e-6), metric
    assert history["val/loss_min"][-1] == pytest.approx(min(history["val/loss"]), rel=1e-6)
    assert history["val/acc_best"][-1] == pytest.approx(max(history["val/acc"]), rel=1e-6)


def test_hparams_without_hydra_are_curated_and_bounded(make_cfg) -> None:
    from types import SimpleNamespace

    from lossdiag.app.hparams import MAX_HPARAMS, curated_hparams, override_hparams, run_hparams

    given = [
        "data=folder",
        "data.root=/somewhere/pets",
        "loss=bounded",
        "optimizer=adam",
        "optimizer.lr=0.01",
    ]
    cfg = make_cfg(*given)
    dm = SimpleNamespace(depth=3, height=32, width=32, train=range(120))
    values = curated_hparams(cfg, dm, {})  # outside Hydra: options named by what they build
    assert values["data"] == "ImageFolderDataModule:pets" and values["optimizer"] == "Adam"
    assert values["image_size"] == "3x32x32" and values["train_samples"] == 120 and values["loss.k"] == 3.0
    hidden = [
        "~callbacks.diagnosis",
        "hydra.run.dir=/z",
        "model._target_=a.B",
        "ckpt_path=x.ckpt",
        "launcher=joblib",
    ]
    overrides = override_hparams(cfg, [*given, *hidden])
    assert overrides == {
        "data": "folder",
        "loss": "bounded",
        "optimizer": "adam",
        "optimizer.lr": 0.01,
        "callbacks.diagnosis": "removed",
        "model": "B",  # model._target_=a.B: the class names the model
    }
    hparams = run_hparams(cfg, dm, [*given, *hidden], {"data": "folder", "optimizer": "adam"})
    assert list(hparams)[:6] == list(overrides) and hparams["model"] == "B" and hparams["seed"] == 0
    assert run_hparams(cfg, dm, given, {"data": "folder", "optimizer": "adam"})["model"] == "ShallowNet"
    many = [f"+extra.k{i}={i}" for i in range(40)]
    crowded = run_hparams(make_cfg(*many), dm, many, {})
    assert len(crowded) == MAX_HPARAMS and next(iter(crowded)) == "extra.k0"


# -- 4. Custom Scalars ------------------------------------------------------------------------------
@pytest.mark.slow
def test_custom_scalars_layout_tells_the_story(events) -> None:
    from tensorboard.plugins.custom_scalar import layout_pb2

    [layout_event] = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(layout_event.tensor_proto.string_val[0])
    charts = {
        chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart
    }
    assert [c.title for c in layout.category] == list(LAYOUT)
    first = layout.category[0]
    titles = [chart.title for chart in first.chart]
    assert titles[0] == "val loss vs val accuracy" and charts[titles[0]] == ["^val/loss$", "^val/acc$"]
    story = " | ".join(titles)
    for words in ("median, p99, max", "correct vs wrong", "ECE and fitted temperature"):
        assert words in story, story
    scalars = events.Tags()["scalars"]
    for title, regexes in charts.items():  # every chart line is a tag the run wrote, exactly one
        for regex in regexes:
            assert len([t for t in scalars if re.match(regex, t)]) == 1, (title, regex)
    assert not [t for t in scalars if re.search(r"/(precision|recall|f1)/", t)]  # no per-class tags


# -- 6. the console ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_console_says_each_thing_once_and_ends_with_verdict_and_run_folder(user_run) -> None:
    proc, run = user_run
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    everything = lines + errors
    repeated = [line for line, n in Counter(everything).items() if n > 1]
    assert not repeated, repeated
    assert len(everything) <= 12, everything
    for noise in (
        "litlogger",
        "Tip",
        "deprecated",
        "INFO",
        "GPU available",
        "sync_dist",
        "logging interval",
        "\r",
    ):
        assert not [line for line in everything if noise in line], (noise, everything)
    progress = [i for i, line in enumerate(lines) if line.startswith("epoch ")]
    assert len(progress) == 1, lines  # one progress line: the last epoch
    (at,) = progress
    assert lines[at].startswith(
        f"epoch {EPOCHS - 1} ({EPOCHS}/{EPOCHS} done): val/loss "
    )  # epochs from 0, as TensorBoard
    assert any(line.startswith("data: ") for line in lines[:at])  # what is trained on, before training
    relative = run.relative_to(run.parents[3])
    assert lines[-1] == (
        f"Run folder: {relative}  (TensorBoard: tensorboard --logdir {relative.parent}, run {run.name})"
    ), lines[-1]
    assert lines[-2] == f"Full diagnosis: {relative / 'diagnosis.md'}"
    verdict = lines[at + 1 : -2]  # between the progress line and the file names: the three-line verdict
    assert len(verdict) == 3 and "val loss" in verdict[0].lower(), verdict
    log = (run / "train.log").read_text()
    for line in [*verdict, lines[-1], *lines[:at]]:
        assert log.count(line) == 1, line
    assert "GPU available" in log and "litlogger" not in log  # Lightning's information in the file only


# -- 7. files ---------------------------------------------------------------------------------------
def test_run_rejected_before_any_work_leaves_no_folder(tmp_path: Path) -> None:
    proc = run_train(tmp_path, "loss.k=-1")
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: loss.k=-1 must be > 0"), (
        proc.stderr
    )
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() or p.parent.name == "runs"]
    assert not leftovers, leftovers


def docs_samples_table(page: str, which: int = 0) -> list[dict[str, str]]:
    """The rows of the ``which``-th table under the page's ``## `samples.npz``` heading, by column header."""
    section = page.split("\n## `samples.npz`\n", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|"))]
    start = starts[which]
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    return [
        dict(zip(header, (cell.strip() for cell in row.strip("|").split("|")), strict=True))
        for row in rows[2:]
    ]


def _code(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _expand(items: list[str]) -> list[dict[str, str]]:
    """Every substitution of the placeholders ``<f>`` and ``<calib>`` the table defines."""
    text = " ".join(items)
    if "<f>" in text:
        return [{"<f>": f} for f in FIELDS]
    if "<calib>" in text:
        return [{"<calib>": c} for c in CALIBRATION_KEYS]
    if "<splits>" in text:
        return [{"<splits>": c} for c in SPLIT_KEYS]
    return [{}]


@pytest.mark.slow
def test_docs_samples_table_is_what_load_samples_gives(user_run) -> None:
    run = user_run[1]
    page = (ROOT / "docs" / "diagnosis.md").read_text()
    table = docs_samples_table(page) + docs_samples_table(page, 1)
    assert table, "no samples.npz table in docs/diagnosis.md"
    key_col, attr_col, shape_col = list(table[0])[:3]
    s = load_samples(run)
    with np.load(run / "samples.npz", allow_pickle=False) as data:
        stored = {k: data[k] for k in data.files}
    for name, journal in (("val_epochs.bin", s.val_journal), ("train_dynamics.bin", s.dynamics)):
        records = journal.records()
        stored.update({f"{name}:{field}": np.asarray(records[field]) for field in records.dtype.names})
    sizes = {
        "N": len(s.val.index), "Nt": len(s.train.index), "E": len(s.epochs), "Et": len(s.dynamics_epochs),
        "M": len(s.models), "Mt": sum("train" in e for e in s.models.values()), "C": len(s.classes),
        "S": CROSSFIT_SPLITS, "K": len(CALIBRATION_KEYS), "2": 2,
    }  # fmt: skip
    documented = set()
    for row in table:
        keys, attrs = _code(row[key_col]), _code(row[attr_col])
        shape = tuple(sizes[d.strip()] for d in row[shape_col].strip("()").split(",") if d.strip())
        assert attrs == [] or len(attrs) == len(keys), row
        for substitution in _expand(keys):
            for i, key in enumerate(keys):
                for placeholder, value in substitution.items():
                    key = key.replace(placeholder, value)
                documented.add(key)
                assert key in stored, (key, sorted(stored))
                assert stored[key].shape == shape, (key, stored[key].shape, shape)
                if not attrs:
                    continue
                attr = attrs[i]
                for placeholder, value in substitution.items():
                    attr = attr.replace(placeholder, value)
                if "[m]" in attr:  # every model, or those evaluated on the training split too
                    names = [m for m in s.models if "train" in s.models[m]] if '["train"]' in attr else s.models
                    got = np.stack([np.asarray(eval(attr, {"s": s, "m": m})) for m in names])
                else:
                    got = np.asarray(eval(attr, {"s": s}))
                assert got.shape == shape and np.array_equal(got, stored[key], equal_nan=got.dtype.kind == "f"), (key, attr)
    assert documented == set(stored), set(stored) ^ documented
    history = read_history(run)
    assert [float(v.mean(dtype=np.float64)) for v in stored["val_epochs.bin:loss"]] == pytest.approx(
        history["val/loss"], rel=1e-5
    )


# -- 5. figures that read at card size --------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32), (3, 300, 200)])
def test_worst_sample_captions_are_never_clipped_and_legible_at_card_size(
    shape: tuple[int, int, int],
) -> None:
    import torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from lossdiag.render.figures import (
        CAPTION_PT,
        CARD_TEXT_PX,
        FIGURE_DPI,
        TILE_PX,
        WORST_TILES,
        card_scale,
        worst_caption,
        worst_samples_figure,
    )

    names = ["golden_retriever_puppy_from_the_shelter", "cat"]
    captions = [worst_caption(names[i % 2], names[(i + 1) % 2], 3.2e-12, 26.123) for i in range(WORST_TILES)]
    fig = worst_samples_figure(torch.rand(WORST_TILES, *shape), captions, title="title")
    renderer = FigureCanvasAgg(fig).get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    headers = [t for t in fig.texts if t.get_text().endswith(" of 9 title")]
    assert [t.get_text() for t in headers] == ["1-3 of 9 title", "4-6 of 9 title", "7-9 of 9 title"]
    lines = [t for t in fig.texts if t not in headers]
    assert len(lines) == 4 * WORST_TILES
    boxes = [t.get_window_extent(renderer) for t in lines]
    # TensorBoard shows one row (a band of fig.band_px pixels) per image card
    assert fig.band_px * 3 == round(height)
    scale = card_scale(width, fig.band_px)
    for text, box in zip([*lines, *headers], [*boxes, *(t.get_window_extent(renderer) for t in headers)], strict=True):
        assert box.x0 >= 0 and box.x1 <= width and box.y0 >= 0 and box.y1 <= height, (
            text.get_text()
        )  # in the figure
        # legible where TensorBoard shows it
        assert text.get_fontsize() * FIGURE_DPI / 72 * scale >= CARD_TEXT_PX, (text.get_fontsize(), width)
    for box, text in zip(boxes, lines, strict=True):
        assert box.width <= TILE_PX, text.get_text()  # within its tile's column
    assert min(t.get_fontsize() for t in lines) >= CAPTION_PT[1]
    for i, a in enumerate(boxes):  # no caption line overlaps another
        assert not any(a.overlaps(b) for b in boxes[i + 1 :]), lines[i].get_text()
    assert any(
        t.get_text().endswith("\u2026") for t in lines
    )  # the long class name was shortened, not clipped
    assert {t.get_text() for t in lines} >= {"loss 26.1", "p(given) 3.2e-12", "given: cat", "predicted: cat"}


def test_loss_distribution_is_one_chart_with_every_model() -> None:
    from lossdiag.render.figures import loss_distribution_figure

    rng = np.random.default_rng(0)
    losses = {
        name: rng.exponential(scale, 200) for name, scale in (("initial", 2.3), ("best", 0.3), ("last", 0.4))
    }
    fig = loss_distribution_figure(losses, epochs={"initial": -1, "best": 7, "last": 99})
    assert len(fig.axes) == 1
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert [label.split(":")[0] for label in labels] == [
        "initial (untrained)",
        "best (epoch 7)",
        "last (epoch 99)",
    ]
