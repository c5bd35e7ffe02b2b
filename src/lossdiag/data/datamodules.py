"""Data modules: the digits, and image folders held in memory, memory-mapped or decoded on the fly.

Images are decoded once (at ``setup``) into ``uint8`` tensors whose slices are the batches
(:class:`~lossdiag.data.batches.TensorBatches`), converted to float per batch; an image folder too large for
that is memory-mapped from the decode cache or decoded by loader workers
(:class:`~lossdiag.data.batches.StoreBatches`, :mod:`lossdiag.data.folder_modes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import lightning as L
import torch

from lossdiag.data.batches import StoreBatches, TensorBatches
from lossdiag.data.folder_modes import load_folder
from lossdiag.data.images import find_classes
from lossdiag.data.splits import Split, stratified_split, subsample, take
from lossdiag.errors import UserError
from lossdiag.functional.augment import AUGMENTATIONS, augment_batch


class InMemoryDataModule(L.LightningDataModule):
    """Common part of the data modules: splits, subsets, batching, and what the model needs to know.

    (The name is historical: a split's images are a tensor in memory, or a store read batch by batch.)

    Subclasses implement :meth:`load` and return the decoded samples. After :meth:`setup`,
    ``width``, ``height``, ``depth``, ``num_classes`` and ``class_names`` describe the data, and
    ``train.paths[i]`` / ``val.paths[i]`` name the file behind sample index ``i`` (folder data).
    ``val_paths`` / ``train_paths`` and ``class_names`` are what :class:`lossdiag.callbacks.LossDiagnosis`
    looks for on a datamodule to name files and classes.

    ``val_batch_size="auto"`` starts at ``max(batch_size, 256)`` until :meth:`size_val_batches` gives the count
    the model can evaluate within a byte budget (validation batch sizes change no number: records are per
    sample).

    ``augment`` (:data:`~lossdiag.functional.augment.AUGMENTATIONS`) transforms the training batches only, on
    their device, deterministically in ``(seed, epoch, batch)`` (a resumed run sees the same augmentation);
    validation batches are never augmented.
    """

    def __init__(
        self,
        batch_size: int = 32,
        val_batch_size: int | str | None = None,
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
        self.val_batch_auto = val_batch_size == "auto"
        self.val_batch_size = (
            max(batch_size, 256) if self.val_batch_auto or not val_batch_size else int(val_batch_size)
        )
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

    def size_val_batches(self, rows: int) -> None:
        """With ``val_batch_size="auto"``: ``rows`` samples per validation batch (at least ``batch_size``)."""
        if self.val_batch_auto:
            self.val_batch_size = max(self.batch_size, int(rows))

    # -- helpers ------------------------------------------------------------------------------
    def _require(self) -> InMemoryDataModule:
        if self.train is None or self.val is None:
            raise RuntimeError("call setup() before asking for data")
        return self

    def _batches(
        self, split: Split | None, batch_size: int, shuffle: bool, augment: str = "none"
    ) -> TensorBatches | StoreBatches:
        assert split is not None
        trainer = self.trainer
        replicas = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        device = self._data_device()
        transform = None if augment == "none" else partial(_augment, augment, self.seed, replicas, rank)
        order = (batch_size, shuffle, self.seed, replicas, rank)
        if not isinstance(split.x, torch.Tensor):
            workers = split.x.workers
            return StoreBatches(split.x, split.y, *order, split.scale, transform, workers, device)
        return TensorBatches(split.x.to(device), split.y.to(device), *order, split.scale, transform)

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
    ``image_size`` x ``image_size``. ``mode`` says where the decoded images live (``memory``, ``cached``:
    memory-mapped from the decode cache in ``cache_dir``, ``lazy``: decoded per batch by ``workers`` loader
    processes, ``auto``: by size, up to ``max_memory_mb`` in memory); see :mod:`lossdiag.data.folder_modes`.
    ``cache_dir=None`` decodes at every start.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 32,
        channels: int = 3,
        on_bad_image: str = "skip",
        mode: str = "auto",
        cache_dir: str | None = None,
        workers: int | str = "auto",
        max_memory_mb: float = 1024,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root).expanduser()
        self.image_size = image_size
        self.channels = channels
        self.on_bad_image = on_bad_image
        self.mode = mode
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.workers = workers
        self.max_memory_mb = max_memory_mb

    def _check_root(self) -> None:
        if not self.root.is_dir():
            raise UserError(
                f"data.root={self.root} is not a folder: point data.root at a folder of class subfolders"
            )

    def _load(self, folders: Sequence[Path], class_names: Sequence[str]):
        return load_folder(
            self.root,
            folders,
            class_names,
            self.image_size,
            self.channels,
            self.on_bad_image,
            self.mode,
            self.cache_dir,
            self.workers,
            self.max_memory_mb,
        )

    def load(self) -> tuple[Split, Split | None, list[str]]:
        self._check_root()
        split_dirs = (self.root / "train", self.root / "val")
        if all(d.is_dir() for d in split_dirs):
            class_names = find_classes(split_dirs[0])
            val_classes = find_classes(split_dirs[1])
            if val_classes != class_names:
                raise UserError(
                    f"{split_dirs[0]} has classes {class_names} but {split_dirs[1]} has {val_classes}: "
                    "give both the same class subfolders"
                )
            images = self._load(split_dirs, class_names)
            return images.part(0), images.part(1), class_names
        class_names = find_classes(self.root)
        return self._load([self.root], class_names).every(), None, class_names

    def setup_every_image(self, class_names: Sequence[str] | None = None) -> None:
        """Every image under ``root`` becomes the val split, and there is no training split (empty).

        For evaluating a trained model on a folder that is not its run's own: every image counts, none is
        held out. ``root/<class>/`` and ``root/train/<class>`` + ``root/val/<class>`` layouts are both read
        whole. ``class_names`` are the classes the model was trained on, in its label order: the folder's
        class folders must be among them (a subset is fine) and keep those labels; ``None`` takes the
        folder's own sorted class folders.
        """
        self._check_root()
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
        every = self._load(folders, names).every()
        self.class_names = names
        self.val = every
        self.train = take(every, [])
