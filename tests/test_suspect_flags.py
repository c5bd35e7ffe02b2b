"""The rules behind the flags of likely label errors, on hand-made records whose outcome is worked out by hand:
per-class thresholds (not "the model says another class"), no flags when the model did not learn or inside a
collapsed class, training images scored before memorisation, out-of-fold probabilities combined with the dynamics."""

from __future__ import annotations

import numpy as np
import pytest

from lossdiag.diagnosis.judge.suspects import (
    NO_THRESHOLDS,
    NOT_LEARNING,
    rank_run,
    suspect_rows,
    val_label_suspects,
)
from lossdiag.diagnosis.judge.verdict import judge
from lossdiag.diagnosis.samples import Samples, SplitInfo
from lossdiag.functional.outputs import Evaluation
from lossdiag.functional.suspects import CLEANLAB, CONFIDENT_OTHER, EARLY_DYNAMICS

CLASSES = ["cat", "dog", "fox"]
# 12 val images, 4 per class; per-class thresholds (mean p_given): cat 0.7375, dog 0.6, fox 0.6875
VAL_TARGET = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
VAL_P = np.array([0.95, 0.95, 0.95, 0.10, 0.7, 0.7, 0.7, 0.3, 0.9, 0.9, 0.9, 0.05])
VAL_PRED = np.array([0, 0, 0, 1, 1, 1, 1, 0, 2, 2, 2, 1])
VAL_CONF = np.array([0.95, 0.95, 0.95, 0.85, 0.7, 0.7, 0.7, 0.6, 0.9, 0.9, 0.9, 0.9])
# 3: cat, the model says dog with 0.85 >= dog's 0.6; 7: dog, says cat with 0.6 < cat's 0.7375 (not confident
# for cat); 11: fox, says dog with 0.9 >= 0.6
CONFIDENT = [3, 11]


def evaluation(p: np.ndarray, pred: np.ndarray, conf: np.ndarray, loss: float | None = None) -> Evaluation:
    losses = -np.log(p) if loss is None else np.full(len(p), loss)
    return Evaluation(
        losses.astype(np.float32), p.astype(np.float32), pred.astype(np.int16), conf.astype(np.float32)
    )


def val_samples(epochs: int = 1) -> Samples:
    """The 12 val images, ``epochs`` recorded epochs (mean val loss lowest at epoch 3), a ``best_val_acc`` model."""
    samples = Samples(classes=CLASSES, loss_cap=float("nan"), val=SplitInfo.create(range(12), VAL_TARGET))
    best = evaluation(VAL_P, VAL_PRED, VAL_CONF)
    for epoch in range(epochs):
        samples.add_epoch(epoch, evaluation(VAL_P, VAL_PRED, VAL_CONF, loss=abs(epoch - 3) + 1.0))
    samples.add_models({"best_val_acc": (3, {"val": best})})
    return samples


def test_val_flags_use_per_class_thresholds_not_any_disagreement() -> None:
    samples = val_samples()
    flagged = val_label_suspects(samples, "phenomenon", ())
    assert np.flatnonzero(flagged).tolist() == CONFIDENT
    disagree = np.flatnonzero(VAL_PRED != VAL_TARGET).tolist()
    assert disagree == [3, 7, 11]  # what a fixed "the model says another class" rule would flag
    # thresholds from elsewhere (src.evaluate: the training run's) replace the calibration on these images
    assert not val_label_suspects(samples, None, (), thresholds=np.array([0.99, 0.99, 0.99])).any()
    assert np.flatnonzero(
        val_label_suspects(samples, None, (), thresholds=np.array([0.5, 0.5, 0.5]))
    ).tolist() == [
        3,
        7,
        11,
    ]


def test_no_flags_when_not_learning_and_none_inside_collapsed_classes() -> None:
    samples = val_samples()
    assert not val_label_suspects(samples, NOT_LEARNING, ()).any()
    # fox collapsed (never predicted right): image 11, labelled fox, cannot be judged
    assert np.flatnonzero(val_label_suspects(samples, "partial_collapse", ("fox",))).tolist() == [3]
    ranked = rank_run(samples, None, NOT_LEARNING, ())
    assert ranked is not None and not ranked.suspects.flagged.any() and ranked.gate.off == NOT_LEARNING
    # the images the model cannot judge come after every other one, whatever their p(given)
    fox = samples.classes.index("fox")
    for collapsed in (("fox",), ("fox", "cat")):
        rows = rank_run(samples, None, "partial_collapse", collapsed).suspects
        given = np.asarray(samples.val.target)[rows.where]
        out = np.isin(given, [samples.classes.index(c) for c in collapsed])
        assert out.any() and not out[: int((~out).sum())].any(), given.tolist()
    plain = rank_run(samples, None, "phenomenon", ()).suspects
    assert (np.asarray(samples.val.target)[plain.where[:3]] == fox).any()  # a fox image leads without the gate


def test_the_verdicts_label_error_group_is_the_flagged_val_rows() -> None:
    """One idea in one place: the verdict's ``suspected_label_error`` group is what ``suspects.csv`` flags."""
    samples = val_samples(epochs=6)
    verdict = judge(samples)
    ranked = rank_run(samples, None, verdict.kind, verdict.stats.collapsed_classes)
    assert ranked is not None and verdict.kind != NOT_LEARNING
    rows = ranked.suspects
    flagged = sorted(
        int(w) for s, w, f in zip(rows.split, rows.where, rows.flagged, strict=True) if s == "val" and f
    )
    assert flagged == CONFIDENT
    assert verdict.final_loss_by_group["suspected_label_error"]["n"] == len(CONFIDENT)
    # src.evaluate on another folder without the training run's thresholds: nothing flagged, nothing in the group
    off = judge(samples, "best_val_acc", flags_off=NO_THRESHOLDS)
    assert off.final_loss_by_group["suspected_label_error"]["n"] == 0
    stored = judge(samples, "best_val_acc", flag_thresholds=np.array([0.5, 0.5, 0.5]))
    assert stored.final_loss_by_group["suspected_label_error"]["n"] == 3


# 30 training images, 10 per class, 10 epochs; the val loss is lowest at epoch 3, so the early window is epochs
# 0-4 (at least MIN_WINDOW = 5 epochs)
N_TRAIN, EPOCHS = 30, 10
MEMORISED = (
    0  # a moved cat: out-scored by another class (margin -3, p_given 0.04) until epoch 4, then learned
)
HARD = (
    12  # a hard but correct dog: slightly out-scored early (-0.2), by a class that is not confident (p 0.37)
)
OOF_ONLY = 7  # a cat whose dynamics look clean but whose out-of-fold prediction is confidently dog


def train_samples() -> Samples:
    samples = val_samples(epochs=EPOCHS)
    target = np.repeat([0, 1, 2], 10)
    samples.train = SplitInfo.create(range(N_TRAIN), target)
    for epoch in range(EPOCHS):
        margin = np.full(N_TRAIN, 1.0 + 0.1 * epoch)
        margin[10:20] = np.linspace(-0.6, 2.0, 10) + (0.0 if epoch <= 7 else 1.0)
        p = np.full(N_TRAIN, 0.6)
        margin[MEMORISED], p[MEMORISED] = (-3.0, 0.04) if epoch <= 7 else (6.0, 0.99)
        margin[HARD], p[HARD] = (-0.2, 0.3) if epoch <= 7 else (1.0, 0.6)
        samples.add_dynamics(epoch, p, margin)
    return samples


def test_training_images_are_scored_and_flagged_before_memorisation() -> None:
    samples = train_samples()
    ranked = rank_run(samples, None, "phenomenon", ())
    assert ranked is not None and (ranked.min_epoch, ranked.window_end) == (3, 7)
    rows = [r for r in suspect_rows(samples, ranked.suspects) if r.split == "train"]
    # over every epoch the memorised image's margin averages +2.4, above most images': the early window puts it first
    assert rows[0].index == MEMORISED and HARD in [r.index for r in rows[1:4]]
    assert rows[0].flag_rule == EARLY_DYNAMICS
    assert rows[0].early_p_given == pytest.approx(0.04, abs=1e-3)
    # the hard dog trails by less than dogs usually do (its class's robust lower bound, about -1.2): not flagged
    assert [r.index for r in rows if r.flagged] == [MEMORISED]
    val_rows = [r for r in suspect_rows(samples, ranked.suspects) if r.split == "val" and r.flagged]
    assert sorted(r.index for r in val_rows) == CONFIDENT and {r.flag_rule for r in val_rows} == {
        CONFIDENT_OTHER
    }
    # none inside a collapsed class: the memorised image is a cat
    collapsed = rank_run(samples, None, "partial_collapse", ("cat",))
    assert collapsed is not None
    assert not collapsed.suspects.flagged[
        (collapsed.suspects.split == "train") & (collapsed.suspects.where == MEMORISED)
    ].any()


def test_out_of_fold_probabilities_join_the_dynamics() -> None:
    samples = train_samples()
    target = np.asarray(samples.train.target)
    oof = np.full((N_TRAIN, 3), 0.05)
    oof[np.arange(N_TRAIN), target] = 0.9
    for moved in (MEMORISED, OOF_ONLY):  # both confidently dog out of fold
        oof[moved] = [0.03, 0.95, 0.02]
    oof[HARD] = [0.95, 0.03, 0.02]  # the hard dog: confidently cat out of fold
    before = rank_run(samples, None, "phenomenon", ())
    samples.train_oof, samples.oof_folds = oof.astype(np.float32), 4
    after = rank_run(samples, None, "phenomenon", ())
    assert before is not None and after is not None and after.folds == 4
    rank = {
        name: [r.index for r in suspect_rows(samples, run.suspects) if r.split == "train"].index(OOF_ONLY)
        for name, run in (("before", before), ("after", after))
    }
    assert rank["before"] > 10 and rank["after"] <= 3, rank  # 15th -> 4th of 30
    rows = {r.index: r for r in suspect_rows(samples, after.suspects) if r.split == "train"}
    assert rows[OOF_ONLY].suspected == "dog" and rows[OOF_ONLY].oof_p_given == pytest.approx(0.03, abs=1e-6)
    assert rows[MEMORISED].ranked_by == "early_aum+cleanlab_4_folds"
    # cleanlab finds all three; flagged where the dynamics agree (the most suspect quarter of the split): the hard
    # dog, not the cat whose training never trailed
    assert rows[HARD].flag_rule == CLEANLAB and rows[OOF_ONLY].flag_rule == ""
    assert [i for i, r in rows.items() if r.flagged] == [MEMORISED, HARD]


def test_with_folds_both_splits_rank_on_one_scale() -> None:
    """With folds every image has the same two signals, so the list ranks them together: 4 label errors among the
    30 training images and none among the 12 val images are the 4 first rows (by quantile within each split, the
    most suspect val image would come second)."""
    samples = train_samples()
    target = np.asarray(samples.train.target)
    errors = [2, 11, 21, 25]
    oof = np.full((N_TRAIN, 3), 0.05)
    oof[np.arange(N_TRAIN), target] = 0.9
    oof[errors] = np.roll(oof[errors], 1, axis=1)  # confidently another class out of fold
    aum = np.full(N_TRAIN, -2.0)
    aum[errors] = 2.0  # and out-scored while the folds learned them
    samples.train_oof, samples.oof_folds, samples.train_folds_aum = oof.astype(np.float32), 4, aum
    samples.val_folds_aum = np.full(12, -2.0)  # every val image learned at once by the folds
    ranked = rank_run(samples, None, "phenomenon", ())
    assert ranked is not None
    top = list(zip(ranked.suspects.split[:4], ranked.suspects.where[:4], strict=True))
    assert sorted(where for split, where in top if split == "train") == errors, top
    assert (
        ranked.suspects.score[0] > ranked.suspects.score[4]
    )  # one score over both splits, not two quantiles
