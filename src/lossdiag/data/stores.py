"""Images that are not held in memory: rows of a memory-mapped decode cache, or files decoded when read.

Both look alike to :class:`lossdiag.data.splits.Split` and the loaders: ``shape`` ``(N, C, H, W)``,
``read(positions)`` gives those samples as a ``uint8`` tensor, ``subset(positions)`` a lazy selection (no
pixel is read). They pickle small (a path and row numbers), so ``DataLoader`` workers, spawned processes
included, open the file themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lossdiag.data.images import DECODE_ERRORS, load_image


class ImageReadError(Exception):
    """An image that passed the header check could not be decoded when a batch needed it."""


class MappedImages:
    """Rows ``rows`` of a ``uint8 (N, C, H, W)`` ``.npy`` file, memory-mapped read-only (pages are read on use)."""

    workers = 0  # a batch is one gather from the page cache: cheaper in the training process than over a pipe

    def __init__(self, path: Path, rows: np.ndarray | None = None) -> None:
        self.path = Path(path)
        self._array: np.ndarray | None = None
        self.rows = np.arange(len(self.array)) if rows is None else np.asarray(rows, dtype=np.int64)

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.array.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, positions: np.ndarray | Sequence[int] | slice) -> torch.Tensor:
        rows = self.rows[positions]
        return torch.from_numpy(np.ascontiguousarray(self.array[rows]))

    def subset(self, positions: np.ndarray | Sequence[int]) -> MappedImages:
        out = MappedImages.__new__(MappedImages)
        out.path, out._array, out.rows = (
            self.path,
            self._array,
            self.rows[np.asarray(positions, dtype=np.int64)],
        )
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "rows": self.rows, "_array": None}

    def fingerprint(self, digest: Any) -> None:
        """Feed what the pixels depend on to ``digest`` (a ``hashlib`` hash): the cache entry, whose name holds
        the hash of its folder's files (:mod:`lossdiag.data.decode_cache`), and the rows."""
        digest.update(str(self.path.resolve()).encode())
        digest.update(np.ascontiguousarray(self.rows).tobytes())


class ImageFiles:
    """Image files decoded (and resized) each time they are read; ``workers`` loader processes decode batches."""

    def __init__(self, files: Sequence[Path], image_size: int, channels: int, workers: int = 0) -> None:
        self.files = list(files)
        self.image_size, self.channels, self.workers = image_size, channels, workers

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.files), self.channels, self.image_size, self.image_size)

    def __len__(self) -> int:
        return len(self.files)

    def read(self, positions: np.ndarray | Sequence[int] | slice) -> torch.Tensor:
        chosen = np.arange(len(self.files))[positions]
        out = np.empty((len(chosen), self.channels, self.image_size, self.image_size), dtype=np.uint8)
        for i, p in enumerate(chosen):
            path = self.files[int(p)]
            try:
                out[i] = load_image(path, self.image_size, self.channels)
            except DECODE_ERRORS as err:
                raise ImageReadError(
                    f"cannot read image {path} ({err or type(err).__name__}): remove or replace it "
                    "(data.mode=lazy checks only image headers before training; data.mode=memory or cached "
                    "decodes every image first and skips unreadable ones with data.on_bad_image=skip)"
                ) from err
        return torch.from_numpy(out)

    def subset(self, positions: np.ndarray | Sequence[int]) -> ImageFiles:
        return ImageFiles(
            [self.files[int(i)] for i in positions], self.image_size, self.channels, self.workers
        )

    def fingerprint(self, digest: Any) -> None:
        """Feed what the pixels depend on to ``digest``: the size, channels and every file's path, byte size and
        modification time (as the decode cache's key)."""
        digest.update(f"{self.image_size} {self.channels}".encode())
        for path in self.files:
            stat = Path(path).stat()
            digest.update(f"{Path(path).resolve()} {stat.st_size} {stat.st_mtime_ns}".encode())


ImageStore = MappedImages | ImageFiles


def join(stores: Sequence[ImageStore]) -> ImageStore:
    """One store of all samples of ``stores``, in order: rows of one decode-cache file, or image files."""
    first = stores[0]
    if all(isinstance(s, MappedImages) and s.path == first.path for s in stores):
        return MappedImages(first.path, np.concatenate([s.rows for s in stores]))  # type: ignore[union-attr]
    if all(isinstance(s, ImageFiles) for s in stores):
        files = [f for s in stores for f in s.files]  # type: ignore[union-attr]
        return ImageFiles(files, first.image_size, first.channels, first.workers)  # type: ignore[union-attr]
    raise ValueError("only images of one decode-cache file, or image files, can be joined")
