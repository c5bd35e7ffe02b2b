"""Decoding many image files, in ``DataLoader`` worker processes when ``workers > 0``.

A pass goes over the files in chunks of :data:`CHUNK_FILES`; each chunk comes back as one ``uint8`` array plus
which files could not be read and why, so a bad file never stops the pass (the caller decides: see
:func:`lossdiag.data.images.check_decoded`). Only the output array and a few chunks in flight are in
memory; the output may be a memory-mapped file (the decode cache).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lossdiag.data.images import DECODE_ERRORS, load_image, probe_image

log = logging.getLogger(__name__)

CHUNK_FILES = 64
# below this many images, worker processes cost more to start than they save (~0.3 ms per small PNG)
AUTO_WORKERS_MIN_FILES = 2000
AUTO_WORKERS_MAX = 8


def available_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolve_workers(workers: int | str, n_files: int, lazy: bool = False) -> int:
    """``workers`` as a count; ``"auto"``: one per core but one (which trains), at most
    :data:`AUTO_WORKERS_MAX`, and none for fewer than :data:`AUTO_WORKERS_MIN_FILES` files unless ``lazy``
    (decoding on the fly needs a worker to overlap with training)."""
    if workers != "auto":
        return int(workers)
    if not lazy and n_files < AUTO_WORKERS_MIN_FILES:
        return 0
    return max(0, min(AUTO_WORKERS_MAX, available_cores() - 1))


def _as_is(item: Any) -> Any:
    return item


class _Chunks(Dataset):
    """Chunk ``k`` = files ``[k * CHUNK_FILES, (k + 1) * CHUNK_FILES)``, decoded (or only probed)."""

    def __init__(self, files: Sequence[Path], image_size: int, channels: int, probe: bool) -> None:
        self.files, self.image_size, self.channels, self.probe = list(files), image_size, channels, probe

    def __len__(self) -> int:
        return -(-len(self.files) // CHUNK_FILES)

    def __getitem__(self, k: int) -> tuple[int, np.ndarray | None, np.ndarray, dict[int, str]]:
        start = k * CHUNK_FILES
        files = self.files[start : start + CHUNK_FILES]
        ok = np.ones(len(files), dtype=bool)
        errors: dict[int, str] = {}
        shape = (len(files), self.channels, self.image_size, self.image_size)
        out = None if self.probe else np.zeros(shape, dtype=np.uint8)
        for i, path in enumerate(files):
            try:
                if out is None:
                    probe_image(path)
                else:
                    out[i] = load_image(path, self.image_size, self.channels)
            except DECODE_ERRORS as err:
                ok[i] = False
                errors[start + i] = str(err) or type(err).__name__
        return start, out, ok, errors


def _chunks(
    files: Sequence[Path], image_size: int, channels: int, workers: int, probe: bool
) -> Iterator[tuple[int, np.ndarray | None, np.ndarray, dict[int, str]]]:
    # a private generator: starting the loader must not draw from the global RNG (the model's initial
    # weights would then depend on whether the images were decoded or found in the cache)
    loader = DataLoader(
        _Chunks(files, image_size, channels, probe),
        batch_size=None,
        num_workers=workers,
        collate_fn=_as_is,
        generator=torch.Generator(),
    )
    yield from loader


def decode_into(
    files: Sequence[Path], image_size: int, channels: int, out: np.ndarray, workers: int = 0
) -> tuple[np.ndarray, dict[int, str]]:
    """Decode ``files[i]`` into ``out[i]`` (``uint8 (N, C, S, S)``); returns ``(ok, errors by position)``.

    Unreadable files leave zeros in ``out``.
    """
    ok = np.ones(len(files), dtype=bool)
    errors: dict[int, str] = {}
    if len(files) >= AUTO_WORKERS_MIN_FILES:
        log.info(
            "decoding %d images to %dx%dx%d with %d worker(s)",
            len(files),
            channels,
            image_size,
            image_size,
            workers,
        )
    for start, arr, chunk_ok, chunk_errors in _chunks(files, image_size, channels, workers, probe=False):
        assert arr is not None
        out[start : start + len(arr)] = arr
        ok[start : start + len(arr)] = chunk_ok
        errors.update(chunk_errors)
    return ok, errors


def probe_files(files: Sequence[Path], workers: int = 0) -> tuple[np.ndarray, dict[int, str]]:
    """Which ``files`` PIL can identify by their header (no pixels decoded): ``(ok, errors by position)``."""
    ok = np.ones(len(files), dtype=bool)
    errors: dict[int, str] = {}
    for start, _, chunk_ok, chunk_errors in _chunks(files, 1, 1, workers, probe=True):
        ok[start : start + len(chunk_ok)] = chunk_ok
        errors.update(chunk_errors)
    return ok, errors
