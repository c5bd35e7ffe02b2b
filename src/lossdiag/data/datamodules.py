"""Data modules that hold the whole dataset in memory as ``uint8`` tensors.

Images are decoded once (at ``setup``); batches are slices of those tensors
(:class:`~lossdiag.data.batches.TensorBatches`), converted to float per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import lightning as L
import torch

from lossdiag.data.batches import TensorBatches
from lossdiag.data.images import decode_folder, find_classes
from lossdiag.data.splits import Split, concatenate, stratified_split, subsample, take
from lossdiag.errors import UserError
from lossdiag.functional.augment import AUGMENTATIONS, augment_batch


class InMemoryDataModule(L.LightningDataModule):
    """Common part of the data modules: splits, subsets, batching, and what the model needs to know.

    Subclasses implement :meth:`load` and return the decoded samples. After :meth:`setup`,
    ``width``, ``height``, ``depth``, ``num_classes`` and ``class_names`` describe the data, and
    ``train.paths[i]`` / ``val.paths[i]`` name the file behind sample index ``i`` (folder data).
    ``val_paths`` / ``train_paths`` and ``class_names`` are what :class:`lossdiag.callbacks.LossDiagnosis`
    looks for on a datamodule to name files and classes.

    ``augment`` (:data:`~lossdiag.functional.augment.AUGMENTATIONS`) transforms the training batches only, on
    their device, deterministically in ``(seed, epoch, batch)`` (a resumed run sees the same augmentation);
    validation batches are never augmented.
    """

    def __init__(
        self,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        val_fraction: float = 0.25,
        train_size: int | float | None = None,
        seed: int = 0,
        augment: str = "none",
    ) -> None:
        super().__init__()
        if augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {augment!r}: choose one of {', '.join(AUGMENTATIONS)}")
        self.augment = augment
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
            train_idx, val_idx = stratified_split(
                data.y.numpy(), self.val_fraction, self.seed, self.class_names
            )
            data, val = take(data, train_idx), take(data, val_idx)
        self.train = take(data, subsample(data.y.numpy(), self.train_size, self.seed))
        self.val = val

    def train_dataloader(self) -> TensorBatches:
        return self._batches(self._require().train, self.batch_size, shuffle=True, augment=self.augment)

    def val_dataloader(self) -> TensorBatches:
        return self._batches(self._require().val, self.val_batch_size, shuffle=False)

    def eval_dataloader(self, split: str) -> TensorBatches:
        """Ordered, never augmented batches ``(x, y, index)`` of ``split`` (``"train"`` or ``"val"``): what an
        evaluation of a whole model reads."""
        return self._batches(getattr(self._require(), split), self.val_batch_size, shuffle=False)

    # -- helpers ------------------------------------------------------------------------------
    def _require(self) -> InMemoryDataModule:
        if self.train is None or self.val is None:
            raise RuntimeError("call setup() before asking for data")
        return self

    def _batches(
        self, split: Split | None, batch_size: int, shuffle: bool, augment: str = "none"
    ) -> TensorBatches:
        assert split is not None
        trainer = self.trainer
        replicas = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        device = self._data_device()
        transform = None if augment == "none" else partial(_augment, augment, self.seed, replicas, rank)
        return TensorBatches(
            split.x.to(device),
            split.y.to(device),
            batch_size,
            shuffle,
            self.seed,
            replicas,
            rank,
            scale=split.scale,
            transform=transform,
        )

    def _data_device(self) -> torch.device:
        """Keep the tensors where the model is (GPU included), so no batch crosses the bus per step."""
        trainer = self.trainer
        if trainer is None:
            return torch.device("cpu")
        return trainer.strategy.root_device

    @property
    def val_paths(self) -> list[str]:
        return self._require().val.paths  # type: ignore[union-attr]

    @property
    def train_paths(self) -> list[str]:
        return self._require().train.paths  # type: ignore[union-attr]

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


def _augment(
    name: str, seed: int, replicas: int, rank: int, x: torch.Tensor, epoch: int, batch: int
) -> torch.Tensor:
    """:func:`augment_batch` for batch ``batch`` of this rank: every rank's batch gets its own stream."""
    return augment_batch(x, name, seed, epoch, batch * replicas + rank)


class DigitsDataModule(InMemoryDataModule):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes); nothing is downloaded."""

    def load(self) -> tuple[Split, Split | None, list[str]]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        # pixel values are the integers 0..16: stored as uint8, divided by 16 per batch
        x = torch.as_tensor(digits.images, dtype=torch.uint8).unsqueeze(1).contiguous()
        y = torch.as_tensor(digits.target, dtype=torch.long)
        return Split(x, y, scale=16.0), None, [str(c) for c in digits.target_names]


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
        if not self.root.is_dir():
            raise UserError(
                f"data.root={self.root} is not a folder: point data.root at a folder of class subfolders"
            )
        split_dirs = (self.root / "train", self.root / "val")
        if all(d.is_dir() for d in split_dirs):
            class_names = find_classes(split_dirs[0])
            val_classes = find_classes(split_dirs[1])
            if val_classes != class_names:
                raise UserError(
                    f"{split_dirs[0]} has classes {class_names} but {split_dirs[1]} has {val_classes}: "
                    "give both the same class subfolders"
                )
            return (
                self._decode(split_dirs[0], class_names),
                self._decode(split_dirs[1], class_names),
                class_names,
            )
        class_names = find_classes(self.root)
        return self._decode(self.root, class_names), None, class_names

    def _decode(self, folder: Path, class_names: list[str]) -> Split:
        x, y, paths = decode_folder(folder, class_names, self.image_size, self.channels, self.on_bad_image)
        return Split(x, y, paths, scale=255.0)

    def setup_every_image(self, class_names: Sequence[str] | None = None) -> None:
        """Every image under ``root`` becomes the val split, and there is no training split (empty).

        For evaluating a trained model on a folder that is not its run's own: every image counts, none is
        held out. ``root/<class>/`` and ``root/train/<class>`` + ``root/val/<class>`` layouts are both read
        whole. ``class_names`` are the classes the model was trained on, in its label order: the folder's
        class folders must be among them (a subset is fine) and keep those labels; ``None`` takes the
        folder's own sorted class folders.
        """
        if not self.root.is_dir():
            raise UserError(
                f"data.root={self.root} is not a folder: point data.root at a folder of class subfolders"
            )
        split_dirs = [self.root / "train", self.root / "val"]
        folders = split_dirs if all(d.is_dir() for d in split_dirs) else [self.root]
        found = sorted({c for folder in folders for c in find_classes(folder)})
        names = [str(c) for c in class_names] if class_names else found
        unknown = [c for c in found if c not in names]
        if unknown:
            raise UserError(
                f"data.root={self.root} has class folder(s) {', '.join(unknown)} that the model was not trained on "
                f"(its classes: {', '.join(names)}): rename or remove them"
            )
        parts = []
        for folder in folders:
            present = [c for c in names if (folder / c).is_dir()]
            split = self._decode(folder, present)
            labels = torch.tensor([names.index(c) for c in present], dtype=torch.long)
            parts.append(Split(split.x, labels[split.y], split.paths, split.scale))
        every = concatenate(parts)
        self.class_names = names
        self.val = every
        self.train = take(every, [])
