"""A network's per-sample outputs on whole splits held in memory (no Lightning)."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from lossdiag.functional.outputs import Evaluation, evaluate_logits


class LabelledTensors(Protocol):
    """Anything with labels ``y`` and the model's inputs ``inputs()`` (e.g. :class:`lossdiag.data.splits.Split`)."""

    y: torch.Tensor

    def inputs(self) -> torch.Tensor: ...


@torch.no_grad()
def predict_logits(net: nn.Module, x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Logits of ``net`` (in eval mode, on its own device) for all of ``x``, returned on the CPU."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    out = [net(x[i : i + chunk].to(device)).float().cpu() for i in range(0, len(x), chunk)]
    net.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def evaluate_net(net: nn.Module, splits: dict[str, LabelledTensors]) -> dict[str, Evaluation]:
    """``net``'s per-sample outputs on each split."""
    return {
        name: evaluate_logits(predict_logits(net, split.inputs()), split.y) for name, split in splits.items()
    }


def evaluate_state(
    net: nn.Module, state: dict[str, torch.Tensor], splits: dict[str, LabelledTensors]
) -> dict[str, Evaluation]:
    """Load ``state`` into ``net`` (a scratch copy: its weights are replaced) and evaluate it on each split."""
    net.load_state_dict(state)
    return evaluate_net(net, splits)
