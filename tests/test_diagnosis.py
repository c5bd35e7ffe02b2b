"""Pure diagnosis functions, checked against hand computations and scikit-learn (no Lightning)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import classification_report as sk_report

from lossdiag.diagnosis.judge.suspects import val_label_suspects
from lossdiag.diagnosis.judge.verdict import judge
from lossdiag.diagnosis.samples import Samples, SplitInfo, load_samples
from lossdiag.functional.breakdown import (
    epoch_scalars,
    loss_decomposition,
    recompute_mean_ce,
    top_count,
    top_share,
)
from lossdiag.functional.calibration import calibration_summary
from lossdiag.functional.class_report import classification_report
from lossdiag.functional.ece import expected_calibration_error, reliability_bins
from lossdiag.functional.outputs import evaluate_logits
from lossdiag.functional.temperature import T_MAX, T_MIN, fit_temperature, nll
from lossdiag.render.diagnosis import diagnosis_texts
from lossdiag.render.reasons import advice, reason
from lossdiag.render.tables import report_csv, report_markdown


def diagnose(samples: Samples, model: str | None = None, evaluated_on: str = "val split") -> SimpleNamespace:
    """The judge and the words of the write stage, without files: the verdict, diagnosis.md, the summary."""
    verdict = judge(samples, model, evaluated_on)
    markdown, summary = diagnosis_texts(verdict)
    return SimpleNamespace(numbers=verdict, markdown=markdown, summary=summary)


def test_loss_decomposition_by_hand() -> None:
    loss = np.array([0.1, 0.2, 5.0, 0.3, 9.4])
    correct = np.array([True, True, False, True, False])
    parts = loss_decomposition(loss, correct)
    assert parts["loss_from_correct"] == pytest.approx(0.6 / 5)
    assert parts["loss_from_wrong"] == pytest.approx(14.4 / 5)
    assert parts["loss_from_correct"] + parts["loss_from_wrong"] == pytest.approx(loss.mean())
    assert parts["share_from_wrong"] == pytest.approx(14.4 / 15.0)
    assert parts["n_wrong"] == 2


def test_worst_share_one_and_five_percent() -> None:
    loss = np.concatenate([np.full(190, 0.1), np.arange(1.0, 11.0)])  # 200 samples, 10 outliers 1..10
    values = torch.as_tensor(loss)
    share1, n1 = float(top_share(values, 0.01)), top_count(len(loss), 0.01)
    share5, n5 = float(top_share(values, 0.05)), top_count(len(loss), 0.05)
    total = 19.0 + 55.0
    assert (n1, n5) == (2, 10)
    assert share1 == pytest.approx(19.0 / total)
    assert share5 == pytest.approx(55.0 / total)


def test_recompute_mean_ce_matches_torch_even_for_tiny_probabilities() -> None:
    logits = torch.tensor([[40.0, 0.0, 9.0], [0.0, 2.0, 1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    target = torch.tensor([1, 1, 2])
    probs = logits.softmax(1).numpy()
    assert probs[0, 1] < 1e-17
    assert recompute_mean_ce(probs, target.numpy()) == pytest.approx(F.cross_entropy(logits, target).item())


def _overconfident(n: int = 3000, c: int = 5, t_true: float = 3.0, seed: int = 0):
    """Labels drawn from softmax(z); the model reports z * t_true, so the best temperature is t_true."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=gen, dtype=torch.float64) * 2
    y = torch.multinomial(z.softmax(1), 1, generator=gen)[:, 0]
    return z * t_true, y


def test_fit_temperature_recovers_the_scale_and_minimises_nll() -> None:
    logits, y = _overconfident()
    t = fit_temperature(logits, y)
    assert t == pytest.approx(3.0, rel=0.1)
    best = nll(logits, y, t)
    for other in (t * 0.9, t * 1.1, 1.0):
        assert best <= nll(logits, y, other)
    summary = calibration_summary(logits, y)
    assert summary["temperature"] == pytest.approx(t)
    assert summary["nll_temperature_scaled"] < nll(logits, y)
    assert summary["ece_temperature_scaled"] < summary["ece"]


def test_fit_temperature_is_clipped_for_a_model_worse_than_uniform() -> None:
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0]] * 10)
    target = torch.tensor([1, 0] * 10)  # always confidently wrong: uniform (T -> inf) is best
    assert fit_temperature(logits, target) == T_MAX


def test_ece_matches_a_hand_binned_computation() -> None:
    logits, y = _overconfident(n=500)
    probs = (logits / 2).softmax(1).float()
    conf, pred = probs.max(1)
    assert (conf < 1).all()  # torchmetrics gives conf == 1 a bin of its own
    mean_conf, acc, count = reliability_bins(conf.numpy(), (pred == y).numpy())
    filled = count > 0
    manual = np.sum(count[filled] / count.sum() * np.abs(acc[filled] - mean_conf[filled]))
    assert expected_calibration_error(probs, y) == pytest.approx(manual, abs=1e-5)


def test_classification_report_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, 300)
    pred = np.where(
        (rng.random(300) < 0.6) & (target != 3), target, rng.integers(0, 3, 300)
    )  # 3 never predicted
    names = ["cat", "dog", "panda", "owl"]
    ours = classification_report(pred, target, names)
    ref = sk_report(target, pred, labels=[0, 1, 2, 3], target_names=names, output_dict=True, zero_division=0)
    assert list(ours) == list(ref)
    assert ours["accuracy"] == pytest.approx(ref["accuracy"])
    for key in [*names, "macro avg", "weighted avg"]:
        for col in ("precision", "recall", "f1-score", "support"):
            assert ours[key][col] == pytest.approx(ref[key][col], abs=1e-6), (key, col)
    assert ours["owl"]["precision"] == 0.0 and ours["owl"]["support"] > 0


def test_report_layout_is_the_seeds_table() -> None:
    report = classification_report(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), ["a", "b"])
    md = report_markdown(report, "best model").splitlines()
    assert md[2] == "| | precision | recall | f1-score | support |"
    assert md[4] == "| a | 1.00 | 0.67 | 0.80 | 3 |"
    assert md[6] == "| accuracy |  |  | 0.75 | 4 |"
    assert md[7].startswith("| macro avg | 0.75 | 0.83 |") and md[8].startswith("| weighted avg |")
    rows = report_csv(report).splitlines()
    assert rows[0] == ",precision,recall,f1-score,support"
    assert rows[3] == "accuracy,,,0.75,4"


def _samples(losses_per_epoch: list[float], wrong_loss: float, seed: int = 0) -> Samples:
    """A synthetic run over 200 val samples, 4 classes: 10 wrong samples whose loss follows ``losses_per_epoch``."""
    rng = np.random.default_rng(seed)
    n, c = 200, 4
    target = rng.integers(0, c, n)
    samples = Samples(classes=list("abcd"), loss_cap=2.5, val=SplitInfo.create(range(n), target))
    for epoch, scale in enumerate(losses_per_epoch):
        logits = torch.zeros(n, c, dtype=torch.float64)
        logits[torch.arange(n), torch.as_tensor(target)] = 6.0
        wrong = torch.arange(10)
        other = (torch.as_tensor(target[:10]) + 1) % c
        logits[wrong] = 0.0
        logits[wrong, other] = wrong_loss * scale
        samples.add_epoch(epoch, evaluate_logits(logits.float(), torch.as_tensor(target)))
    return samples


def test_verdict_when_val_loss_rises_with_flat_accuracy(tmp_path: Path) -> None:
    samples = _samples([1.0, 0.5, 1.0, 2.0, 3.0], wrong_loss=4.0)
    samples.save(tmp_path / "samples.npz")
    diag = diagnose(load_samples(tmp_path))
    n = diag.numbers
    hist = samples.history
    means = hist.loss.astype(np.float64).mean(1)
    assert n.stats.min_epoch == int(np.argmin(means)) == 1
    assert n.stats.last_loss == pytest.approx(means[-1])
    assert n.kind == "phenomenon" and n.stats.significant_rise and n.stats.acc_change == 0
    assert diag.markdown.splitlines()[2].startswith("**Verdict: phenomenon, cause: confident_mistakes.** 10 val samples")
    assert "Val loss fell, then rose significantly" in diag.markdown.splitlines()[2]
    assert n.final.wrong_share == pytest.approx(
        hist.loss[-1][:10].astype(np.float64).sum() / hist.loss[-1].astype(np.float64).sum()
    )
    assert n.extreme[0].p_given == pytest.approx(float(hist.p_true[-1][:10].min()))
    # the 10 samples wrong all along carry the rise; the groups add up to it exactly
    groups = n.rise_by_group
    assert sum(g["rise"] for g in groups.values()) == pytest.approx(n.stats.rise, abs=1e-6)
    assert groups["wrong_both"]["n"] == 10 and groups["wrong_both"]["share"] >= 0.5 and n.cause == "confident_mistakes"
    assert sum(g["loss"] for g in n.final_loss_by_group.values()) == pytest.approx(n.stats.last_loss, abs=1e-6)
    assert f"{n.extreme[0].p_given:.3g}" in diag.markdown
    assert "over-confident" in diag.markdown and n.final.scaling_helps


def test_mislabelled_samples_are_the_cause_when_they_carry_the_rise() -> None:
    """10 of 200 val samples the model confidently and consistently puts in another class from the first epoch
    (their labels were moved), growing more confident: they carry the rise, and the text says to check labels."""
    samples = _samples([1.0, 0.5, 1.0, 2.0, 3.0], wrong_loss=14.0)  # p(their class) 0.997 at the minimum
    verdict = judge(samples)
    markdown = diagnosis_texts(verdict)[0]
    assert verdict.cause == "label_errors" and verdict.rise_by_group["suspected_label_error"]["n"] == 10
    assert markdown.splitlines()[2].startswith("**Verdict: phenomenon, cause: label_errors.** 10 val samples that look mislabelled carry")
    assert advice(verdict).startswith("Check the labels")
    # nothing is flagged where the verdict cannot judge: a run that did not learn
    assert not val_label_suspects(samples, "not_learning").any()


def test_verdict_says_no_when_val_loss_does_not_rise() -> None:
    diag = diagnose(_samples([3.0, 2.0, 1.0], wrong_loss=1.0))
    assert not diag.numbers.stats.significant_rise and diag.numbers.kind == "no_rise"
    assert "**Verdict: no_rise.**" in diag.markdown and "it has not risen" in diag.markdown
    assert "phenomenon" not in diag.markdown.split("How the verdict is decided")[0]
    assert "rise is mostly over-confidence" not in diag.markdown


def test_verdict_says_accuracy_fell_when_it_did() -> None:
    samples = _samples([1.0, 1.0], wrong_loss=2.0)
    target = torch.as_tensor(samples.val.target)
    logits = torch.zeros(200, 4)
    logits[torch.arange(200), target] = 6.0
    logits[:80, target[:80]] = 0.0
    logits[torch.arange(80), (target[:80] + 1) % 4] = 3.0  # 80 of 200 wrong now (10 before)
    samples.add_epoch(2, evaluate_logits(logits, target))
    diag = diagnose(samples)
    assert diag.numbers.kind == "overfitting" and diag.numbers.stats.significant_rise
    assert diag.numbers.stats.acc_change_ci[1] < 0
    assert (
        "Val loss rose significantly and accuracy fell significantly" in diag.markdown
        and "**Verdict: overfitting, cause: new_mistakes.**" in diag.markdown
    )


def test_samples_roundtrip_and_epoch_scalars(tmp_path: Path) -> None:
    logits, y = _overconfident(n=50, c=3)
    ev = evaluate_logits(logits.float(), y)
    samples = Samples(
        ["x", "y", "z"], 1.5, SplitInfo.create(range(50), y.numpy(), [f"img{i}.png" for i in range(50)])
    )
    samples.add_epoch(0, ev)
    samples.add_epoch(1, ev)
    samples.train = SplitInfo.create(range(50), y.numpy())
    samples.models = {"initial": {"val": ev, "train": ev}, "last": {"val": ev, "train": ev}}
    samples.model_epoch = {"initial": -1, "last": 1}
    samples.save(tmp_path / "samples.npz")
    back = load_samples(tmp_path)
    assert back.epochs == [0, 1] and back.classes == ["x", "y", "z"] and back.loss_cap == 1.5
    assert back.val.path[3] == "img3.png"
    np.testing.assert_array_equal(back.history.loss[1], ev.loss)
    np.testing.assert_array_equal(back.models["last"]["train"].pred, ev.pred)
    assert back.model_epoch == {"initial": -1, "last": 1}
    assert back.history.calibration["ece"][0] == pytest.approx(float(ev.calibration["ece"]))
    scalars = epoch_scalars(logits, y, ev)
    assert scalars["loss_from_correct"] + scalars["loss_from_wrong"] == pytest.approx(
        float(ev.loss.mean()), rel=1e-5
    )
    assert scalars["loss_recompute_error"] < 1e-5
    with pytest.raises(FileNotFoundError):
        load_samples(tmp_path / "nope")


def test_evaluate_uses_the_run_config_with_command_line_changes(tmp_path) -> None:
    from omegaconf import OmegaConf

    from lossdiag.app.evaluate import with_run_config

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(
        OmegaConf.create({"data": {"root": "/animals", "image_size": 16, "val_fraction": 0.25}, "seed": 4}),
        run / ".hydra" / "config.yaml",
    )
    ckpt = run / "checkpoints" / "best.ckpt"
    here = OmegaConf.create({"data": {"root": "/other", "image_size": 32, "val_fraction": 0.3}, "seed": 0})
    assert OmegaConf.to_container(with_run_config(here, ckpt, [])) == {
        "data": {"root": "/animals", "image_size": 16, "val_fraction": 0.25},
        "seed": 4,
    }
    # one key changed on top of the run's data; a whole group or value given replaces the run's
    tweaked = with_run_config(here, ckpt, ["data.val_fraction=0.3"])
    assert OmegaConf.to_container(tweaked.data) == {"root": "/animals", "image_size": 16, "val_fraction": 0.3}
    replaced = with_run_config(here, ckpt, ["data=folder", "seed=0"])
    assert OmegaConf.to_container(replaced) == OmegaConf.to_container(here)
    assert (
        with_run_config(here, tmp_path / "elsewhere" / "x.ckpt", []) is here
    )  # no run config: as configured


def _one_model(logits: torch.Tensor, target: torch.Tensor, epoch: int = 4) -> Samples:
    samples = Samples(
        classes=list("abc"), loss_cap=2.0, val=SplitInfo.create(range(len(target)), target.numpy())
    )
    ev = evaluate_logits(logits, target)
    samples.add_epoch(epoch, ev)
    samples.models["best"] = {"val": ev}
    samples.model_epoch["best"] = epoch
    return samples


def test_one_model_text_has_no_history_no_nan_and_no_false_under_confidence() -> None:
    target = torch.arange(60) % 3
    logits = torch.nn.functional.one_hot(target, 3).float() * 6  # every prediction right
    diag = diagnose(_one_model(logits, target), model="best", evaluated_on="every image of /new (60 images)")
    n, text = diag.numbers, diag.markdown + diag.summary
    assert n.kind == "single_evaluation" and n.stats.rise_ci is None and n.at_min is None
    assert text.startswith("# One model, evaluated") and "**Verdict: single_evaluation.**" in text
    assert "weights of epoch 4 on every image of /new (60 images)" in text
    assert "nan" not in text and "under-confident" not in text and "not identifiable" in text
    assert "No sample is misclassified" in text and "worst 1% (1 sample) carries" in text
    assert n.final.temperature_status == "not_identifiable" and "final" not in diag.summary
    assert "every image counts and there is no train/val split" in text
    json = n.to_dict(reason(n), advice(n))
    assert json["rise_rel"] is None and json["final"]["conf_wrong_mean"] is None


def test_one_model_at_chance_is_not_learning_with_advice_about_the_folders() -> None:
    target = torch.arange(90) % 3
    diag = diagnose(_one_model(torch.zeros(90, 3), target), model="best")  # uniform: T at its bound
    assert diag.numbers.kind == "not_learning"
    assert "class folders are the run's classes" in diag.markdown and "optimizer.lr" not in diag.markdown
    assert "upper search bound" in diag.markdown and "(at bound)" in diag.markdown
    assert "nan" not in diag.markdown + diag.summary


def test_shares_outside_0_to_100_percent_are_explained() -> None:
    from dataclasses import replace

    n = diagnose(_samples([1.0, 0.5, 1.0, 2.0, 3.0], wrong_loss=4.0)).numbers
    assert n.stats.significant_rise and n.final.temperature_status == "ok"
    more = diagnosis_texts(replace(n, scaling_removes=1.115, scaling_removes_range=(1.05, 1.2)))[0]
    assert "removes 111.5% of the rise (105.0% to 120.0% in 90% of the splits), so the rise is mostly over-confidence" in more
    # a range over the random splits that includes no gain makes no claim
    none = diagnosis_texts(replace(n, scaling_removes=0.2, scaling_removes_range=(-0.3, 0.6)))[0]
    assert "a range that includes no gain, so it does not tell" in none and "is mostly over-confidence" not in none
    offset = diagnosis_texts(replace(n, stats=replace(n.stats, rise=0.13), rise_from_worst5=0.19, rise_from_rest=-0.06))[0]
    assert "more than the whole rise, because the other samples' losses fell by 0.0600" in offset


def test_bounded_runs_say_how_many_training_samples_get_no_gradient() -> None:
    from dataclasses import replace

    n = diagnose(_samples([1.0, 0.5, 1.0, 2.0, 3.0], wrong_loss=4.0)).numbers
    text = diagnosis_texts(replace(n, objective="bounded", n_train=150, n_train_above_cap=34))[0]
    assert "At the end, 34 of 150 training samples (22.7%) have a loss above the cap" in text
    assert "That is a large share" in text
    small = diagnosis_texts(replace(n, objective="bounded", n_train=150, n_train_above_cap=1))[0]
    assert "1 of 150 training samples" in small and "large share" not in small
    assert (
        "zero gradient"
        not in diagnosis_texts(replace(n, objective="standard", n_train=150, n_train_above_cap=34))[0]
    )


def _block(epochs: int = 6, n: int = 150, c: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a block of epochs growing more confident, a few samples confidently wrong."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=gen)
    z = torch.randn(epochs, n, c, generator=gen) * 3
    z[:, torch.arange(n), y] += torch.linspace(2, 14, epochs)[:, None]
    z[:, :10] = torch.randn(epochs, 10, c, generator=gen) * 15
    return z, y


def test_batched_ece_is_torchmetrics_per_row() -> None:
    from torchmetrics.functional.classification import multiclass_calibration_error

    from lossdiag.functional.ece import expected_calibration_errors

    z, y = _block()
    probs = z.softmax(-1)
    probs[0, :5] = F.one_hot(y[:5], 10).float()  # confidence exactly 1: torchmetrics' bin of its own
    batched = expected_calibration_errors(probs, y)
    for e in range(len(z)):
        expected = multiclass_calibration_error(probs[e], y, 10, n_bins=15, norm="l1")
        assert batched[e] == pytest.approx(float(expected), abs=1e-7)


def test_batched_temperature_fits_equal_one_at_a_time_and_converge_fast() -> None:
    from lossdiag.functional.temperature import fit_temperatures

    z, y = _block(epochs=10)
    batched = fit_temperatures(z, y)
    assert batched.tolist() == [fit_temperature(z[e], y) for e in range(len(z))]  # each problem on its own
    # a converged Newton step lands on the bracket's end: accepted, not bisected away from (that took up to
    # 43 steps on epoch 5 of this block; 12 are plenty for Newton from T = 1)
    assert fit_temperatures(z, y, max_iter=12).tolist() == batched.tolist()
    # the float32 steps get near the optimum: two float64 steps settle it (Newton from T = 1 alone takes ~6)
    assert fit_temperatures(z, y, max_iter=2).tolist() == batched.tolist()
    # optima beyond the bounds, next to an interior one: worse than uniform -> T_MAX, all right -> T_MIN
    interior, labels = _overconfident(n=30, c=3)
    wrong = F.one_hot((labels + 1) % 3, 3).double()[None] * 5
    right = F.one_hot(labels, 3).double()[None] * 5
    fitted = fit_temperatures(torch.cat([wrong, right, interior[None]]), labels)
    assert fitted[0] == T_MAX and fitted[1] == T_MIN and T_MIN < fitted[2] < T_MAX


def test_evaluate_epochs_is_evaluate_logits_per_epoch() -> None:
    from lossdiag.functional.breakdown import epoch_scalar_block
    from lossdiag.functional.outputs import evaluate_epochs

    z, y = _block()
    block = evaluate_epochs(z, y)
    scalars = epoch_scalar_block(z, y, block)
    for e in range(len(z)):
        one = evaluate_logits(z[e], y)
        for name in ("loss", "p_true", "pred", "conf"):
            np.testing.assert_array_equal(getattr(block[e], name), getattr(one, name), err_msg=name)
        assert {k: np.asarray(v).tolist() for k, v in block[e].calibration.items()} == {
            k: np.asarray(v).tolist() for k, v in one.calibration.items()
        }
        assert {k: float(v[e]) for k, v in scalars.items()} == epoch_scalars(z[e], y, one)


def test_batched_calibration_without_usable_samples_is_nan() -> None:
    from lossdiag.functional.breakdown import loss_distributions
    from lossdiag.functional.ece import expected_calibration_errors
    from lossdiag.functional.temperature import fit_temperatures

    z, y = _block(epochs=2)
    broken = z.clone()
    broken[0, 0, 0] = float("nan")  # NaN logits have no temperature (not a clipped one)
    fitted = fit_temperatures(broken, y)
    assert torch.isnan(fitted[0]) and fitted[1] == fit_temperature(z[1], y)
    none = torch.zeros(0, dtype=torch.long)
    assert torch.isnan(fit_temperatures(torch.zeros(2, 0, 3), none)).all()
    assert torch.isnan(expected_calibration_errors(torch.zeros(2, 0, 3), none)).all()
    assert torch.isnan(loss_distributions(torch.zeros(2, 0), 1.0)["loss_median"]).all()


def test_the_history_stays_on_disk_and_the_statistics_stream_over_it(tmp_path: Path, monkeypatch) -> None:
    """samples.npz holds no per-epoch array: the history is the journal under records/, memory-mapped by
    load_samples, and the statistics read it in blocks of epochs with the numbers of an in-memory history."""
    from lossdiag.diagnosis.judge import stats

    samples = _samples([1.0, 0.5, 1.0, 2.0, 3.0, 2.5, 2.0, 3.5], wrong_loss=4.0)
    samples.save(tmp_path / "samples.npz")
    with np.load(tmp_path / "samples.npz") as data:
        assert not [k for k in data.files if k.startswith("val_") and k not in ("val_index", "val_target", "val_path")]
    back = load_samples(tmp_path)
    assert isinstance(back.history.loss, np.memmap) and (tmp_path / "records" / "val_epochs.bin").is_file()
    assert back.epochs == samples.epochs and back.val_journal.records().nbytes == (tmp_path / "records" / "val_epochs.bin").stat().st_size
    whole = judge(samples)
    monkeypatch.setattr(stats, "CHUNK_ELEMENTS", 450)  # blocks of 2 epochs of 200 samples
    streamed = judge(back)
    assert streamed.stats == whole.stats and streamed.cause == whole.cause
    # a recorded epoch is overwritten in place (the cross-fit given at the end), not appended
    back.replace_epoch(back.epochs[0], samples.val_epochs[-1])
    assert len(load_samples(tmp_path).epochs) == len(samples.epochs)
    np.testing.assert_array_equal(load_samples(tmp_path).val_epochs[0].loss, samples.val_epochs[-1].loss)
