"""``optimizer.lr=auto``: the learning rate read off a learning-rate range test (the curve's arithmetic).

The range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks", section 3.3; Lightning's
``Tuner.lr_find`` and fastai's ``lr_find`` are the same test) trains a copy of the model for a few steps
while the learning rate grows exponentially, one value per step, and records each step's training loss.
The loss stays flat while the rate is too small to move the weights, falls, reaches a minimum, and climbs
once the rate is too large; the test stops when the smoothed loss passes :data:`DIVERGED` x its best.

The choice is fastai's ``lr_min``: **the rate at the minimum of the smoothed loss, divided by 10** (an order
of magnitude below the rate where the loss stops falling), rounded to one of 1, 2, 5 x 10^k. It keeps the
forum's 0.1 on the digits (so their rising val loss stays), gives about 0.01 on a 32x32 RGB folder with
ShallowNet or ResNet-18, and 0.005-0.05 with Adam (docs/configuration.md, "The default learning rate", has
the measurements). The steepest-descent point (Lightning's suggestion) was measured too: it falls 2-5x lower,
where the digits' phenomenon goes; it is the fallback when the loss never turns (a tiny training set learned
by heart before any rate is too large).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

AUTO_LR = "auto"
SMOOTHING = 0.98  # the exponential moving average's weight of the past (fastai's and Lightning's beta)
DIVERGED = (
    4.0  # stop once the smoothed loss exceeds this many times its best (Lightning's early_stop_threshold)
)
DIVISOR = 10.0  # the chosen rate: the rate at the minimum of the smoothed loss / DIVISOR
MIN_FALL = (
    0.05  # the smoothed loss must fall at least this fraction below its start, or the test is inconclusive
)
# learned by heart: the last MEMORIZED_STEPS losses all below MEMORIZED x the first one
MEMORIZED = 0.01
MEMORIZED_STEPS = 5
TURNED = 1.5  # the curve turned: its smoothed end is at least this many times its smoothed minimum
SKIP_START = 10  # the first steps' smoothed values rest on few losses: never their minimum


def lr_steps(min_lr: float, max_lr: float, steps: int) -> np.ndarray:
    """The range test's learning rates: ``steps`` values growing exponentially from ``min_lr`` to ``max_lr``."""
    if not 0 < min_lr < max_lr or steps < 2:
        raise ValueError(f"need 0 < min_lr < max_lr and steps >= 2, got {min_lr}, {max_lr}, {steps}")
    return np.geomspace(min_lr, max_lr, steps)


class Smoother:
    """The bias-corrected exponential moving average of a stream of losses (as Adam corrects its moments)."""

    def __init__(self, beta: float = SMOOTHING) -> None:
        self.beta, self.avg, self.count = beta, 0.0, 0

    def add(self, loss: float) -> float:
        """Add one loss; return the smoothed value so far."""
        self.count += 1
        self.avg = self.beta * self.avg + (1 - self.beta) * float(loss)
        return self.avg / (1 - self.beta**self.count)


def smooth(losses: Sequence[float], beta: float = SMOOTHING) -> np.ndarray:
    """:class:`Smoother` over ``losses``, every value."""
    smoother = Smoother(beta)
    return np.array([smoother.add(loss) for loss in losses], dtype=np.float64)


def diverged(smoothed: float, best: float, loss: float) -> bool:
    """Whether the test should stop: the loss is not finite, or the smoothed loss passed ``DIVERGED x best``."""
    return not math.isfinite(loss) or smoothed > DIVERGED * best


def memorized(losses: Sequence[float]) -> bool:
    """Whether the last :data:`MEMORIZED_STEPS` losses are all below :data:`MEMORIZED` x the first one.

    A training set learned by heart leaves no gradient: larger rates can no longer make the loss rise, so the
    rest of the test would measure nothing (and its minimum would sit wherever it stopped).
    """
    if len(losses) < MEMORIZED_STEPS:
        return False
    bound = MEMORIZED * float(losses[0])
    return all(float(loss) < bound for loss in losses[-MEMORIZED_STEPS:])


@dataclass(frozen=True)
class Suggestion:
    """The chosen rate and how: ``rule`` is ``min`` (``at`` is the rate at the lowest smoothed loss) or
    ``steepest`` (the curve never turned: ``at`` is the rate where it fell fastest); ``fall`` is how far the
    smoothed loss fell below its start."""

    lr: float  # on the 1-2-5 grid (:func:`round_125`)
    at: float
    rule: str
    fall: float

    @property
    def conclusive(self) -> bool:
        return self.fall >= MIN_FALL


def suggest(lrs: Sequence[float], losses: Sequence[float]) -> Suggestion:
    """:data:`DIVISOR` below the rate at the minimum of the smoothed loss (module docstring).

    When the curve never turns (its end is not :data:`TURNED` x above its minimum: the test stopped on
    :func:`memorized`, or reached its largest rate), the minimum is only where the test ended, and the rate of
    the steepest fall (Lightning's suggestion) is taken instead.
    """
    if len(lrs) != len(losses) or len(lrs) <= SKIP_START:
        raise ValueError(f"need more than {SKIP_START} (lr, loss) pairs of equal length, got {len(lrs)}")
    smoothed = smooth(losses)
    index = SKIP_START + int(np.argmin(smoothed[SKIP_START:]))
    start = float(smoothed[SKIP_START])
    fall = (start - float(smoothed[index])) / start if start > 0 else 0.0
    if smoothed[-1] >= TURNED * smoothed[index]:
        return Suggestion(round_125(float(lrs[index]) / DIVISOR), float(lrs[index]), "min", fall)
    slope = np.gradient(smoothed, np.log(np.asarray(lrs, dtype=np.float64)))
    steepest = SKIP_START + int(np.argmin(slope[SKIP_START : index + 1]))
    return Suggestion(round_125(float(lrs[steepest])), float(lrs[steepest]), "steepest", fall)


def round_125(value: float) -> float:
    """The nearest of 1, 2, 5 x 10^k to ``value`` on a log scale (0.0933 -> 0.1, 0.013 -> 0.01, 0.003 -> 0.002).

    One significant figure on the 1-2-5 grid is as precise as a range test is (one step is 0.06 decades, its
    noise more), and neighbouring minima give the same rate.
    """
    if not value > 0:
        raise ValueError(f"value must be > 0, got {value}")
    exponent = math.floor(math.log10(value))
    grid = [m * 10.0**e for e in (exponent, exponent + 1) for m in (1, 2, 5)]
    best = min(grid, key=lambda g: abs(math.log10(g) - math.log10(value)))
    return float(f"{best:.1g}")
