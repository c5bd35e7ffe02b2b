"""End to end: a training run writes every diagnosis file and TensorBoard tag, the verdict's numbers
are those of the saved per-sample records, and ``src.evaluate`` reproduces the reports of a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from lossdiag.app.evaluate import evaluate_checkpoint
from lossdiag.app.pipeline import train
from lossdiag.diagnosis.samples import load_samples
from lossdiag.errors import UserError
from lossdiag.models.shallownet import ShallowNet
from lossdiag.rundir.checkpoints import load_weights
from lossdiag.rundir.metrics_csv import read_history
from tests.conftest import read_events, read_images, run_module

EPOCHS = 20  # enough for the default data to show the rise (min near epoch 7)
PER_EPOCH = [
    "loss_from_correct",
    "loss_from_wrong",
    "loss_share_wrong",
    "n_wrong",
    "loss_top5pct_share",
    "conf_wrong_mean",
    "p_true_correct_mean",
    "loss_recomputed",
    "loss_recompute_error",
    "ece",
    "temperature",
    "nll_temperature_scaled",
    "ece_temperature_scaled",
]
MODELS = ("initial", "best_val_acc", "min_val_loss", "last")


def _check_verdict_matches_records(run_dir: Path) -> dict:
    """Recompute the verdict's headline numbers from samples.npz with plain numpy; they must be in diagnosis.md."""
    samples = load_samples(run_dir)
    text = (run_dir / "diagnosis.md").read_text()
    loss = samples.history.loss.astype(np.float64)  # (E, N)
    means = loss.mean(1)
    history = read_history(run_dir)
    np.testing.assert_allclose(means, history["val/loss"], rtol=1e-5)
    np.testing.assert_allclose(samples.history.calibration["ece"], history["val/ece"], rtol=1e-5)
    final = np.sort(loss[-1])[::-1]
    n1 = max(1, round(len(final) * 0.01))
    top1 = final[:n1].sum() / final.sum()
    wrong = samples.history.pred[-1] != samples.val.target
    wrong_share = loss[-1][wrong].sum() / loss[-1].sum()
    worst = int(np.argmax(loss[-1]))
    lo = int(np.argmin(means))
    assert f"worst 1% ({n1} samples) carry {100 * top1:.1f}%" in text
    assert f"misclassified samples carry {100 * wrong_share:.1f}%" in text
    assert f"| {samples.val.index[worst]} | - |" in text
    assert f"{float(samples.history.p_true[-1][worst]):.3g}" in text
    assert f"{means[-1]:.4f}" in text and f"{means[lo]:.4f}" in text
    return {"means": means, "acc": (samples.history.pred == samples.val.target).mean(1), "text": text}


@pytest.mark.slow
def test_training_run_writes_every_diagnosis_output(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(
        "data.train_size=150", f"trainer.max_epochs={EPOCHS}", "callbacks.diagnosis.figures_every_n_epochs=10"
    )
    train(cfg)
    run = Path(cfg.paths.output_dir)
    for name in MODELS:
        assert (run / "checkpoints" / f"{name}.ckpt").is_file()
        assert "| accuracy |" in (run / "reports" / f"{name}.md").read_text()
        assert (run / "reports" / f"{name}.csv").read_text().startswith(",precision,recall,f1-score,support")
    for name in ("reliability", "worst_samples", "loss_distribution"):
        assert (run / "figures" / f"{name}.png").stat().st_size > 1000
    worst = (run / "worst.csv").read_text().splitlines()
    assert worst[0].startswith("rank,index,path,given,predicted,p_given,p_predicted,loss,loss_epoch_0,")
    assert len(worst) == 1 + 16 and worst[0].endswith(f"loss_epoch_{EPOCHS - 1}")

    events = read_events(run)
    tags = events.Tags()
    for name in PER_EPOCH:
        assert len(events.Scalars(f"val/{name}")) == EPOCHS, name
    images = read_images(events)
    assert [step for step, _ in images["val/reliability"]] == [step for step, _ in images["val/worst_samples"]]
    assert len(images["val/reliability"]) == 2  # epochs 9 and 19
    for name in ("reliability", "worst_samples", "loss_distribution"):
        assert f"diagnosis/{name}" in images
    for name in [*(f"reports/{m}" for m in MODELS), "diagnosis"]:
        assert f"{name}/text_summary" in tags["tensors"], tags["tensors"]
    recompute_error = [e.value for e in events.Scalars("val/loss_recompute_error")]
    assert max(recompute_error) < 1e-4

    # samples.npz: val per epoch, initial/best/last on val, best_val_acc and last on train too
    samples = load_samples(run)
    assert samples.epochs == list(range(EPOCHS))
    assert list(samples.models) == list(MODELS)
    epoch_of = {
        name: torch.load(run / "checkpoints" / f"{name}.ckpt", map_location="cpu", weights_only=False)["epoch"]
        for name in ("best_val_acc", "min_val_loss")
    }
    assert samples.model_epoch == {"initial": -1, **epoch_of, "last": EPOCHS - 1}
    np.testing.assert_array_equal(samples.models["last"]["val"].pred, samples.history.pred[-1])
    assert len(samples.models["last"]["train"].loss) == len(samples.train.target) == 150
    # the train split only for the models read there: last (n_train_above_cap), best_val_acc (the suspects)
    assert [m for m in MODELS if "train" in samples.models[m]] == ["best_val_acc", "last"]
    first = worst[1].split(",")
    i = int(np.flatnonzero(samples.val.index == int(first[1]))[0])
    assert i == int(np.argmax(samples.history.loss[-1]))
    np.testing.assert_allclose([float(v) for v in first[8:]], samples.history.loss[:, i], rtol=1e-5)
    initial_acc = float((samples.models["initial"]["val"].pred == samples.val.target).mean())
    assert f"| accuracy |  |  | {initial_acc:.2f} |" in (run / "reports" / "initial.md").read_text()

    checked = _check_verdict_matches_records(run)
    lo = int(np.argmin(checked["means"]))
    assert (
        checked["means"][-1] > 1.05 * checked["means"][lo] and checked["acc"][-1] >= checked["acc"][lo] - 0.02
    )
    assert checked["text"].splitlines()[2].startswith("**Verdict: phenomenon")
    # what to do about it, with this run's own best epoch and fitted temperature (src/lossdiag/render/remedies.py)
    numbers = json.loads((run / "diagnosis.json").read_text())
    todo = checked["text"].split("## What you can do", 1)[1]
    # it names the checkpoints that exist, with their epochs
    assert f"`checkpoints/min_val_loss.ckpt` (epoch {numbers['min_epoch']}, lowest val loss)" in todo
    assert epoch_of["min_val_loss"] == numbers["min_epoch"] and "experiment=remedies" in todo
    assert (f"T = {numbers['final']['temperature']:.3f}" in todo) == numbers["final"]["scaling_helps"]

    # the standalone evaluation of best_val_acc.ckpt reproduces the run's report of the best model; the
    # run's data config (data.train_size=150, not debug=fast's 60) is read from <run>/.hydra
    (run / ".hydra").mkdir(exist_ok=True)
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    ecfg = make_cfg(f"ckpt_path={run / 'checkpoints' / 'best_val_acc.ckpt'}", config_name="evaluate")
    with open_dict(ecfg):
        ecfg.paths.output_dir = str(tmp_path / "eval")
    evaluate_checkpoint(ecfg)
    out = tmp_path / "eval"
    assert (out / "reports" / "best_val_acc.md").read_text() == (run / "reports" / "best_val_acc.md").read_text()
    assert len(load_samples(out).train.target) == 150
    assert "**Verdict: single_evaluation.**" in (out / "diagnosis.md").read_text()
    assert (out / "worst.csv").is_file() and (out / "figures" / "reliability.png").is_file()
    assert "diagnosis/text_summary" in read_events(out).Tags()["tensors"]


@pytest.mark.slow
def test_short_run_verdict_says_there_is_no_rise(make_cfg) -> None:
    cfg = make_cfg()  # debug=fast: 2 epochs, val loss still falling
    train(cfg)
    checked = _check_verdict_matches_records(Path(cfg.paths.output_dir))
    assert checked["means"][-1] < checked["means"][0]
    assert checked["text"].splitlines()[2].startswith("**Verdict: no_rise.**")


def test_checkpoint_that_does_not_fit_the_data_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not fit the configured data/model"):
        load_weights(ShallowNet(8, 8, 1, 10), ShallowNet(8, 8, 1, 3).state_dict(), "ckpt_path=x.ckpt")


def test_evaluate_cli_missing_checkpoint_is_one_line_error(tmp_path: Path) -> None:
    proc = run_module("src.evaluate", f"ckpt_path={tmp_path}/nope.ckpt", f"hydra.run.dir={tmp_path}/eval")
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: ckpt_path={tmp_path}/nope.ckpt does not exist")
    )
    assert not (tmp_path / "eval").exists()  # a failed evaluation leaves no folder behind


@pytest.mark.slow
def test_folder_data_run_records_file_paths(make_cfg, tmp_path: Path) -> None:
    from tests.test_data import _write_folder

    root = tmp_path / "animals"
    _write_folder(root, {"cats": 8, "dogs": 8, "pandas": 8})
    cfg = make_cfg("data=folder", f"data.root={root}", "data.image_size=8", "data.train_size=null")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    samples = load_samples(run)
    assert samples.classes == ["cats", "dogs", "pandas"]
    assert all(
        Path(p).is_file() and Path(p).parent.name == samples.classes[t]
        for p, t in zip(samples.val.path, samples.val.target, strict=True)
    )
    worst = (run / "worst.csv").read_text().splitlines()[1].split(",")
    assert Path(worst[2]).is_file() and worst[2] in samples.val.path
    assert f"`{worst[2]}`" in (run / "diagnosis.md").read_text()  # "open the worst images"


def test_evaluate_cli_config_mistake_is_one_line_error(tmp_path: Path) -> None:
    proc = run_module("src.evaluate", "loss=bouned", f"hydra.run.dir={tmp_path}/eval")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: loss=bouned is not an option of 'loss': choose one of bounded, focal, gce, label_smoothing, phuber, "
        "standard (did you mean loss=bounded?)"
    )
