"""Run kinds (the judge stage: lossdiag/diagnosis/judge/stats.py and rules.py, words in render/reasons.py) on
synthetic per-sample val records: each rule, the edge cases, the bootstrap against a slow loop, and cross-fitted
temperature scaling."""

from __future__ import annotations

import json
from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lossdiag.diagnosis.judge import stats as rk
from lossdiag.diagnosis.judge.causes import Cause
from lossdiag.diagnosis.judge.rules import KIND_ORDER, RULES, Case, Kind, decide
from lossdiag.diagnosis.judge.stats import RISE_THRESHOLD, run_stats
from lossdiag.functional import bootstrap
from lossdiag.functional.bootstrap import (
    bootstrap_means,
    paired_bootstrap,
    percentile_interval,
    relative_rise,
)
from lossdiag.functional.crossfit import CROSSFIT_SPLITS, crossfit_temperature
from lossdiag.functional.jsonable import json_ready
from lossdiag.functional.temperature import T_MAX
from lossdiag.render.reasons import advice, reason
from lossdiag.render.text import accuracy_move

torch.set_num_threads(1)

NAMES = ("cat", "dog", "bird", "fish")


def balanced_target(n: int, n_classes: int = 4) -> np.ndarray:
    return np.arange(n) % n_classes


def run(loss, pred, target, n_classes=4, epochs=None, ctx=None, **kw) -> SimpleNamespace:
    """The judge stage on per-sample records: the statistics, the rule that decides, and its words (``ctx``: what
    the advice may point to)."""
    loss = np.asarray(loss, dtype=float)
    epochs = list(range(len(loss))) if epochs is None else epochs
    stats, facts = run_stats(loss, pred, target, list(NAMES[:n_classes]), epochs, **kw)
    row = decide(Case(stats, facts))
    # the words read the kind, the rule and the statistics; the cause (which needs whole models) is left out here
    judged = SimpleNamespace(
        stats=stats, facts=facts, kind=row.kind, rule=row.rule, cause=Cause.NONE, history=stats.history,
        scaling_removes=None, objective=None, n_train_above_cap=None, final_loss_by_group=None,
    )  # fmt: skip
    return SimpleNamespace(
        **asdict(stats),
        kind=row.kind,
        reason=reason(judged),
        advice=advice(judged, ctx),
        to_dict=lambda: json_ready({"kind": row.kind, **asdict(stats)}),
    )


def confident_run(n: int = 400, n_epochs: int = 10, wrong_share: float = 0.1, seed: int = 0):
    """Loss falls to a minimum at epoch 3, then the wrong samples' losses grow; predictions fixed."""
    rng = np.random.default_rng(seed)
    target = balanced_target(n)
    wrong = rng.random(n) < wrong_share
    pred = np.tile(np.where(wrong, (target + 1) % 4, target), (n_epochs, 1))
    base = rng.uniform(0.05, 0.2, n)
    scale = np.array([3.0, 2.0, 1.5, 1.0, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5])[:n_epochs]
    loss = np.outer(scale, np.where(wrong, 1.0 + base, base))
    loss[4:, wrong] *= np.linspace(1.5, 5.0, n_epochs - 4)[:, None]
    return loss, pred, target, wrong


def test_kinds_and_order_are_the_same_set():
    assert set(Kind) == set(KIND_ORDER) == {row.kind for row in RULES} and len(Kind) == 7
    assert RULES[-1].holds(None)  # the last rule always holds: every run gets a kind


def test_clear_phenomenon():
    loss, pred, target, _ = confident_run()
    r = run(loss, pred, target)
    assert r.kind == "phenomenon", r.reason
    assert r.min_epoch == 3 and r.last_epoch == 9
    assert r.rise_ci[0] > 0 and r.acc_change == 0 and r.acc_change_ci == (0.0, 0.0)
    assert r.rise_ci[0] <= r.rise_rel <= r.rise_ci[1]
    assert "val loss rose" in r.reason and "val accuracy was net unchanged at 0.895 (0 samples became wrong, 0 became right; change +0.000" in r.reason
    assert r.unlearned_classes == () and r.samples_to_settle is None


def test_lost_at_end_needs_a_drop_beyond_chance():
    """30 val samples of 3 classes, 16 right at best and 14 at the end: the last accuracy's lower bound is at chance,
    but the drop is noise, so the run is not called lost; all of them wrong at the end is."""
    n, epochs = 30, 6
    target = np.arange(n) % 3
    pred = np.tile((target + 1) % 3, (epochs, 1))
    pred[2, :16] = target[:16]  # the best epoch: 16 right
    for e in (3, 4, 5):
        pred[e, :14] = target[:14]  # then 14 right
    loss = np.tile(np.linspace(1.1, 0.9, epochs)[:, None], (1, n))
    noisy = run(loss, pred, target, n_classes=3)
    assert noisy.kind != "not_learning" or "lost" not in noisy.reason, noisy.reason
    pred[3:] = (target + 1) % 3  # none right at the end
    lost = run(loss, pred, target, n_classes=3)
    assert lost.kind == "not_learning" and "what it learned is lost" in lost.reason, lost.reason


def test_a_diverged_training_is_not_the_phenomenon():
    """Momentum 2: the loss explodes while some predictions stay right; the rise is the optimiser blowing up, so
    the verdict is not_learning (rule diverged) and the advice lowers the learning rate, not checks labels."""
    loss, pred, target, _ = confident_run()
    loss[5:] *= np.geomspace(10, 1000, 5)[:, None]  # the mean ends at ~1000x its minimum, far above the start
    r = run(loss, pred, target)
    assert r.kind == "not_learning" and "the training diverged" in r.reason, r.reason
    assert r.advice.startswith("Lower `optimizer.lr`"), r.advice
    mild = run(*confident_run()[:3])  # the same run without the explosion stays the phenomenon
    assert mild.kind == "phenomenon"


def test_clear_overfitting():
    loss, pred, target, wrong = confident_run()
    flip = np.flatnonzero(~wrong)[:60]  # 15% of the samples become wrong at the end
    pred[6:, flip] = (target[flip] + 1) % 4
    loss[6:, flip] += 2.0
    r = run(loss, pred, target)
    assert r.kind == "overfitting", r.reason
    assert r.acc_change_ci[1] < 0 and r.acc_change == pytest.approx(-0.15)
    assert "from the single lowest epoch (0.2306 at epoch 3)" in r.reason


def test_small_noisy_rise_is_inconclusive():
    rng = np.random.default_rng(3)
    n = 30
    target = balanced_target(n, 2)
    first = rng.uniform(0.2, 1.0, n)
    loss = np.stack([first * 2, first, first * np.exp(rng.normal(0.1, 0.6, n))])
    pred = np.tile(target, (3, 1))
    r = run(loss, pred, target, n_classes=2)
    assert r.rise_rel > RISE_THRESHOLD and r.rise_ci[0] <= 0 < r.rise_ci[1]
    assert r.kind == "inconclusive", r.reason
    assert r.samples_to_settle is not None and r.samples_to_settle > n
    assert str(r.samples_to_settle) in r.advice


def test_partial_collapse_lists_the_unlearned_classes():
    n = 200
    target = balanced_target(n, 3)
    pred = np.tile(target, (3, 1))
    pred[-1, target == 2] = 0  # "bird" never predicted at the last epoch
    loss = np.tile(np.linspace(1.0, 0.5, 3)[:, None], (1, n))
    r = run(loss, pred, target, n_classes=4)  # "fish" (class 3) is not in the val set: does not count
    assert r.kind == "partial_collapse", r.reason
    assert r.unlearned_classes == ("bird",)
    assert "bird" in r.reason and "2 of 3" not in r.reason and "1 of 3" in r.reason


def test_flat_at_chance_is_not_learning():
    rng = np.random.default_rng(0)
    n, e = 400, 5
    target = balanced_target(n)
    pred = rng.integers(0, 4, (e, n))
    loss = np.log(4) + rng.normal(0, 0.01, (e, n))
    r = run(loss, pred, target)
    assert r.kind == "not_learning", r.reason
    assert r.majority_rate == 0.25 and r.acc_best_lower <= 0.27
    # flat at chance with a loss that barely moved: the learning rate is too low, not too high
    assert r.advice.startswith("Raise `optimizer.lr`") and "barely moved" in r.advice
    assert r.advice.endswith("With 5 epochs only, training longer (`trainer.max_epochs`) may be all it needs.")


def test_loss_never_below_untrained_is_not_learning():
    loss, pred, target, _ = confident_run()
    r = run(loss, pred, target, initial_loss=float(loss.mean(1).min()))  # min >= initial: never fell
    assert r.kind == "not_learning" and "untrained" in r.reason


def test_min_at_first_epoch_needs_the_untrained_loss():
    loss, pred, target, _ = confident_run()
    loss, pred = loss[3:], pred[3:]  # the minimum is now the first recorded epoch
    r = run(loss, pred, target)
    assert r.kind == "not_learning" and "first recorded epoch" in r.reason, r.reason
    r = run(loss, pred, target, initial_loss=np.log(4))  # it did fall from the untrained loss
    assert r.kind == "phenomenon", r.reason


def test_single_epoch():
    n = 100
    target = balanced_target(n)
    r = run(np.full((1, n), 0.3), target[None, :], target)
    assert r.kind == "single_evaluation" and "no history" in r.reason
    assert r.min_epoch == r.last_epoch == 0 and r.rise_ci is None
    collapsed = np.where(target == 1, 0, target)[None, :]
    assert run(np.full((1, n), 0.3), collapsed, target).kind == "partial_collapse"
    assert run(np.full((1, n), 0.3), (target[None, :] + 1) % 4, target).kind == "not_learning"


def test_all_correct_and_all_wrong():
    n = 100
    target = balanced_target(n)
    loss = np.tile(np.array([0.5, 0.2, 0.1, 0.1])[:, None], (1, n))
    r = run(loss, np.tile(target, (4, 1)), target)
    assert r.kind == "no_rise" and r.acc_best == 1.0 and r.unlearned_classes == ()
    r = run(loss * 0, np.tile(target, (4, 1)), target)  # zero loss everywhere: 0/0 is no rise
    assert r.kind == "no_rise" and r.rise_rel == 0.0
    r = run(loss + 2, np.tile((target + 1) % 4, (4, 1)), target)
    assert r.kind == "not_learning" and r.acc_best == 0.0
    assert r.unlearned_classes == NAMES


def test_one_class_in_target():
    n = 50
    target = np.zeros(n, dtype=int)
    r = run(np.tile([[0.5], [0.4]], (1, n)), np.zeros((2, n), dtype=int), target, n_classes=3)
    assert r.kind == "not_learning" and r.majority_rate == 1.0
    assert "single class" in r.reason


def test_ties_in_mean_loss_pick_the_first_epoch():
    n = 40
    target = balanced_target(n)
    loss = np.tile(np.array([1.0, 0.8, 0.5, 0.7, 0.5, 0.9])[:, None], (1, n))
    r = run(loss, np.tile(target, (6, 1)), target, epochs=[0, 2, 4, 6, 8, 10])
    assert r.min_epoch == 4 and r.last_epoch == 10 and r.min_loss == 0.5
    assert r.rise_rel == pytest.approx(0.8)


def test_bootstrap_is_deterministic_and_contains_the_estimate():
    loss, pred, target, _ = confident_run(n=120)
    a, b = run(loss, pred, target, seed=5), run(loss, pred, target, seed=5)
    assert a.to_dict() == b.to_dict() and a.reason == b.reason
    c = run(loss, pred, target, seed=6)
    assert c.rise_ci != a.rise_ci and c.kind == a.kind
    assert a.rise_ci[0] <= a.rise_rel <= a.rise_ci[1]
    assert a.acc_change_ci[0] <= a.acc_change <= a.acc_change_ci[1]


def test_bootstrap_matches_a_slow_loop():
    rng = np.random.default_rng(7)
    n, b, e = 37, 50, 4
    target = balanced_target(n)
    loss = rng.exponential(1.0, (e, n)) + np.array([0.5, 0.0, 0.3, 0.4])[:, None]
    pred = np.where(rng.random((e, n)) < 0.7, target, (target + 1) % 4)
    r = run(loss, pred, target, n_resamples=b, seed=11)

    correct = (pred == target).astype(float)
    i_min, i_last = int(np.argmin(loss.mean(1))), e - 1
    idx = np.random.default_rng(11).integers(0, n, size=(b, n))
    rises, changes = [], []
    for row in idx:
        lo, hi = loss[i_min, row].mean(), loss[i_last, row].mean()
        rises.append((hi - lo) / lo)
        changes.append(correct[i_last, row].mean() - correct[i_min, row].mean())
    np.testing.assert_allclose(r.rise_ci, np.quantile(rises, [0.025, 0.975]), rtol=1e-12)
    np.testing.assert_allclose(r.acc_change_ci, np.quantile(changes, [0.025, 0.975]), atol=1e-12)

    ci = paired_bootstrap(loss[i_min], loss[i_last], relative_rise, n_resamples=b, seed=11)
    assert (ci.low, ci.high) == pytest.approx(r.rise_ci, rel=1e-12)
    assert ci.estimate == pytest.approx(r.rise_rel)


def test_bootstrap_chunks_keep_the_shape_and_the_answer(monkeypatch):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(100, 2))
    whole = bootstrap_means(values, 300, seed=1)
    monkeypatch.setattr(bootstrap, "MAX_CHUNK_ELEMENTS", 1000)  # 10 resamples per chunk
    chunked = bootstrap_means(values, 300, seed=1)
    assert chunked.shape == whole.shape == (300, 2)
    np.testing.assert_array_equal(chunked[:10], whole[:10])  # the first chunk draws the same indices
    np.testing.assert_allclose(chunked.std(0), whole.std(0), rtol=0.2)


def test_percentile_interval_handles_infinities():
    assert percentile_interval(np.full(10, np.inf)) == (np.inf, np.inf)
    assert percentile_interval(np.arange(101.0)) == pytest.approx((2.5, 97.5))


def test_to_dict_is_json():
    loss, pred, target, _ = confident_run(n=80)
    r = run(loss, pred, target, initial_loss=2.0)
    d = r.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["rise_ci"] == list(r.rise_ci) and d["kind"] == r.kind and d["initial_loss"] == 2.0


def test_bad_inputs_are_refused():
    target = balanced_target(8)
    good = np.ones((2, 8)), np.tile(target, (2, 1))
    with pytest.raises(ValueError, match="pred shape"):
        run(good[0], good[1][:1], target)
    with pytest.raises(ValueError, match="epoch numbers"):
        run(*good, target, epochs=[0])
    with pytest.raises(ValueError, match="non-finite"):
        run(np.full((2, 8), np.nan), good[1], target)
    with pytest.raises(ValueError, match="labels outside"):
        run(*good, target + 4)


# ---------------------------------------------------------------------------------------------- crossfit


def calibrated_logits(n: int = 2000, n_classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets drawn from softmax(logits): calibrated by construction."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, n_classes, generator=g, dtype=torch.float64) * 2
    target = torch.multinomial(logits.softmax(1), 1, generator=g)[:, 0]
    return logits, target


def test_crossfit_finds_over_confidence():
    logits, target = calibrated_logits()
    cf = crossfit_temperature(logits * 5, target)
    assert cf.status == "ok" and cf.n_samples == 2000
    assert 4 < cf.temperature < 6 and all(4 < t < 6 for t in cf.temperature_halves)
    assert cf.nll_scaled < cf.nll_raw and cf.ece_scaled < cf.ece_raw
    assert crossfit_temperature(logits * 5, target) == cf  # seeded split
    json.dumps(cf.to_dict(), allow_nan=False)


def test_crossfit_degenerate_cases():
    logits, _ = calibrated_logits(n=200)
    all_correct = crossfit_temperature(logits, logits.argmax(1))
    assert all_correct.status == "not_identifiable"
    all_wrong = crossfit_temperature(logits, (logits.argmax(1) + 1) % 5)
    assert all_wrong.status == "not_identifiable"
    flat = crossfit_temperature(torch.zeros(50, 3), torch.arange(50) % 3)  # uniform: T -> T_MAX
    assert flat.status == "at_bound" and flat.temperature == T_MAX


def test_a_small_class_with_recall_0_is_listed_but_does_not_decide():
    """One val sample of class "fish", misclassified, next to 300 well-learned samples: chance, not collapse."""
    n = 301
    target = np.concatenate([balanced_target(300, 3), [3]])
    pred = np.tile(target, (3, 1))
    pred[:, -1] = 0
    pred[:, :20] = (target[:20] + 1) % 3  # the learned classes are not perfect either
    loss = np.tile(np.array([1.0, 0.6, 0.5])[:, None], (1, n))
    r = run(loss, pred, target)
    assert r.unlearned_classes == ("fish",) and r.collapsed_classes == ()
    assert r.kind == "no_rise", r.reason
    # six val samples of it, all wrong: that is no longer chance
    target6 = np.concatenate([balanced_target(300, 3), [3] * 6])
    pred6 = np.tile(np.where(target6 == 3, 0, target6), (3, 1))
    pred6[:, :20] = (target6[:20] + 1) % 3
    r6 = run(np.tile(np.array([1.0, 0.6, 0.5])[:, None], (1, 306)), pred6, target6)
    assert r6.kind == "partial_collapse" and r6.collapsed_classes == ("fish",)
    assert "1 of 4 classes in the val set is never predicted correctly (recall 0: fish)" in r6.reason


def test_lowest_at_the_last_epoch_has_not_risen():
    n = 80
    target = balanced_target(n)
    loss = np.tile(np.array([1.0, 0.7, 0.4])[:, None], (1, n))
    r = run(loss, np.tile(target, (3, 1)), target, initial_loss=1.5)
    assert r.kind == "no_rise" and r.min_epoch == r.last_epoch == 2
    assert "lowest at the end" in r.reason and "it has not risen" in r.reason


def test_accuracy_that_did_not_move_reads_unchanged():
    assert accuracy_move(0.9221, 0.9219) == "was unchanged at 0.922"
    assert accuracy_move(0.595, 0.719) == "went 0.595 -> 0.719"


def test_calibration_summary_records_the_cross_fitted_numbers_but_logs_only_the_in_sample_ones():
    from lossdiag.functional.breakdown import epoch_scalars
    from lossdiag.functional.calibration import LOGGED_CALIBRATION_KEYS, calibration_summary
    from lossdiag.functional.outputs import evaluate_logits

    logits, target = calibrated_logits(n=400)
    summary = calibration_summary(logits * 4, target)
    cf = crossfit_temperature(logits * 4, target)
    # split 0 of the repeated cross-fit is the single seeded split; the recorded number is the median over splits
    splits = summary["nll_crossfit_splits"]
    assert splits.shape == (CROSSFIT_SPLITS,) and len(set(splits.tolist())) > CROSSFIT_SPLITS // 2
    assert splits[0] == pytest.approx(cf.nll_scaled) and summary["ece_crossfit_splits"][0] == pytest.approx(cf.ece_scaled)
    assert summary["nll_crossfit"] == pytest.approx(float(np.median(splits)))
    # scored out of sample, the scaled NLL cannot beat the in-sample optimum, in any split
    assert splits.min() >= summary["nll_temperature_scaled"]
    ev = evaluate_logits(logits.float(), target)
    scalars = epoch_scalars(logits, target, ev)
    assert set(LOGGED_CALIBRATION_KEYS) <= set(scalars) and "nll_crossfit" not in scalars


def test_learned_then_lost_is_not_learning_not_a_partial_collapse():
    """Perfect at epoch 1, then diverged to predicting one class: the final model is at chance."""
    n = 120
    target = balanced_target(n, 3)
    pred = np.stack([target, target, np.zeros(n, dtype=int), np.zeros(n, dtype=int)])
    loss = np.tile(np.array([0.5, 0.0, 1.2, 1.1])[:, None], (1, n))  # a minimum of exactly 0
    r = run(loss, pred, target, n_classes=3, initial_loss=1.1)
    assert r.kind == "not_learning", r.reason
    assert r.acc_best == 1.0 and r.acc_last_lower <= r.majority_rate + rk.MAJORITY_MARGIN
    assert "although it reached 1.000 at epoch 0" in r.reason and "predicts only cat" in r.reason
    assert r.unlearned_classes == ("dog", "bird") and r.rise_rel == np.inf
    json.dumps(r.to_dict(), allow_nan=False)  # the unbounded rise is null, not Infinity
    # the same run without the collapse at the end: a rise from a minimum of 0 is said in words
    r = run(loss, np.tile(target, (4, 1)), target, n_classes=3, initial_loss=1.1)
    assert (
        r.kind == "phenomenon" and "unbounded share (its minimum is 0" in r.reason and "inf" not in r.reason
    )


def test_calibration_summaries_cross_fit_only_the_rows_asked_for():
    from lossdiag.functional.calibration import calibration_summaries

    logits, target = calibrated_logits(n=300)
    block = torch.stack([logits * s for s in (1.0, 2.0, 4.0)])
    every = calibration_summaries(block, target)
    some = calibration_summaries(block, target, crossfit=torch.tensor([False, True, False]))
    for key, values in every.items():
        if "_crossfit" in key:  # the medians and the per-split values
            assert torch.isnan(some[key][[0, 2]]).all() and torch.equal(some[key][1], values[1]), key
        else:
            assert torch.equal(some[key], values), key


def test_an_interval_bound_never_reads_minus_zero():
    from lossdiag.render.text import interval_pct

    assert interval_pct(0.17, (-0.0016, 0.34)) == "17% (95% CI -0.2% to 34%)"  # was "-0%"
    assert interval_pct(0.27, (0.06, 0.43)) == "27% (95% CI 6% to 43%)"
    assert interval_pct(0.1, (0.0, 0.2)) == "10% (95% CI 0% to 20%)"
