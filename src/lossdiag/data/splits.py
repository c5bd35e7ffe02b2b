"""One split held in memory, and the seeded, stratified ways of cutting one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from lossdiag.errors import UserError


@dataclass
class Split:
    """One split held in memory: images ``(N, C, H, W)``, labels ``(N,)``, and per-sample file paths.

    ``x`` is stored as it was decoded (``uint8`` for images); ``x / scale`` is the model's input in [0, 1]
    (:meth:`inputs`).
    """

    x: torch.Tensor
    y: torch.Tensor
    paths: list[str] = field(default_factory=list)
    scale: float = 1.0

    def inputs(self) -> torch.Tensor:
        """The whole split as the model sees it: ``float32`` in [0, 1]."""
        x = self.x.float()
        return x.div_(self.scale) if self.scale != 1.0 else x

    def __len__(self) -> int:
        return len(self.y)


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int, class_names: Sequence[str] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified ``(train_indices, val_indices)``; ``class_names`` only name classes in errors."""
    idx = np.arange(len(labels))
    counts = np.bincount(labels)
    present = counts[counts > 0]
    if present.min() < 2:
        small = [int(c) for c in np.flatnonzero((counts > 0) & (counts < 2))]
        named = [class_names[c] for c in small] if len(class_names) > max(small) else small
        raise UserError(
            f"class {', '.join(map(str, named))} has fewer than 2 images, so it cannot appear in both train and val: "
            "add images to it or remove the class folder"
        )
    n_val = max(round(len(labels) * val_fraction), len(present))
    if len(labels) - n_val < len(present):
        raise UserError(
            f"val_fraction={val_fraction} leaves fewer training images than classes: lower data.val_fraction"
        )
    train_idx, val_idx = train_test_split(idx, test_size=n_val, stratify=labels, random_state=seed)
    return np.sort(train_idx), np.sort(val_idx)


def subsample(labels: np.ndarray, train_size: int | float | None, seed: int) -> np.ndarray:
    """Indices of a stratified, seeded subset: ``train_size`` samples (int) or that fraction (float)."""
    idx = np.arange(len(labels))
    if (
        train_size is None
        or train_size == len(labels)
        or (isinstance(train_size, float) and train_size >= 1.0)
    ):
        return idx
    n_classes = len(np.unique(labels))
    n = train_size if isinstance(train_size, int) else round(len(labels) * train_size)
    if n > len(labels):
        raise UserError(
            f"data.train_size={train_size} is more than the {len(labels)} training samples: lower it"
        )
    if n < n_classes:
        raise UserError(
            f"data.train_size={train_size} gives fewer training samples than the {n_classes} classes: raise it"
        )
    kept, _ = train_test_split(idx, train_size=n, stratify=labels, random_state=seed)
    return np.sort(kept)


def take(split: Split, idx: np.ndarray | Sequence[int]) -> Split:
    """The samples ``idx`` of ``split`` (paths included)."""
    t = torch.as_tensor(np.asarray(idx), dtype=torch.long)
    paths = [split.paths[i] for i in idx] if split.paths else []
    return Split(split.x[t], split.y[t], paths, split.scale)


def concatenate(splits: Sequence[Split]) -> Split:
    """One split holding all samples of ``splits`` in order (same image shape and scale)."""
    paths = [p for s in splits for p in s.paths] if all(s.paths for s in splits) else []
    return Split(torch.cat([s.x for s in splits]), torch.cat([s.y for s in splits]), paths, splits[0].scale)
