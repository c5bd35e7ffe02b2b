import math

import pytest
import torch
import torch.nn.functional as F

from lossdiag.functional.losses import (
    bound_losses,
    loss_cap_from_initial,
    objective,
    per_sample_cross_entropy,
)


def test_cap_matches_hand_calculation() -> None:
    losses = torch.tensor([1.0, 2.0, 3.0, 6.0])
    mean = 3.0
    std = math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + (6 - 3) ** 2) / 4)  # population std = sqrt(3.5)
    assert loss_cap_from_initial(losses, k=3) == pytest.approx(mean + 3 * std)
    assert loss_cap_from_initial(losses, k=0.5) == pytest.approx(mean + 0.5 * std)


def test_cap_rejects_empty() -> None:
    with pytest.raises(ValueError, match="empty"):
        loss_cap_from_initial(torch.tensor([]), k=3)


def test_per_sample_cross_entropy_matches_manual_log_softmax() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 5.0, 0.0]])
    target = torch.tensor([0, 2])
    manual = -torch.log_softmax(logits, dim=1)[torch.arange(2), target]
    assert torch.allclose(per_sample_cross_entropy(logits, target), manual)


def test_bounded_values_and_gradients() -> None:
    # sample 0 is confidently right (small loss), sample 1 confidently wrong (loss ~ 30)
    logits = torch.tensor([[10.0, 0.0], [0.0, 30.0]], requires_grad=True)
    target = torch.tensor([0, 0])
    ce = per_sample_cross_entropy(logits, target)
    cap = 2.5
    bounded = bound_losses(ce, cap)
    assert bounded[0].item() == pytest.approx(ce[0].item())
    assert bounded[1].item() == pytest.approx(cap)
    loss = objective(ce, "bounded", cap)
    assert loss.item() == pytest.approx((ce[0].item() + cap) / 2)
    loss.backward()
    # the capped sample contributes no gradient; the uncapped one gets exactly its CE gradient / N
    assert torch.all(logits.grad[1] == 0)
    expected = (F.softmax(logits[0].detach(), 0) - F.one_hot(torch.tensor(0), 2)) / 2
    assert torch.allclose(logits.grad[0], expected)


def test_standard_objective_is_mean_cross_entropy() -> None:
    logits = torch.randn(5, 4)
    target = torch.randint(0, 4, (5,))
    assert torch.allclose(
        objective(per_sample_cross_entropy(logits, target), "standard", 1.0), F.cross_entropy(logits, target)
    )
    with pytest.raises(ValueError, match="unknown loss"):
        objective(torch.ones(2), "bouned", 1.0)
