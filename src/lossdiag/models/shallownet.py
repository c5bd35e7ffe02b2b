"""ShallowNet, exactly as in the forum thread: one 3x3 conv, ReLU, flatten, one linear layer."""

from __future__ import annotations

import torch
from torch import nn


class ShallowNet(nn.Module):
    """Conv2d(depth, 32, 3, stride=1, padding=1) -> ReLU -> flatten -> Linear(width*height*32, classes).

    The shapes come from the data module (``width``, ``height``, ``depth``, ``classes``).
    """

    def __init__(self, width: int, height: int, depth: int, classes: int, filters: int = 32) -> None:
        super().__init__()
        self.width, self.height, self.depth, self.classes = width, height, depth, classes
        self.conv1 = nn.Conv2d(depth, filters, kernel_size=3, stride=1, padding=1)
        self.activation = nn.ReLU()
        self.fc1 = nn.Linear(width * height * filters, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.conv1(x))
        return self.fc1(x.flatten(1))
