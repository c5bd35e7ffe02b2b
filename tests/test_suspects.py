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


def test_forgetting_events_and_first_learned() -> None:
    correct = S.correct_from_margin(MARGIN)
    events = S.forgetting_events(correct)
    assert events[CLEAN] == 0 and events[LATE] == 0 and events[FORGOTTEN] == 2
    assert events[NEVER] == np.inf
    assert S.first_learned(correct).tolist() == [0, 3, 4, 6]
    # a zero margin is a tie with another class, not a correct prediction
    assert S.correct_from_margin(np.array([[0.0, 0.1]])).tolist() == [[False, True]]


def test_suspect_scores_higher_is_more_suspect() -> None:
    scores = S.suspect_scores(P_GIVEN, MARGIN)
    assert set(scores) == set(S.METHODS)
    for method in ("aum", "aum_late", "confidence", "hard_to_learn", "loss", "forgetting"):
        assert S.rank(scores[method])[0] == NEVER, method
    assert scores["aum"] == pytest.approx(-S.aum(MARGIN))
    assert scores["aum_late"] == pytest.approx(-S.aum(MARGIN, start=3))
    assert scores["confidence"] == pytest.approx(1 - P_GIVEN.mean(axis=0))
    assert scores["loss"][CLEAN] == pytest.approx(-np.log(P_GIVEN[:, CLEAN]).mean())
    assert S.rank(scores["aum"]).tolist() == [NEVER, LATE, FORGOTTEN, CLEAN]
    # over the last half, the late learner has caught up with the forgotten sample and passed it
    assert S.rank(scores["aum_late"]).tolist() == [NEVER, FORGOTTEN, LATE, CLEAN]
    # forgetting alone cannot tell the clean from the late learner: both have no event
    assert scores["forgetting"][CLEAN] == scores["forgetting"][LATE] == 0


def test_inputs_in_half_precision_and_as_tensors() -> None:
    half = S.suspect_scores(torch.tensor(P_GIVEN, dtype=torch.float16), MARGIN.astype(np.float16))
    full = S.suspect_scores(P_GIVEN, MARGIN)
    for method in S.METHODS:
        assert half[method].dtype == np.float64
        np.testing.assert_allclose(half[method], full[method], atol=2e-3)
    with pytest.raises(ValueError, match="same"):
        S.suspect_scores(P_GIVEN, MARGIN[:, :3])
    with pytest.raises(ValueError, match="epochs, samples"):
        S.aum(np.zeros((2, 2, 2)))


def test_rank_breaks_ties_by_tiebreak_then_index() -> None:
    score = np.array([1.0, np.inf, 1.0, 0.0, 1.0])
    assert S.rank(score).tolist() == [1, 0, 2, 4, 3]
    assert S.rank(score, tiebreak=np.array([0.0, 0.0, 5.0, 9.0, 2.0])).tolist() == [1, 2, 4, 0, 3]
    with pytest.raises(ValueError, match="one value per sample"):
        S.rank(MARGIN)
    events = S.forgetting_events(S.correct_from_margin(MARGIN))
    # forgetting ranks the never-learned sample first; the AUM tie-break orders the late learner before the clean
    assert S.rank(events, tiebreak=-S.aum(MARGIN)).tolist() == [NEVER, FORGOTTEN, LATE, CLEAN]


def test_val_scores_best_model() -> None:
    logits = np.array([[4.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0]], dtype=np.float16)
    val = S.val_scores(logits, np.array([0, 0, 2]))
    assert val.preferred.tolist() == [0, 1, 0]
    assert val.margin == pytest.approx([4.0, -3.0, 0.0])
    assert val.p_given[2] == pytest.approx(1 / 3)
    assert val.p_given[1] == pytest.approx(1 / (2 + math.exp(3)))
    assert np.argsort(-val.suspect).tolist() == [1, 2, 0]


def test_quantile_makes_splits_comparable() -> None:
    q = S.quantile(np.array([0.2, 5.0, -1.0, 0.2]))
    # most suspect 1.0, then 0.75 ...; ties in index order, as rank() gives them
    assert q.tolist() == [0.75, 1.0, 0.25, 0.5]
    train, val = S.quantile(-S.aum(MARGIN)), S.quantile(np.array([0.9, 0.1]))
    assert train[NEVER] == val[0] == 1.0
