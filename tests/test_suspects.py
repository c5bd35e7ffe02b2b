"""Label-error scores on hand-made dynamics whose values and orderings are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lossdiag.functional import suspects as S

# four training samples over six epochs (rows: epochs, columns: samples)
CLEAN, LATE, FORGOTTEN, NEVER = range(4)
MARGIN = np.array(
    [
        # clean, learned late, forgotten twice, never learned
        [1.0, -2.0, 1.0, -3.0],
        [2.0, -1.5, -1.0, -3.0],
        [3.0, -1.0, 1.0, -2.0],
        [4.0, 0.5, -1.0, -2.0],
        [5.0, 1.0, 1.0, -3.0],
        [6.0, 1.5, 1.0, -3.0],
    ]
)
P_GIVEN = np.array(
    [
        [0.6, 0.1, 0.6, 0.05],
        [0.7, 0.2, 0.3, 0.05],
        [0.8, 0.3, 0.6, 0.1],
        [0.9, 0.6, 0.3, 0.1],
        [0.9, 0.7, 0.6, 0.05],
        [1.0, 0.8, 0.6, 0.05],
    ]
)


def test_given_label_dynamics_by_hand() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0], [0.5, 0.5, -1.0]])
    target = torch.tensor([0, 2, 1])
    p, margin = S.given_label_dynamics(logits, target)
    z = math.exp(2) + math.exp(1) + 1
    assert p.tolist() == pytest.approx(
        [math.exp(2) / z, 1 / z, math.exp(0.5) / (2 * math.exp(0.5) + math.exp(-1))]
    )
    # given minus the largest OTHER logit: a tie with another class is a zero margin
    assert margin.tolist() == pytest.approx([1.0, -2.0, 0.0])
    assert p.dtype == margin.dtype == torch.float32


def test_given_label_dynamics_half_precision_and_no_grad() -> None:
    logits = torch.tensor([[3.0, -1.0], [0.0, 4.0]], dtype=torch.float16, requires_grad=True)
    p, margin = S.given_label_dynamics(logits, torch.tensor([0, 0]))
    assert p.dtype == torch.float32 and not p.requires_grad
    assert margin.tolist() == [4.0, -4.0]
    with pytest.raises(ValueError, match="C >= 2"):
        S.given_label_dynamics(torch.zeros(3), torch.zeros(3))


def test_aum_is_mean_margin_and_orders_suspects() -> None:
    aum = S.aum(MARGIN)
    assert aum == pytest.approx([21 / 6, -1.5 / 6, 2 / 6, -16 / 6])
    # low AUM = suspect: never learned, then learned late, then forgotten, then clean
    assert np.argsort(aum).tolist() == [NEVER, LATE, FORGOTTEN, CLEAN]
    # dropping the first epochs: an int counts epochs, a negative int from the end, a float is a fraction
    assert S.aum(MARGIN, start=3) == pytest.approx([5.0, 1.0, 1 / 3, -8 / 3])
    assert S.aum(MARGIN, start=0.5) == pytest.approx(S.aum(MARGIN, start=3))
    assert S.aum(MARGIN, start=-3) == pytest.approx(S.aum(MARGIN, start=3))
    with pytest.raises(ValueError, match="no epochs"):
        S.aum(MARGIN, start=6)


def test_cartography_confidence_and_variability() -> None:
    confidence, variability = S.cartography(P_GIVEN)
    assert confidence == pytest.approx([4.9 / 6, 2.7 / 6, 3.0 / 6, 0.4 / 6])
    # population std (ddof=0), as in the paper's code
    # forgotten: mean 0.5, squared deviations 4 x 0.01 + 2 x 0.04 = 0.12, over 6 epochs
    assert variability[FORGOTTEN] == pytest.approx(math.sqrt(0.02))
    assert variability == pytest.approx(P_GIVEN.std(axis=0))
    assert np.argsort(confidence).tolist() == [NEVER, LATE, FORGOTTEN, CLEAN]
    # the never-learned sample is the "hard to learn" corner: low confidence AND low variability
    assert variability[NEVER] < variability[LATE]


def test_inputs_in_half_precision_and_as_tensors() -> None:
    half = S.early_aum(torch.tensor(MARGIN, dtype=torch.float16), 4)
    assert half.dtype == np.float64
    np.testing.assert_allclose(half, S.early_aum(MARGIN, 4), atol=2e-3)
    np.testing.assert_allclose(
        S.cartography(P_GIVEN.astype(np.float16))[0], S.cartography(P_GIVEN)[0], atol=2e-3
    )
    with pytest.raises(ValueError, match="epochs, samples"):
        S.aum(np.zeros((2, 2, 2)))


def test_rank_breaks_ties_by_tiebreak_then_index() -> None:
    score = np.array([1.0, np.inf, 1.0, 0.0, 1.0])
    assert S.rank(score).tolist() == [1, 0, 2, 4, 3]
    assert S.rank(score, tiebreak=np.array([0.0, 0.0, 5.0, 9.0, 2.0])).tolist() == [1, 2, 4, 0, 3]
    with pytest.raises(ValueError, match="one value per sample"):
        S.rank(MARGIN)


def test_quantile_makes_splits_comparable() -> None:
    q = S.quantile(np.array([0.2, 5.0, -1.0, 0.2]))
    # most suspect 1.0, then 0.75 and 0.5 shared by the tie, then 0.25
    assert q.tolist() == [0.625, 1.0, 0.25, 0.625]
    train, val = S.quantile(-S.aum(MARGIN)), S.quantile(np.array([0.9, 0.1]))
    assert train[NEVER] == val[0] == 1.0


# -- before memorisation, per-class thresholds, merging ------------------------------------------------
def test_early_window_spans_twice_the_epochs_up_to_the_val_loss_minimum() -> None:
    assert S.early_window(min_epoch=20, n_epochs=100) == 42  # twice epochs 0..20
    assert S.early_window(min_epoch=60, n_epochs=100) == 100  # at most the epochs there are
    assert S.early_window(min_epoch=1, n_epochs=100) == S.MIN_WINDOW  # at least MIN_WINDOW
    assert S.early_window(min_epoch=1, n_epochs=3) == 3
    # training recorded every epoch, val every second: minimum at epoch 4, window 10 epochs (0-9)
    assert S.early_window_end(range(20), [0, 2, 4, 6, 8], [3.0, 2.0, 1.0, 1.5, 2.0]) == (4, 9)
    # before memorisation the late learner (still below 0 in epochs 0-2) is more suspect than the forgotten one
    assert S.rank(S.early_aum(MARGIN, 3)).tolist() == [NEVER, LATE, FORGOTTEN, CLEAN]
    assert S.early_aum(MARGIN, 3) == pytest.approx(-MARGIN[:3].mean(axis=0))


def test_class_thresholds_are_each_class_mean_self_confidence() -> None:
    p = np.array([0.9, 0.7, 0.2, 0.4, 0.6])
    given = np.array([0, 0, 1, 1, 1])
    t = S.class_thresholds(p, given, 3)
    assert t[:2] == pytest.approx([0.8, 0.4]) and np.isnan(t[2])  # class 2 has no image


def test_confident_other_needs_the_other_class_above_its_own_threshold() -> None:
    t = np.array([0.9, 0.5, 0.7])
    pred = np.array([1, 1, 0, 0, 2])
    conf = np.array([0.6, 0.4, 0.95, 0.85, 0.99])
    given = np.array([0, 0, 1, 1, 2])
    # 0: prefers 1 with 0.6 >= 0.5; 1: 0.4 < 0.5; 2: prefers 0 with 0.95 >= 0.9; 3: 0.85 < 0.9; 4: agrees
    assert S.confident_other(pred, conf, given, t).tolist() == [True, False, True, False, False]


def test_train_flags_are_out_scored_outliers_of_their_class() -> None:
    # early mean margins of 8 images, two classes: class 0 learned easily (median 3), class 1 slowly (median 0.3)
    early = np.array([3.0, 3.2, 2.8, -1.0, 0.3, 0.1, 0.5, -0.4, -3.0])
    given = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    bounds = S.class_outliers(early, given, 2)
    # class 0: median 2.9, MAD 0.2: 2.9 - 2 x 1.4826 x 0.2; class 1: median 0.1, MAD 0.4
    assert bounds == pytest.approx([2.9 - 2 * 1.4826 * 0.2, 0.1 - 2 * 1.4826 * 0.4])
    flags = S.train_flags(early[None], given, 2)
    # out-scored in class 0 is an outlier (bound above 0: 0 counts); in class 1 only below -1.09: -0.4 is not
    assert flags.tolist() == [False, False, False, True, False, False, False, False, True]


def test_merge_splits_puts_both_splits_on_one_scale() -> None:
    def part(split: str, raw: list[float], rule: list[str]) -> S.SplitScores:
        n = len(raw)
        nan = np.full(n, np.nan)
        return S.SplitScores(split, np.array(raw), nan, nan, nan, np.full(n, -1), np.array(rule), split)

    ranked = S.merge_splits(
        [part("train", [3.0, -1.0, 0.5, 9.0], ["", "", "x", "y"]), part("val", [0.2, 0.9], ["", ""])]
    )
    assert list(zip(ranked.split, ranked.where, strict=True)) == [
        ("train", 3), ("val", 1), ("train", 0), ("train", 2), ("val", 0), ("train", 1)
    ]  # fmt: skip
    # quantiles within each split; a tie (0.5) goes to the higher own score (train's 0.5 over val's 0.2)
    assert ranked.score.tolist() == [1.0, 1.0, 0.75, 0.5, 0.5, 0.25]
    assert ranked.flagged.tolist() == [True, False, False, True, False, False]
    assert ranked.top("train", 2).tolist() == [3, 0]


def test_confident_other_is_cleanlabs_confident_learning_filter() -> None:
    """The val flags (one model's pred and confidence) and cleanlab's flags on out-of-fold probabilities are the same
    rule: the off-diagonal of confident learning's confident joint."""
    from cleanlab.filter import find_label_issues

    rng = np.random.default_rng(0)
    given = rng.integers(0, 4, 400)
    logits = rng.normal(0, 1, (400, 4))
    logits[np.arange(400), given] += 2.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    ours = S.confident_other(
        probs.argmax(1), probs.max(1), given, S.class_thresholds(probs[np.arange(400), given], given, 4)
    )
    theirs = find_label_issues(given, probs, filter_by="confident_learning", n_jobs=1)
    assert ours.sum() > 10 and (ours == theirs).all()
    assert (S.cleanlab_issues(given, probs)[1] == ours).all()
