"""Why it rose (lossdiag/diagnosis/judge/causes.py) on synthetic per-sample records: the groups split the rise
exactly, each cause rule decides when its group carries the rise, and removing a rule changes the answer."""

from __future__ import annotations

import numpy as np
import pytest

from lossdiag.diagnosis.judge import causes
from lossdiag.diagnosis.judge.causes import CAUSES, GROUPS, Cause, decide_cause, sample_groups, split_by_group

N = 200


def records(seed: int = 0) -> dict[str, np.ndarray]:
    """Per-sample losses at the min epoch and the end, right/wrong at both, a collapsed class, suspected labels."""
    rng = np.random.default_rng(seed)
    return {
        "loss_min": rng.gamma(1.0, 0.2, N),
        "loss_last": rng.gamma(1.0, 0.2, N),
        "right_min": rng.random(N) < 0.8,
        "right_last": rng.random(N) < 0.8,
        "collapsed": np.arange(N) % 10 == 0,
        "suspected": np.arange(N) % 17 == 3,
    }


def split(r: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    groups = sample_groups(r["right_min"], r["right_last"], r["collapsed"], r["suspected"])
    return split_by_group((r["loss_last"] - r["loss_min"]) / N, groups, "rise")


def test_groups_are_disjoint_and_add_up_to_the_rise_and_the_final_loss() -> None:
    for seed in range(20):
        r = records(seed)
        groups = sample_groups(r["right_min"], r["right_last"], r["collapsed"], r["suspected"])
        by_rise = split_by_group((r["loss_last"] - r["loss_min"]) / N, groups, "rise")
        rise = float(r["loss_last"].mean() - r["loss_min"].mean())
        assert sum(g["rise"] for g in by_rise.values()) == pytest.approx(rise, abs=1e-9)
        assert sum(g["n"] for g in by_rise.values()) == N and list(by_rise) == list(GROUPS)
        assert sum(g["share"] for g in by_rise.values()) == pytest.approx(1.0)
        final = split_by_group(r["loss_last"] / N, groups, "loss")
        assert sum(g["loss"] for g in final.values()) == pytest.approx(float(r["loss_last"].mean()))
    # precedence: a suspected sample of a collapsed class counts as suspected; then the collapsed class
    g = sample_groups(np.array([True, True, False]), np.array([True, False, False]), np.array([True, True, False]),
                      np.array([True, False, False]))  # fmt: skip
    assert [GROUPS[i] for i in g] == ["suspected_label_error", "collapsed_class", "wrong_both"]


def carried_by(group: str, share: float = 0.8) -> dict[str, dict[str, float]]:
    """A split where ``group`` carries ``share`` of the rise and the rest is spread over the others."""
    rest = (1 - share) / (len(GROUPS) - 1)
    return {name: {"n": 5, "rise": share if name == group else rest, "share": share if name == group else rest}
            for name in GROUPS}  # fmt: skip


@pytest.mark.parametrize("row", CAUSES, ids=[str(row.cause) for row in CAUSES])
def test_each_cause_rule_decides_when_its_group_carries_the_rise(row, monkeypatch) -> None:
    split_ = carried_by(row.group)
    assert decide_cause(split_, significant_rise=True) == row.cause
    assert decide_cause(split_, significant_rise=False) == Cause.NONE
    # with the rule removed, the same records no longer name that cause
    monkeypatch.setattr(causes, "CAUSES", tuple(r for r in CAUSES if r != row))
    assert decide_cause(split_, significant_rise=True) != row.cause


def test_the_first_rule_wins_and_without_a_majority_the_largest_group_names_the_cause() -> None:
    both = carried_by("wrong_both")
    both["suspected_label_error"].update(rise=0.6, share=0.6)  # label errors carry 60%, confident mistakes 80%
    assert decide_cause(both, True) == Cause.LABEL_ERRORS  # checked first
    spread = {name: {"n": 5, "rise": 0.1, "share": s} for name, s in zip(GROUPS, (0.1, 0.0, 0.2, 0.35, -0.1, 0.45), strict=True)}
    assert decide_cause(spread, True) == Cause.LESS_CONFIDENT_CORRECT  # 45%: the largest, none has half
    # the clean samples' loss fell: label errors carry more than the whole rise
    fell = {name: {"n": 5, "rise": 0.0, "share": 0.0} for name in GROUPS}
    fell["suspected_label_error"]["share"], fell["right_both"]["share"] = 1.37, -0.37
    assert decide_cause(fell, True) == Cause.LABEL_ERRORS
    assert decide_cause(split(records()), True) in set(Cause) - {Cause.NONE}
