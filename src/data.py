"""Data modules that hold the whole dataset in memory as tensors.

Images are decoded once (at ``setup``) into ``float32`` tensors; batches are slices of those
tensors (:class:`TensorBatches`), not per-sample ``__getitem__`` + collate, because on a model as
small as ShallowNet data loading would otherwise cost more than the arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from sklearn.model_selection import train_test_split

from src.errors import UserError

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # images, labels, sample indices


class _EpochSetter:
    """Lightning calls ``loader.sampler.set_epoch(epoch)`` each epoch; we use it to reseed the shuffle."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class TensorBatches:
    """Batches ``(x, y, index)`` sliced from in-memory tensors.

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
    ) -> None:
        self.x, self.y = x, y
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
        for start in range(0, len(order), self.batch_size):
            end = start + self.batch_size
            yield x[start:end], y[start:end], order[start:end]


@dataclass
class Split:
    """One split held in memory: images ``(N, C, H, W)`` in [0, 1], labels ``(N,)``, and per-sample file paths."""

    x: torch.Tensor
    y: torch.Tensor
    paths: list[str] = field(default_factory=list)

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
    if train_size is None or train_size == len(labels) or (isinstance(train_size, float) and train_size >= 1.0):
        return idx
    n_classes = len(np.unique(labels))
    n = train_size if isinstance(train_size, int) else round(len(labels) * train_size)
    if n > len(labels):
        raise UserError(f"data.train_size={train_size} is more than the {len(labels)} training samples: lower it")
    if n < n_classes:
        raise UserError(
            f"data.train_size={train_size} gives fewer training samples than the {n_classes} classes: raise it"
        )
    kept, _ = train_test_split(idx, train_size=n, stratify=labels, random_state=seed)
    return np.sort(kept)


class InMemoryDataModule(L.LightningDataModule):
    """Common part of the data modules: splits, subsets, batching, and what the model needs to know.

    Subclasses implement :meth:`load` and return the decoded samples. After :meth:`setup`,
    ``width``, ``height``, ``depth``, ``num_classes`` and ``class_names`` describe the data, and
    ``train.paths[i]`` / ``val.paths[i]`` name the file behind sample index ``i`` (folder data).
    """

    def __init__(
        self,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        val_fraction: float = 0.25,
        train_size: int | float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or max(batch_size, 256)
        self.val_fraction = val_fraction
        self.train_size = train_size
        self.seed = seed
        self.class_names: list[str] = []
        self.train: Split | None = None
        self.val: Split | None = None

    # -- to implement -------------------------------------------------------------------------
    def load(self) -> tuple[Split, Split | None, list[str]]:
        """Return ``(all_or_train, val_or_None, class_names)``; ``None`` means "split it for me"."""
        raise NotImplementedError

    # -- Lightning hooks ----------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        data, val, self.class_names = self.load()
        if val is None:
            train_idx, val_idx = stratified_split(data.y.numpy(), self.val_fraction, self.seed, self.class_names)
            data, val = _take(data, train_idx), _take(data, val_idx)
        self.train = _take(data, subsample(data.y.numpy(), self.train_size, self.seed))
        self.val = val

    def train_dataloader(self) -> TensorBatches:
        return self._batches(self._require().train, self.batch_size, shuffle=True)

    def val_dataloader(self) -> TensorBatches:
        return self._batches(self._require().val, self.val_batch_size, shuffle=False)

    # -- helpers ------------------------------------------------------------------------------
    def _require(self) -> InMemoryDataModule:
        if self.train is None or self.val is None:
            raise RuntimeError("call setup() before asking for data")
        return self

    def _batches(self, split: Split | None, batch_size: int, shuffle: bool) -> TensorBatches:
        assert split is not None
        trainer = self.trainer
        replicas = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        device = self._data_device()
        return TensorBatches(
            split.x.to(device), split.y.to(device), batch_size, shuffle, self.seed, replicas, rank
        )

    def _data_device(self) -> torch.device:
        """Keep the tensors where the model is (GPU included), so no batch crosses the bus per step."""
        trainer = self.trainer
        if trainer is None:
            return torch.device("cpu")
        return trainer.strategy.root_device

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def depth(self) -> int:
        return int(self._require().train.x.shape[1])  # type: ignore[union-attr]

    @property
    def height(self) -> int:
        return int(self._require().train.x.shape[2])  # type: ignore[union-attr]

    @property
    def width(self) -> int:
        return int(self._require().train.x.shape[3])  # type: ignore[union-attr]


def _take(split: Split, idx: np.ndarray | Sequence[int]) -> Split:
    t = torch.as_tensor(np.asarray(idx), dtype=torch.long)
    paths = [split.paths[i] for i in idx] if split.paths else []
    return Split(split.x[t], split.y[t], paths)


class DigitsDataModule(InMemoryDataModule):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes); nothing is downloaded."""

    def load(self) -> tuple[Split, Split | None, list[str]]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.as_tensor(digits.target, dtype=torch.long)
        return Split(x, y), None, [str(c) for c in digits.target_names]


class ImageFolderDataModule(InMemoryDataModule):
    """A torchvision ``ImageFolder`` layout: ``root/<class>/<image>``, or ``root/train/<class>`` + ``root/val/<class>``.

    Every image PIL can open is converted to ``channels`` (1 or 3) and resized to
    ``image_size`` x ``image_size`` once, at setup.
    """

    def __init__(
        self, root: str, image_size: int = 32, channels: int = 3, on_bad_image: str = "skip", **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root).expanduser()
        self.image_size = image_size
        self.channels = channels
        self.on_bad_image = on_bad_image

    def load(self) -> tuple[Split, Split | None, list[str]]:
        from src.images import find_classes

        if not self.root.is_dir():
            raise UserError(f"data.root={self.root} is not a folder: point data.root at a folder of class subfolders")
        split_dirs = (self.root / "train", self.root / "val")
        if all(d.is_dir() for d in split_dirs):
            class_names = find_classes(split_dirs[0])
            val_classes = find_classes(split_dirs[1])
            if val_classes != class_names:
                raise UserError(
                    f"{split_dirs[0]} has classes {class_names} but {split_dirs[1]} has {val_classes}: "
                    "give both the same class subfolders"
                )
            return self._decode(split_dirs[0], class_names), self._decode(split_dirs[1], class_names), class_names
        class_names = find_classes(self.root)
        return self._decode(self.root, class_names), None, class_names

    def _decode(self, folder: Path, class_names: list[str]) -> Split:
        from src.images import decode_folder

        return Split(*decode_folder(folder, class_names, self.image_size, self.channels, self.on_bad_image))
