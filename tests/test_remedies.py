"""Remedies: the recommendation rule, the sweep report on fabricated run folders, report.png's zoomed panels,
the "What you can do" text, and a real ``experiment=remedies`` multirun through the command line."""

from __future__ import annotations

import csv
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lossdiag.app.sweep_report import build_report, curve_bands, group_runs, load_runs
from lossdiag.diagnosis.judge.causes import Cause
from lossdiag.diagnosis.judge.rules import Kind
from lossdiag.diagnosis.judge.verdict import Verdict, judge
from lossdiag.functional.remedies import RemedyResult, recommend
from lossdiag.render.history_figures import CurveBand, sweep_figure
from lossdiag.render.reasons import Context
from lossdiag.render.remedies import what_you_can_do
from lossdiag.rundir.metrics_csv import read_history
from lossdiag.rundir.remedies import read_remedies_report
from tests.conftest import run_module
from tests.test_diagnosis import _samples
from tests.test_report import make_run

EPOCHS = 6


def result(label: str, acc: float, ce: float, ratio: float = 1.0) -> RemedyResult:
    return RemedyResult(label, 3, acc, 0.01, ce, 0.02, ratio)


# -- the rule --------------------------------------------------------------------------------
def test_recommend_lowest_ce_within_one_point_of_cross_entropy() -> None:
    ce = result("remedy=cross_entropy", 0.920, 0.40, 1.4)
    rows = [
        ce,
        result("remedy=bounded", 0.680, 0.10),  # lowest CE, but 24 points less accurate: not eligible
        result("remedy=focal", 0.911, 0.27, 1.0),  # 0.9 points below: eligible, lowest eligible CE
        result("remedy=label_smoothing", 0.935, 0.38, 1.16),  # more accurate, higher CE than focal
        result("remedy=augment", 0.905, 0.20),  # 1.5 points below: not eligible
    ]
    rec = recommend(rows, "remedy=cross_entropy")
    assert rec.choice is not None and rec.choice.label == "remedy=focal"
    assert rec.eligible == ("remedy=focal", "remedy=label_smoothing")
    # exactly 1 point below still counts
    edge = recommend([ce, result("remedy=x", 0.910, 0.3)], "remedy=cross_entropy").choice
    assert edge is not None and edge.label == "remedy=x"


def test_recommend_none_when_nothing_beats_cross_entropy() -> None:
    ce = result("remedy=cross_entropy", 0.92, 0.30)
    assert recommend([ce, result("remedy=a", 0.93, 0.35)], ce.label).choice is None  # higher CE
    assert recommend([ce, result("remedy=b", 0.80, 0.10)], ce.label).choice is None  # too inaccurate
    with pytest.raises(ValueError, match="no group"):
        recommend([ce], "remedy=missing")


# -- the report on fabricated run folders ----------------------------------------------------
def fabricated_sweep(sweep: Path, focal_acc: float) -> None:
    """Two seeds of three remedies, with the configs their remedy sets."""
    rise = [1.0, 0.5, 0.3, 0.35, 0.4, 0.45]  # min 0.3 at epoch 3, last 0.45: 1.5x
    flat = [1.0, 0.5, 0.3, 0.29, 0.28, 0.28]
    configs = {
        "cross_entropy": {"loss": {"name": "standard", "k": 3.0}, "optimizer": {"weight_decay": 0.0}},
        "focal": {"loss": {"name": "focal", "gamma": 3.0, "k": 3.0}, "optimizer": {"weight_decay": 0.0}},
        "bounded": {"loss": {"name": "bounded", "k": 3.0}, "optimizer": {"weight_decay": 0.0}},
    }
    for seed in (0, 1):
        shift = 0.01 * seed
        for remedy, acc, loss, ece in (
            ("cross_entropy", 0.92, [v + shift for v in rise], [0.1] * EPOCHS),
            ("focal", focal_acc, [v + shift for v in flat], [0.05] * EPOCHS),
            ("bounded", 0.70, [0.2] * EPOCHS, None),  # no ece column
        ):
            make_run(
                sweep,
                [f"remedy={remedy}", f"seed={seed}"],
                [0.5] + [acc] * 5,
                loss,
                ece=ece,
                config=configs[remedy],
            )


def test_report_ranks_remedies_and_recommends(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    fabricated_sweep(sweep, focal_acc=0.915)
    groups, _, markdown = build_report(sweep)
    # hand-made folders have no hydra.yaml job number: groups come in folder-name order
    assert [g.label for g in groups] == ["remedy=bounded", "remedy=cross_entropy", "remedy=focal"]
    ce = groups[1]
    assert ce.mean["rise_ratio"] == pytest.approx(np.mean([0.45 / 0.3, 0.46 / 0.31]))
    assert ce.mean["min_val_loss"] == pytest.approx(0.305) and ce.mean["last_val_loss"] == pytest.approx(
        0.455
    )
    assert "**Recommendation: `remedy=focal`**" in markdown
    # what each group sets, against the first group (bounded)
    assert "- `remedy=focal`: loss.gamma=3.0, loss.name=focal" in markdown  # yaml.safe_dump sorted the keys
    assert "- `remedy=cross_entropy`: loss.name=standard" in markdown
    with (sweep / "report.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["remedy"] for r in rows] == [
        "bounded",
        "cross_entropy",
        "focal",
    ]  # one row per group, first column
    assert next(iter(rows[0])) == "remedy"
    assert rows[2]["changes"] == "loss.gamma=3.0, loss.name=focal" and rows[0]["changes"] == ""
    assert float(rows[2]["rise_ratio_mean"]) == pytest.approx(1.0)
    png = (sweep / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    # the same report read back for a run's diagnosis
    remedies = read_remedies_report(sweep / "report.csv")
    assert [r.label for r in remedies] == ["remedy=bounded", "remedy=cross_entropy", "remedy=focal"]
    assert remedies[2].last_ce == pytest.approx(0.285) and remedies[1].rise_ratio == pytest.approx(
        ce.mean["rise_ratio"]
    )


def test_report_says_none_when_no_remedy_keeps_the_accuracy(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    fabricated_sweep(sweep, focal_acc=0.90)  # 2 points below cross-entropy
    _, _, markdown = build_report(sweep)
    assert "**Recommendation: none**: no other group kept its last val accuracy within 1 point" in markdown


def test_report_png_zooms_each_group_on_its_rise(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    fabricated_sweep(sweep, focal_acc=0.915)
    groups = group_runs(load_runs(sweep))
    fig = sweep_figure(curve_bands(groups))
    overview, _, *panels = fig.axes
    assert overview.get_yscale() == "log"
    ce_panel = next(ax for ax in panels if ax.get_title().startswith("remedy=cross_entropy"))
    assert "(1.49x)" in ce_panel.get_title()  # mean curve: 0.455 / 0.305
    low, high = ce_panel.get_ylim()
    # zoomed on the epochs from the minimum on: the first epoch's 1.0 is off the axis, the rise fills it
    assert high < 1.0 and high - low < 0.4


def test_sweep_figure_handles_a_group_without_curves() -> None:
    empty = CurveBand(np.zeros(0), np.zeros(0), np.zeros(0))
    band = CurveBand(np.arange(1, 4), np.array([1.0, 0.5, 0.6]), np.zeros(3))
    fig = sweep_figure([("a (n=1)", band, band), ("b (n=1)", empty, empty)])
    assert len(fig.axes) >= 4


# -- "What you can do" ------------------------------------------------------------------------
def _verdict(**final) -> Verdict:
    """A phenomenon verdict (synthetic records) whose final model numbers are changed as given."""
    verdict = judge(_samples([1.0, 0.5, 1.0, 2.0, 3.0], wrong_loss=4.0))
    assert verdict.kind == "phenomenon"
    return replace(verdict, final=replace(verdict.final, **final))


def test_what_you_can_do_only_for_the_phenomenon() -> None:
    verdict = _verdict(temperature=2.167, temperature_status="ok", scaling_helps=True, loss=0.4035, nll_crossfit=0.2756)
    assert what_you_can_do(replace(verdict, kind=Kind.NO_RISE), Context()) == ""
    ckpts = {"checkpoints/min_val_loss.ckpt": verdict.stats.min_epoch, "checkpoints/best_val_acc.ckpt": 3}
    text = what_you_can_do(verdict, Context(ckpts))
    assert text.startswith("\n## What you can do\n")
    assert f"`checkpoints/min_val_loss.ckpt` (epoch {verdict.stats.min_epoch}, lowest val loss)" in text
    assert "T = 2.167" in text and "from 0.4035 to 0.2756" in text
    # without a remedies sweep, the remedies are named with the command that measures them, not ranked
    assert "experiment=remedies" in text and "Recommendation" not in text and "`remedy=focal`" in text
    assert "worst.csv" in text
    # only checkpoints that exist; in a project of your own no config keys
    assert "checkpoints/" not in what_you_can_do(verdict, Context(config_keys=False))
    assert "remedy=" not in what_you_can_do(verdict, Context(config_keys=False))
    # temperature scaling is offered only where it helps out of sample
    assert "not a fix this val set can vouch for" in what_you_can_do(_verdict(scaling_helps=False), Context())
    assert "at a bound" in what_you_can_do(_verdict(temperature=100.0, temperature_status="at_bound"), Context())
    assert "suspects.csv" in what_you_can_do(verdict, Context(suspects_file="suspects.csv"))


def test_what_you_can_do_quotes_the_sweeps_measurements(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    fabricated_sweep(sweep, focal_acc=0.915)
    build_report(sweep)
    text = what_you_can_do(_verdict(), Context(), read_remedies_report(sweep / "report.csv"))
    assert "| `remedy=focal` | 2 | 0.915 ± 0.000 | 0.285 ± 0.007 | 1.00x |" in text
    assert "**Recommendation: `remedy=focal`**" in text
    assert read_remedies_report(tmp_path / "missing.csv") == []


# -- the experiment and the remedy group -----------------------------------------------------
def test_remedies_experiment_sweeps_every_remedy_over_three_seeds() -> None:
    from hydra import compose, initialize_config_dir

    from lossdiag.render.remedies import REMEDY_WORDS
    from tests.conftest import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=remedies"], return_hydra_config=True)
        params = cfg.hydra.sweeper.params
        assert params.remedy.split(",") == list(REMEDY_WORDS) and params.seed == "0,1,2"
        expected = {
            "cross_entropy": ("standard", None, 0.0, "none"),
            "bounded": ("bounded", None, 0.0, "none"),
            "label_smoothing": ("label_smoothing", ("epsilon", 0.1), 0.0, "none"),
            "focal": ("focal", ("gamma", 3.0), 0.0, "none"),
            "weight_decay": ("standard", None, 1e-3, "none"),
            "augment": ("standard", None, 0.0, "flip_crop"),
            "phuber": ("phuber", ("tau", 10.0), 0.0, "none"),
            "gce": ("gce", ("q", 0.7), 0.0, "none"),
        }
        for remedy, (loss, param, weight_decay, augment) in expected.items():
            c = compose("train", overrides=[f"remedy={remedy}"])
            assert (c.loss.name, c.optimizer.weight_decay, c.data.augment) == (loss, weight_decay, augment), (
                remedy
            )
            if param is not None:
                assert c.loss[param[0]] == param[1], remedy
            assert c.optimizer.lr == "auto" and c.seed == 0


# -- a real remedies multirun ----------------------------------------------------------------
@pytest.mark.slow
def test_remedies_multirun_and_report_through_the_command_line(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_module(
        "src.train",
        "-m",
        "experiment=remedies",
        "remedy=cross_entropy,focal",  # two of the eight remedies ...
        "seed=0",  # ... and one seed instead of three: 2 jobs
        "data.augment=flip_crop",
        "debug=fast",
        "trainer.max_epochs=3",
        "~callbacks.progress_bar",
        "callbacks.diagnosis.figures_every_n_epochs=0",
        "callbacks.diagnosis.reports=false",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    # named by what differs between the jobs: the remedy (seed=0 on the command line fixes the experiment's seed)
    assert jobs == ["remedy=cross_entropy", "remedy=focal"]
    for job in jobs:
        history = read_history(sweep / job)
        assert (
            len([v for v in history["val/loss"] if math.isfinite(v)]) == 3
        )  # CE logged whatever is optimised
        assert all(math.isfinite(v) for v in history["val/loss_bounded"] if not math.isnan(v))
        log = (sweep / job / "train.log").read_text()
        assert "augment=flip_crop" in log and "optimizer.lr=auto: 0.1 " in log
    assert "loss=focal" in (sweep / jobs[1] / "train.log").read_text()

    report = run_module("src.report", str(sweep))
    assert report.returncode == 0, report.stderr[-3000:]
    with (sweep / "report.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["remedy"], r["n"]) for r in rows] == [("cross_entropy", "1"), ("focal", "1")]
    assert rows[1]["changes"] == "loss.name=focal, loss.gamma=3.0"
    for row in rows:
        assert float(row["rise_ratio_mean"]) >= 1.0 and 0 < float(row["last_val_ece_mean"]) < 1
    assert "**Recommendation: " in (sweep / "report.md").read_text()
    assert (sweep / "report.png").stat().st_size > 10_000


def test_an_inconclusive_run_still_points_to_label_errors_that_carry_its_loss() -> None:
    """A rise whose interval includes zero is not explained, but flagged label errors that carry most of the final
    loss are named with the file that lists them (a 600-image folder with 8% moved labels: 10 flagged val images
    carried 97% of the final loss while the rise's interval was -2% to 68%)."""
    from lossdiag.render.reasons import advice

    verdict = replace(_verdict(), kind=Kind.INCONCLUSIVE, cause=Cause.NONE)
    groups = {g: {"n": 0, "loss": 0.0, "share": 0.0} for g in verdict.final_loss_by_group}
    carried = replace(verdict, final_loss_by_group={**groups, "suspected_label_error": {"n": 10, "loss": 0.46, "share": 0.969}})
    text = advice(carried, Context(suspects_file="suspects.csv"))
    assert text.startswith("Use a larger val set")
    assert text.endswith("the 10 val samples that look mislabelled carry 96.9% of the final loss: check them first (`suspects.csv`).")
    light = replace(verdict, final_loss_by_group={**groups, "suspected_label_error": {"n": 2, "loss": 0.1, "share": 0.2}})
    assert "mislabelled" not in advice(light, Context(suspects_file="suspects.csv"))
