"""Batches sliced from in-memory tensors: no per-sample ``__getitem__`` + collate.

On a model as small as ShallowNet, a ``DataLoader`` over a ``Dataset`` costs more than the arithmetic.
Images are held as ``uint8`` (4x less memory than float32) and converted per batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # images, labels, sample indices


class _EpochSetter:
    """Lightning calls ``loader.sampler.set_epoch(epoch)`` each epoch; we use it to reseed the shuffle."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class TensorBatches:
    """Batches ``(x, y, index)`` sliced from in-memory tensors; ``x`` comes out as ``float32 / scale``.

    ``x`` may be stored as ``uint8`` (``scale`` 255 for 8-bit images): each batch is converted on its
    own device, so the stored split stays 4x smaller than float32. ``transform(x, epoch, batch_index)``
    (e.g. augmentation) is applied to each converted batch.
    The shuffle order depends only on ``seed`` and the epoch, so a resumed run sees the same batches.
    With ``num_replicas > 1`` each rank gets every ``num_replicas``-th sample of the (shuffled,
    padded-by-repetition) order, as ``DistributedSampler`` does; ``index`` lets consumers de-duplicate.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        scale: float = 1.0,
        transform: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None,
    ) -> None:
        self.x, self.y = x, y
        self.scale, self.transform = float(scale), transform
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.sampler = _EpochSetter()
        self.batch_sampler = None  # Lightning inspects DataLoader-like attributes

    def _indices(self) -> torch.Tensor:
        n = len(self.y)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.sampler.epoch)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        if self.num_replicas > 1:
            per_rank = math.ceil(n / self.num_replicas)
            pad = per_rank * self.num_replicas - n
            if pad:
                order = torch.cat([order, order[:pad]])
            order = order[self.rank :: self.num_replicas]
        return order.to(self.x.device)

    def __len__(self) -> int:
        n = math.ceil(len(self.y) / self.num_replicas)
        return math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        order = self._indices()
        if self.shuffle or self.num_replicas > 1:
            x, y = self.x[order], self.y[order]
        else:
            x, y = self.x, self.y
        epoch = self.sampler.epoch
        for i, start in enumerate(range(0, len(order), self.batch_size)):
            end = start + self.batch_size
            batch = x[start:end].float()
            if self.scale != 1.0:
                batch = batch.div_(self.scale)
            if self.transform is not None:
                batch = self.transform(batch, epoch, i)
            yield batch, y[start:end], order[start:end]
