"""One split (in memory, memory-mapped or decoded on the fly), and the seeded, stratified ways of cutting one."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from lossdiag.data.batches import Batch, StoreBatches, to_inputs
from lossdiag.data.stores import ImageStore, join
from lossdiag.errors import UserError
from lossdiag.functional.chunking import rows_per_chunk


@dataclass
class Split:
    """One split: images ``(N, C, H, W)``, labels ``(N,)``, and per-sample file paths.

    ``x`` is stored as it was decoded (``uint8`` for images): a tensor in memory, or a store
    (:mod:`lossdiag.data.stores`) whose pixels are read when needed; ``x / scale`` is the model's input in
    [0, 1]. :meth:`chunks` streams the model's inputs in pieces bounded in bytes; :meth:`inputs` gives them
    all at once (for small splits and a few samples only: it is a float32 copy).
    """

    x: torch.Tensor | ImageStore
    y: torch.Tensor
    paths: list[str] = field(default_factory=list)
    scale: float = 1.0

    def inputs(self, positions: Sequence[int] | np.ndarray | None = None) -> torch.Tensor:
        """The samples ``positions`` (default: all) as the model sees them: ``float32`` in [0, 1]."""
        if positions is None:
            positions = slice(None)  # type: ignore[assignment]
        elif isinstance(self.x, torch.Tensor):
            positions = torch.as_tensor(np.asarray(positions, dtype=np.int64))  # type: ignore[assignment]
        else:
            positions = np.asarray(positions, dtype=np.int64)
        x = self.x[positions] if isinstance(self.x, torch.Tensor) else self.x.read(positions)  # type: ignore[index]
        return to_inputs(x, self.scale)

    def chunks(self, max_bytes: int, device: torch.device | str = "cpu") -> Iterator[Batch]:
        """``(x, y, index)`` in sample order, each ``x`` at most ``max_bytes`` of float32 (at least one sample),
        converted on ``device``; a store is read by its ``workers`` loader processes."""
        step = rows_per_chunk(self.sample_shape, max_bytes)
        if not isinstance(self.x, torch.Tensor):
            workers = self.x.workers if len(self) > step else 0
            yield from StoreBatches(
                self.x, self.y, step, False, scale=self.scale, workers=workers, device=device
            )
            return
        for start in range(0, len(self), step):
            end = min(start + step, len(self))
            x = to_inputs(self.x[start:end].to(device, non_blocking=True), self.scale)
            yield x, self.y[start:end].to(device), torch.arange(start, end, device=device)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One sample's shape, ``(C, H, W)`` for images."""
        return tuple(self.x.shape[1:])

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


def concatenate(splits: Sequence[Split]) -> Split:
    """One split holding all samples of ``splits`` in order (same image shape and scale; in memory, or stores of
    one source: see :func:`lossdiag.data.stores.join`)."""
    paths = [p for s in splits for p in s.paths] if all(s.paths for s in splits) else []
    y = torch.cat([s.y for s in splits])
    if all(isinstance(s.x, torch.Tensor) for s in splits):
        return Split(torch.cat([s.x for s in splits]), y, paths, splits[0].scale)  # type: ignore[misc]
    return Split(join([s.x for s in splits]), y, paths, splits[0].scale)  # type: ignore[misc]


def take(split: Split, idx: np.ndarray | Sequence[int]) -> Split:
    """The samples ``idx`` of ``split`` (paths included); a copy in memory, a selection of a store."""
    rows = np.asarray(idx, dtype=np.int64)
    paths = [split.paths[i] for i in rows] if split.paths else []
    if isinstance(split.x, torch.Tensor):
        t = torch.as_tensor(rows)
        return Split(split.x[t], split.y[t], paths, split.scale)
    return Split(split.x.subset(rows), split.y[torch.as_tensor(rows)], paths, split.scale)
