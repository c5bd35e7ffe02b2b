"""``optimizer.lr=auto``: a learning rate scaled to the fan-in of the model's last linear layer.

One SGD step on a linear layer moves its outputs by about ``lr * ||h||^2`` times the error, and ``||h||^2``
grows with the layer's fan-in (ShallowNet's conv keeps each activation's scale about the same whatever the
image size or channel count). The forum's lr 0.1 was tuned for the 8x8 digits, fan-in 8 * 8 * 32 = 2048; a
32x32 RGB folder has 16x the fan-in and stays at chance with lr 0.1 (the measurements are in
docs/configuration.md, "The default learning rate"). ``auto`` keeps ``lr * fan_in`` at the digits' value:
exactly 0.1 on the digits.
"""

from __future__ import annotations

from torch import nn

AUTO_LR = "auto"
REFERENCE_LR = 0.1  # the forum's SGD learning rate ...
REFERENCE_FAN_IN = 2048  # ... on the 8x8 digits: fan-in 8 * 8 * 32 filters of ShallowNet's linear layer


def auto_lr(fan_in: int) -> float:
    """``REFERENCE_LR * REFERENCE_FAN_IN / fan_in``: 0.1 for the digits, 0.00625 for 32x32 images."""
    if fan_in < 1:
        raise ValueError(f"fan_in must be >= 1, got {fan_in}")
    return REFERENCE_LR * REFERENCE_FAN_IN / fan_in


def last_linear_fan_in(net: nn.Module) -> int:
    """``in_features`` of the last ``nn.Linear`` in ``net`` (the classifier layer)."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(net).__name__} has no nn.Linear layer: give optimizer.lr as a number")
    return int(linears[-1].in_features)
