"""The learning-rate range test itself: a copy of the network trained for a few steps at growing rates.

It never touches the network it is given (a deep copy is trained) nor the global random state (it runs in
:func:`torch.random.fork_rng`, seeded), so a run starts from the same weights and draws the same random
numbers with ``optimizer.lr=auto`` as with the number it chose. The curve's arithmetic and the choice are in
:mod:`lossdiag.functional.learning_rate`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from lossdiag.functional.learning_rate import Smoother, diverged, lr_steps, memorized

# batches of one pass over the training data: (images, labels, ...) tuples; called again for the next pass
Batches = Callable[[int], Iterable[Any]]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


@dataclass(frozen=True)
class RangeCurve:
    """Each step's learning rate and training loss (cross-entropy of that step's batch, before the step)."""

    lrs: list[float]
    losses: list[float]


def _endless(batches: Batches) -> Iterator[Any]:
    epoch = 0
    while True:
        empty = True
        for batch in batches(epoch):
            empty = False
            yield batch
        if empty:
            raise ValueError("the training data yields no batches")
        epoch += 1


def range_test(
    net: nn.Module,
    optimizer: OptimizerFactory,
    batches: Batches,
    min_lr: float,
    max_lr: float,
    steps: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> RangeCurve:
    """Train a copy of ``net`` one batch per rate of :func:`lr_steps`; stop early once the loss diverges or the
    training set is learned by heart.

    The loss is the cross-entropy, whatever the run optimises: the rate is a property of the model, the data and
    the optimizer. ``batches(epoch)`` gives one pass over the training batches (augmented as in training).
    """
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    lrs, losses = [], []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = copy.deepcopy(net).to(device).train()
        opt = optimizer(model.parameters())
        stream = _endless(batches)
        best, smoother = float("inf"), Smoother()
        for lr in lr_steps(min_lr, max_lr, steps):
            for group in opt.param_groups:
                group["lr"] = float(lr)
            x, y = next(stream)[:2]
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(
                loss.detach()
            )  # one sync per step: the test needs each value to decide whether to stop
            lrs.append(float(lr))
            losses.append(value)
            smoothed = smoother.add(value)
            best = min(best, smoothed)
            if diverged(smoothed, best, value) or memorized(losses):
                break
    return RangeCurve(lrs, losses)
