"""The alternative objectives: hand-computed values, their limits, and what each does to the gradient at a
confidently-wrong sample (the samples that make validation loss rise while accuracy holds)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lossdiag.functional.objectives import (
    OBJECTIVES,
    focal_loss,
    gce_loss,
    label_smoothing_ce,
    objective_parameter_check,
    phuber_ce,
)

torch.set_num_threads(1)

# 3-class example, logits (2, 1, 0): logsumexp = log(e^2 + e + 1) = log(11.1073379) = 2.4076060
# p = (0.6652410, 0.2447285, 0.0900306), log p = (-0.4076060, -1.4076060, -2.4076060)
LOGITS = torch.tensor([[2.0, 1.0, 0.0]] * 3, dtype=torch.float64)
TARGET = torch.tensor([0, 1, 2])
P = (0.6652410, 0.2447285, 0.0900306)
CE = (0.4076060, 1.4076060, 2.4076060)

# confidently wrong: p_t = 1 / (e^20 + 2) = 2.0611536e-09
WRONG = [20.0, 0.0, 0.0]
WRONG_TARGET = 2


def _ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target, reduction="none")


def _clamped_ce(logits: torch.Tensor, target: torch.Tensor, cap: float) -> torch.Tensor:
    """The existing bounded loss, written inline: ``min(ce, cap)``."""
    return torch.minimum(_ce(logits, target), torch.tensor(cap, dtype=logits.dtype))


def _grad(fn, logits: list[float], target: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    x = torch.tensor([logits], dtype=dtype, requires_grad=True)
    fn(x, torch.tensor([target])).sum().backward()
    assert x.grad is not None
    return x.grad[0]


def _wrong_softmax_minus_onehot() -> torch.Tensor:
    s = torch.tensor([WRONG], dtype=torch.float64).softmax(1)[0]
    return s - F.one_hot(torch.tensor(WRONG_TARGET), 3).double()


def test_hand_computed_values() -> None:
    expect = {
        # -(sum_i q_i z_i) + logsumexp, q = (1 - eps) one_hot + eps / 3: 2.4076060 - (0.9333333 * 2 + 0.0333333)
        (label_smoothing_ce, 0.1): (2.4076060 - 1.9, 2.4076060 - 0.9333333 - 0.0666667, 2.4076060 - 0.1),
        # (1 - p_t)^2 * -log p_t: 0.3347590^2 * 0.4076060, 0.7552715^2 * 1.4076060, 0.9099694^2 * 2.4076060
        (focal_loss, 2.0): (0.0456778, 0.8029478, 1.9936045),
        # tau = 10: only p_2 = 0.0900306 <= 0.1 is linear: -10 * 0.0900306 + log(10) + 1 = 2.4022794
        (phuber_ce, 10.0): (CE[0], CE[1], -10 * P[2] + math.log(10) + 1),
        # tau = 2: p_1, p_2 <= 0.5: -2 * 0.2447285 + log(2) + 1 = 1.2036902, -2 * 0.0900306 + 1.6931472 = 1.5130860
        (phuber_ce, 2.0): (CE[0], 1.2036902, 1.5130860),
        # (1 - p_t^0.7) / 0.7: p_0^0.7 = exp(-0.7 * 0.4076060) = 0.7517705 -> 0.3546136
        (gce_loss, 0.7): tuple((1 - p**0.7) / 0.7 for p in P),
    }
    for (fn, param), values in expect.items():
        got = fn(LOGITS, TARGET, param)
        torch.testing.assert_close(got, torch.tensor(values, dtype=torch.float64), atol=5e-7, rtol=0)


def test_limits() -> None:
    ce = _ce(LOGITS, TARGET)
    torch.testing.assert_close(focal_loss(LOGITS, TARGET, 0.0), ce)
    torch.testing.assert_close(label_smoothing_ce(LOGITS, TARGET, 0.0), ce)
    one_minus_p = 1 - torch.tensor(P, dtype=torch.float64)
    torch.testing.assert_close(gce_loss(LOGITS, TARGET, 1.0), one_minus_p, atol=1e-6, rtol=0)
    # GCE -> CE as q -> 0: (1 - p^q) / q = -log p - q log^2 p / 2 + ...
    torch.testing.assert_close(gce_loss(LOGITS, TARGET, 1e-6), ce, atol=1e-5, rtol=0)
    # PHuber is CE wherever p_t > 1/tau: all three targets at tau = 1.01 / p_2 (1/tau = 0.0891 < p_2 = 0.0900)
    torch.testing.assert_close(phuber_ce(LOGITS, TARGET, 1.01 / P[2]), ce)
    assert phuber_ce(LOGITS, TARGET, 2.0)[0] == ce[0]


def test_phuber_is_continuous_and_bounded() -> None:
    tau = 4.0
    logits = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)  # p = (3/4, 1/4): p_1 = 1/tau
    at = phuber_ce(logits, torch.tensor([1]), tau)
    # both branches agree at the switch: -4 * 1/4 + log 4 + 1 = log 4 = -log(1/4)
    torch.testing.assert_close(at, torch.tensor([math.log(4.0)], dtype=torch.float64))
    wild = torch.tensor([[50.0, -50.0, -50.0], [0.0, 0.0, 0.0]])
    assert (phuber_ce(wild, torch.tensor([1, 0]), tau) <= math.log(tau) + 1 + 1e-6).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_finite_at_extreme_logits_and_at_least_float32(dtype: torch.dtype) -> None:
    logits = torch.tensor([[50.0, -50.0, 0.0], [-50.0, 50.0, 0.0], [50.0, 0.0, 0.0]], dtype=dtype)
    target = torch.tensor([0, 0, 2])  # right, wrong, wrong
    for name, entry in OBJECTIVES.items():
        x = logits.clone().requires_grad_(True)
        loss = entry.fn(x, target, entry.default)
        assert loss.dtype == torch.promote_types(dtype, torch.float32), name
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all(), name
    # focal with gamma < 1 at a perfectly classified sample: (1 - p_t)^gamma must not give an inf/NaN gradient
    x = torch.tensor([[200.0, 0.0, 0.0]], requires_grad=True)
    focal_loss(x, torch.tensor([0]), 0.5).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_gradients_match_finite_differences() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(4, 3, generator=generator, dtype=torch.float64)).requires_grad_()
    target = torch.tensor([0, 1, 2, 0])
    params = {"label_smoothing": (0.1,), "focal": (0.5, 2.0), "phuber": (2.0, 10.0), "gce": (0.3, 1.0)}
    for name, fn in ((name, entry.fn) for name, entry in OBJECTIVES.items()):
        for param in params[name]:
            assert torch.autograd.gradcheck(lambda x, f=fn, p=param: f(x, target, p), (logits,)), name


def test_gradient_at_confidently_wrong_sample() -> None:
    """logits (20, 0, 0), target 2: p_t = 2.06e-9. What still pulls on the weights."""
    s_minus_y = _wrong_softmax_minus_onehot()  # (1 - 4e-9, 2.06e-9, -1 + 2.06e-9)
    p_t = 1 / (math.exp(20) + 2)

    ce = _grad(_ce, WRONG, WRONG_TARGET)
    torch.testing.assert_close(ce, s_minus_y.float())  # norm sqrt(2): full pull

    # label smoothing: softmax minus the smoothed target, (0.9667, -0.0333, -0.9333): full pull
    ls = _grad(lambda x, t: label_smoothing_ce(x, t, 0.1), WRONG, WRONG_TARGET)
    torch.testing.assert_close(ls, torch.tensor([1 - 0.1 / 3, -0.1 / 3, -(1 - 0.1 + 0.1 / 3)]))

    # focal: (1 - p_t)^gamma ~ 1, so CE's full pull; the extra term gamma (1-p)^(gamma-1) p log p ~ -8e-8 is lost
    focal = _grad(lambda x, t: focal_loss(x, t, 2.0), WRONG, WRONG_TARGET)
    torch.testing.assert_close(focal, ce, rtol=1e-6, atol=0)
    focal64 = _grad(lambda x, t: focal_loss(x, t, 2.0), WRONG, WRONG_TARGET, torch.float64)
    factor = (1 - p_t) ** 2 - 2 * (1 - p_t) * p_t * math.log(p_t)  # d/dlog p_t of -(1-p_t)^2 log p_t, negated
    torch.testing.assert_close(focal64, factor * s_minus_y)

    # PHuber (tau = 10, linear branch): tau * p_t * (softmax - one_hot) = 2.06e-8: nonzero, finite, but linear
    # in p_t, so it vanishes as the sample gets more confidently wrong
    phuber = _grad(lambda x, t: phuber_ce(x, t, 10.0), WRONG, WRONG_TARGET, torch.float64)
    torch.testing.assert_close(phuber, 10 * p_t * s_minus_y)
    assert 2.0e-8 < phuber.abs().max() < 2.1e-8

    # GCE (q = 0.7): p_t^q * (softmax - one_hot) = 8.3e-7: nonzero, finite, vanishing like p_t^0.7 (slower than
    # PHuber's p_t, so at this sample GCE pulls ~40x harder than PHuber)
    gce = _grad(lambda x, t: gce_loss(x, t, 0.7), WRONG, WRONG_TARGET, torch.float64)
    torch.testing.assert_close(gce, p_t**0.7 * s_minus_y)
    assert 8.3e-7 < gce.abs().max() < 8.4e-7

    # the existing cap min(ce, 3): exactly zero
    assert torch.equal(_grad(lambda x, t: _clamped_ce(x, t, 3.0), WRONG, WRONG_TARGET), torch.zeros(3))


def test_bounded_gradients_stay_nonzero_in_float32_far_out() -> None:
    """At logits (50, 0, 0), p_t = 1.9e-22: PHuber's 1.9e-21 and GCE's 6.3e-16 are still representable in
    float32 (GCE via exp, not expm1, whose backward would round p_t^q to 0)."""
    for fn, param, expect in ((phuber_ce, 10.0, 1.93e-21), (gce_loss, 0.7, 6.31e-16)):
        g = _grad(lambda x, t, f=fn, p=param: f(x, t, p), [50.0, 0.0, 0.0], 2)
        assert g[0].item() == pytest.approx(expect, rel=1e-2)
        assert g[2].item() == pytest.approx(-expect, rel=1e-2)


def test_registry_and_parameter_check() -> None:
    assert set(OBJECTIVES) == {"label_smoothing", "focal", "phuber", "gce"}
    for name, entry in OBJECTIVES.items():
        assert objective_parameter_check(name, entry.default) is None
        assert entry.fn(LOGITS, TARGET, **{entry.param: entry.default}).shape == (3,)
    good = {"label_smoothing": (0, 0.99), "focal": (0, 0.0, 3), "phuber": (1.0001, 10), "gce": (1e-3, 1, 1.0)}
    bad = {
        "label_smoothing": (-0.1, 1.0, 2),
        "focal": (-1.0, float("inf")),
        "phuber": (1.0, 0.5, -2),
        "gce": (0.0, -0.5, 1.5),
    }
    for name, values in good.items():
        for v in values:
            assert objective_parameter_check(name, v) is None, (name, v)
    for name, values in bad.items():
        for v in (*values, float("nan"), "2", None, True):
            message = objective_parameter_check(name, v)
            assert message is not None and "\n" not in message, (name, v)
            assert f"loss.{OBJECTIVES[name].param}" in message
    assert "choose one of" in (objective_parameter_check("hinge", 1.0) or "")
    with pytest.raises(ValueError, match=r"loss\.tau"):
        phuber_ce(LOGITS, TARGET, 1.0)
