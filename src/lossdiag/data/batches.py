"""Batches ``(x, y, index)`` without a per-sample ``__getitem__`` + collate.

On a model as small as ShallowNet, a ``DataLoader`` over a ``Dataset`` costs more than the arithmetic.
Images are held as ``uint8`` (4x less memory than float32) and converted per batch, on the batch's device.

Two loaders share one batch order (:func:`epoch_order`) and one conversion (:func:`to_inputs`), so every
data mode sees the same batches, the same augmentation and the same sample indices:

- :class:`TensorBatches`: slices of in-memory tensors (the images live where the model is, GPU included);
- :class:`StoreBatches`: batches read from a :mod:`lossdiag.data.stores` store (memory-mapped decode cache,
  or files decoded on the fly) by a ``DataLoader`` with ``workers`` persistent worker processes; each
  worker reads whole batches (one gather, or one loop of decodes), never single samples.

Every pass over the data (training, validation, the end-of-fit evaluations) goes through them, so every
:data:`TRIM_EVERY_N_BATCHES` batches they give the memory the model freed back to the OS
(:func:`lossdiag.memory.release_free_heap`: glibc would otherwise keep GBs of it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lossdiag.data.stores import ImageReadError, ImageStore
from lossdiag.errors import UserError
from lossdiag.memory import release_free_heap

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # images, labels, sample indices
TRIM_EVERY_N_BATCHES = 8
Transform = Callable[[torch.Tensor, int, int], torch.Tensor]


class _EpochSetter:
    """Lightning calls ``loader.sampler.set_epoch(epoch)`` each epoch; we use it to reseed the shuffle."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def epoch_order(
    n: int, shuffle: bool, seed: int, epoch: int, num_replicas: int = 1, rank: int = 0
) -> torch.Tensor:
    """The sample order of one epoch: ``randperm`` seeded by ``seed + epoch`` (or ``arange``); with
    ``num_replicas > 1`` every ``num_replicas``-th sample of it, padded by repetition as ``DistributedSampler``
    does."""
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    else:
        order = torch.arange(n)
    if num_replicas > 1:
        per_rank = math.ceil(n / num_replicas)
        pad = per_rank * num_replicas - n
        if pad:
            order = torch.cat([order, order[:pad]])
        order = order[rank::num_replicas]
    return order


def to_inputs(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Stored samples (``uint8``, or already float) as the model's ``float32`` input, ``x / scale``."""
    x = x.float()
    return x.div_(scale) if scale != 1.0 else x


class _Batched:
    """What both loaders share: the batch count and Lightning's DataLoader-like attributes."""

    def __init__(
        self, n: int, batch_size: int, shuffle: bool, seed: int, num_replicas: int, rank: int
    ) -> None:
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.sampler = _EpochSetter()
        self.batch_sampler = None  # Lightning inspects DataLoader-like attributes

    def order(self) -> torch.Tensor:
        return epoch_order(self.n, self.shuffle, self.seed, self.sampler.epoch, self.num_replicas, self.rank)

    def __len__(self) -> int:
        return math.ceil(math.ceil(self.n / self.num_replicas) / self.batch_size)

    @staticmethod
    def _between_batches(i: int) -> None:
        """Called before batch ``i`` is made: what the steps since the last call freed goes back to the OS."""
        if i % TRIM_EVERY_N_BATCHES == 0:
            release_free_heap()


class TensorBatches(_Batched):
    """Batches ``(x, y, index)`` sliced from in-memory tensors; ``x`` comes out as ``float32 / scale``.

    ``x`` may be stored as ``uint8`` (``scale`` 255 for 8-bit images): each batch is converted on its
    own device, so the stored split stays 4x smaller than float32. ``transform(x, epoch, batch_index)``
    (e.g. augmentation) is applied to each converted batch.
    The shuffle order depends only on ``seed`` and the epoch, so a resumed run sees the same batches.
    With ``num_replicas > 1`` each rank gets every ``num_replicas``-th sample of the (shuffled,
    padded-by-repetition) order, as ``DistributedSampler`` does; ``index`` lets consumers de-duplicate.
    Each batch is gathered on its own: nothing holds a shuffled copy of the split.
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
        transform: Transform | None = None,
    ) -> None:
        super().__init__(len(y), batch_size, shuffle, seed, num_replicas, rank)
        self.x, self.y = x, y
        self.scale, self.transform = float(scale), transform

    def __iter__(self) -> Iterator[Batch]:
        order = self.order().to(self.x.device)
        in_order = not self.shuffle and self.num_replicas == 1
        epoch = self.sampler.epoch
        for i, start in enumerate(range(0, len(order), self.batch_size)):
            self._between_batches(i)
            end = start + self.batch_size
            idx = order[start:end]
            x, y = (self.x[start:end], self.y[start:end]) if in_order else (self.x[idx], self.y[idx])
            batch = to_inputs(x, self.scale)
            if self.transform is not None:
                batch = self.transform(batch, epoch, i)
            yield batch, y, idx


class _StoreRows(Dataset):
    """Item = one batch: the samples at ``positions`` of ``store``, with their labels and positions."""

    def __init__(self, store: ImageStore, y: torch.Tensor) -> None:
        self.store, self.y = store, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, positions: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str | None]:
        positions = np.asarray(positions, dtype=np.int64)
        try:
            x, error = self.store.read(positions), None
        except ImageReadError as err:  # raised again, as one line, in the training process
            x, error = torch.zeros(0, dtype=torch.uint8), str(err)
        return x, self.y[positions], torch.from_numpy(positions), error


class _OrderSampler:
    """The loader's batches of positions for the current epoch (read in the training process)."""

    def __init__(self, owner: StoreBatches) -> None:
        self.owner = owner

    def __iter__(self) -> Iterator[np.ndarray]:
        order = self.owner.order().numpy()
        size = self.owner.batch_size
        return iter([order[s : s + size] for s in range(0, len(order), size)])

    def __len__(self) -> int:
        return len(self.owner)


def _as_is(item: Any) -> Any:
    return item


class StoreBatches(_Batched):
    """Batches ``(x, y, index)`` read from ``store`` (see the module docstring), in :func:`epoch_order`.

    ``workers`` > 0 processes read (decode) batches ahead of training; they persist across epochs. Batches
    are moved to ``device`` as ``uint8`` and converted and transformed there, as :class:`TensorBatches` does.
    An image that cannot be decoded stops the run with one line (:class:`~lossdiag.errors.UserError`).
    """

    def __init__(
        self,
        store: ImageStore,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        scale: float = 1.0,
        transform: Transform | None = None,
        workers: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(len(y), batch_size, shuffle, seed, num_replicas, rank)
        self.store, self.y = store, y.cpu()
        self.scale, self.transform = float(scale), transform
        self.workers, self.device = workers, torch.device(device)
        self._loader: DataLoader | None = None

    @property
    def loader(self) -> DataLoader:
        """Made on first use (a datamodule holding this loader still pickles small)."""
        if self._loader is None:
            self._loader = DataLoader(
                _StoreRows(self.store, self.y),
                batch_size=None,
                sampler=_OrderSampler(self),
                num_workers=self.workers,
                collate_fn=_as_is,
                persistent_workers=self.workers > 0,
                pin_memory=self.device.type == "cuda",
                # each epoch's start draws the workers' seed from this, not from the global RNG, which
                # in-memory batches never touch (dropout, a model's own randomness would differ by mode)
                generator=torch.Generator().manual_seed(self.seed),
            )
        return self._loader

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.sampler.epoch
        for i, (x, y, index, error) in enumerate(self.loader):
            self._between_batches(i)
            if error is not None:
                raise UserError(error)
            batch = to_inputs(x.to(self.device, non_blocking=True), self.scale)
            if self.transform is not None:
                batch = self.transform(batch, epoch, i)
            yield batch, y.to(self.device, non_blocking=True), index.to(self.device, non_blocking=True)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_loader": None}
