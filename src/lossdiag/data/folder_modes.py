"""How an image folder's pixels are held: in memory, memory-mapped from the decode cache, or decoded on the fly.

``data.mode``:

- ``memory``: every image decoded once into one ``uint8`` tensor (through the decode cache when
  ``data.cache_dir`` is set: a later run reads the decoded file instead of decoding again);
- ``cached``: the decode cache's file memory-mapped; the OS keeps in RAM what fits and reads the rest on use;
- ``lazy``: only the image headers are checked at the start; loader workers decode each batch when needed;
- ``auto``: ``memory`` while the decoded images take at most ``data.max_memory_mb``, else ``cached`` (or
  ``lazy`` when there is no cache folder, or no room in it). One log line says which and why.

Every mode gives the same samples in the same order, so the same split, batches and records.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lossdiag.data.decode import decode_into, probe_files, resolve_workers
from lossdiag.data.decode_cache import CacheUnavailable, decoded_folder, entry_bytes
from lossdiag.data.images import Listing, check_decoded, list_images
from lossdiag.data.splits import Split, take
from lossdiag.data.stores import ImageFiles, ImageStore, MappedImages
from lossdiag.errors import UserError
from lossdiag.functional.chunking import human_bytes

log = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("auto", "memory", "cached", "lazy")


@dataclass
class FolderImages:
    """The usable images of a :class:`Listing`: ``x`` row ``j`` is listed file ``keep[j]``."""

    listing: Listing
    x: torch.Tensor | ImageStore
    keep: np.ndarray
    mode: str

    def every(self) -> Split:
        """All usable images, in listing order."""
        files = self.listing.files
        return Split(
            self.x, torch.from_numpy(self.listing.label[self.keep]), [str(files[i]) for i in self.keep], 255.0
        )

    def part(self, part: int) -> Split:
        """The usable images of folder ``part`` (e.g. 0 = ``train/``, 1 = ``val/``)."""
        return take(self.every(), np.flatnonzero(self.listing.part[self.keep] == part))


def choose_mode(
    mode: str, decoded_bytes: int, max_memory_mb: float, cache_dir: Path | None
) -> tuple[str, str]:
    """``(mode, why)`` for ``data.mode=mode``: ``auto`` compares the decoded size with ``max_memory_mb``."""
    if mode != "auto":
        return mode, f"data.mode={mode}"
    if decoded_bytes <= max_memory_mb * 2**20:
        return "memory", f"data.mode=auto, at most data.max_memory_mb={max_memory_mb:g}"
    why = f"data.mode=auto, more than data.max_memory_mb={max_memory_mb:g}"
    return ("cached", why) if cache_dir is not None else ("lazy", f"{why} and data.cache_dir=null")


def _decode(
    listing: Listing, root: Path, size: int, channels: int, cache_dir: Path | None, workers: int, mmap: bool
) -> tuple[np.ndarray | Path, np.ndarray, dict[int, str], str]:
    """Decode through the cache (or straight into memory): ``(images or the cached file, ok, errors, note)``."""
    if cache_dir is not None:
        try:
            entry = decoded_folder(cache_dir, root, listing, size, channels, workers)
        except CacheUnavailable as err:
            if mmap:
                raise
            log.warning("%s: decoding into memory without the cache", err)
        else:
            note = "decoded into the cache" if entry.built else "read from the decode cache"
            images = entry.images if mmap else entry.load(mmap=False)
            return images, entry.ok, entry.errors, f"{note} {entry.images.parent}"
    out = np.empty((len(listing), channels, size, size), dtype=np.uint8)
    ok, errors = decode_into(listing.files, size, channels, out, workers)
    return out, ok, errors, "decoded without a cache"


def load_folder(
    root: Path,
    folders: Sequence[Path],
    class_names: Sequence[str],
    image_size: int,
    channels: int,
    on_bad_image: str = "skip",
    mode: str = "auto",
    cache_dir: Path | None = None,
    workers: int | str = "auto",
    max_memory_mb: float = 1024,
) -> FolderImages:
    """The images of ``folder/<class>/`` for each of ``folders``, held as ``mode`` says (see the module docstring)."""
    listing = list_images(root, folders, class_names, on_bad_image)
    n = len(listing)
    decoded = entry_bytes(n, image_size, channels)
    chosen, why = choose_mode(mode, decoded, max_memory_mb, cache_dir)
    what = f"{n:,} images of {channels}x{image_size}x{image_size} ({human_bytes(decoded)} decoded)"
    x: torch.Tensor | ImageStore
    if chosen == "cached":
        assert cache_dir is not None
        try:
            path, ok, errors, note = _decode(
                listing, root, image_size, channels, cache_dir, resolve_workers(workers, n), mmap=True
            )
        except CacheUnavailable as err:
            if mode != "auto":
                raise UserError(
                    f"{err}: set data.cache_dir to a writable folder with room, or use data.mode=lazy"
                ) from err
            log.warning("%s: decoding on the fly instead", err)
            chosen, why = "lazy", f"{why}, and the decode cache cannot be written"
        else:
            keep = check_decoded(listing, ok, errors, on_bad_image, root)
            store = MappedImages(path).subset(keep)  # type: ignore[arg-type]
            store.workers = 0 if workers == "auto" else int(workers)
            log.info("data: %s memory-mapped, %s (%s)", what, note, why)
            return FolderImages(listing, store, keep, chosen)
    if chosen == "lazy":
        count = resolve_workers(workers, n, lazy=True)
        ok, errors = probe_files(listing.files, resolve_workers(workers, n))
        keep = check_decoded(listing, ok, errors, on_bad_image, root)
        x = ImageFiles(listing.files, image_size, channels, count).subset(keep)
        log.info("data: %s decoded on the fly by %d loader worker(s) (%s)", what, count, why)
        return FolderImages(listing, x, keep, chosen)
    images, ok, errors, note = _decode(
        listing, root, image_size, channels, cache_dir, resolve_workers(workers, n), mmap=False
    )
    keep = check_decoded(listing, ok, errors, on_bad_image, root)
    assert isinstance(images, np.ndarray)
    x = torch.from_numpy(images if len(keep) == n else images[keep])
    log.info("data: %s in memory, %s (%s)", what, note, why)
    return FolderImages(listing, x, keep, chosen)
