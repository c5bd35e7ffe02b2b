"""The decode cache: a folder's images decoded and resized once, kept as a ``uint8`` ``.npy`` file that later
runs (every job of a sweep, too) read or memory-map instead of decoding again.

One entry per (folder content, image size, channels): ``<cache_dir>/<folder name>-<S>px-<C>ch-<key>/`` holds
``images.npy`` (``(N, C, S, S)`` ``uint8``, one row per listed file, zeros for an unreadable one) and
``meta.json`` (the folder, the sizes, and which files could not be read, and why). ``key`` hashes the
resolved folder path, the size, the channels and every file's relative path, byte size and modification time
(ns): a changed, added, removed or renamed file gives a new key, and writing the new entry removes the
stale ones of the same folder, size and channels.

Parallel runs are safe: builders of one entry take turns on a lock file (``fcntl.flock`` where the OS has
it), so one decodes while the others wait and then read its result; an entry is written into a hidden
temporary folder and renamed into place only when complete, so nobody reads a partial one (without a lock,
the first rename wins and the others discard their copy).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lossdiag.data.decode import decode_into
from lossdiag.data.images import Listing
from lossdiag.functional.chunking import human_bytes

log = logging.getLogger(__name__)

CACHE_VERSION = 1
IMAGES_FILE = "images.npy"
META_FILE = "meta.json"


class CacheUnavailable(OSError):
    """The cache folder cannot be written (permissions, a full disk)."""


@dataclass
class CacheEntry:
    """A complete entry: its ``images.npy`` and which rows hold a readable image."""

    images: Path
    ok: np.ndarray
    errors: dict[int, str]
    built: bool  # decoded by this process (False: found, decoded by an earlier run)

    def load(self, mmap: bool) -> np.ndarray:
        """The images: memory-mapped read-only (``mmap``), or read into memory."""
        return np.load(self.images, mmap_mode="r" if mmap else None)


def entry_bytes(n_files: int, image_size: int, channels: int) -> int:
    """Disk size of an entry's images (the ``.npy`` header aside)."""
    return n_files * channels * image_size * image_size


def _check_room(cache_dir: Path, needed: int) -> None:
    """Raise :class:`CacheUnavailable` unless ``cache_dir``'s disk has ``needed`` bytes free (and 5% more)."""
    free = shutil.disk_usage(cache_dir).free
    if free < needed * 1.05 + 2**20:
        raise CacheUnavailable(
            f"not enough free space in {cache_dir} for the decode cache ({human_bytes(needed)} needed, {human_bytes(free)} free)"
        )


def _prefix(root: Path, image_size: int, channels: int) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", root.name)[:40] or "root"
    return f"{name}-{image_size}px-{channels}ch-"


def cache_key(root: Path, listing: Listing, image_size: int, channels: int) -> str:
    """Hash of what the decoded images depend on: the files (path, size, mtime), the size and the channels."""
    digest = hashlib.sha256(f"{CACHE_VERSION}\n{root}\n{image_size}\n{channels}\n".encode())
    for path in listing.files:
        stat = path.stat()
        rel = os.path.relpath(path, root)
        digest.update(f"{rel}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _read(entry: Path, n_files: int) -> CacheEntry | None:
    """The entry in folder ``entry`` if it is complete and of this version, else ``None``."""
    try:
        meta = json.loads((entry / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("version") != CACHE_VERSION or meta.get("n") != n_files:
        return None
    try:
        size = (entry / IMAGES_FILE).stat().st_size
    except OSError:
        return None
    if size < entry_bytes(n_files, int(meta["image_size"]), int(meta["channels"])):
        return None
    errors = {int(k): str(v) for k, v in meta.get("unreadable", {}).items()}
    ok = np.ones(n_files, dtype=bool)
    ok[list(errors)] = False
    return CacheEntry(entry / IMAGES_FILE, ok, errors, built=False)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (waits for another holder); a no-op where ``fcntl`` is missing."""
    try:
        import fcntl
    except ImportError:  # Windows: the atomic rename alone keeps entries whole
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(entry: Path, listing: Listing, image_size: int, channels: int, workers: int, root: Path) -> None:
    """Decode every listed file into a temporary folder, then rename it to ``entry`` (first writer wins)."""
    tmp = entry.parent / f".{entry.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        shape = (len(listing), channels, image_size, image_size)
        out = np.lib.format.open_memmap(tmp / IMAGES_FILE, mode="w+", dtype=np.uint8, shape=shape)
        _, errors = decode_into(listing.files, image_size, channels, out, workers)
        out.flush()
        del out
        meta = {
            "version": CACHE_VERSION,
            "root": str(root),
            "n": len(listing),
            "image_size": image_size,
            "channels": channels,
            "unreadable": {str(k): v for k, v in sorted(errors.items())},
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        try:
            tmp.rename(entry)
        except OSError:  # another process renamed its copy first: keep theirs
            if not entry.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale(cache_dir: Path, prefix: str, keep: str, root: Path) -> None:
    """Remove the other entries of ``root`` at this size and channels (older contents of the folder) and
    leftovers of interrupted builds of this entry (we hold its lock, so their builders are gone)."""
    for path in cache_dir.glob(f"{prefix}*"):
        if path.name == keep or not path.is_dir():
            continue
        with contextlib.suppress(OSError, ValueError):
            if json.loads((path / META_FILE).read_text()).get("root") == str(root):
                shutil.rmtree(path, ignore_errors=True)
                log.info("decode cache: removed %s (an older content of %s)", path, root)
    for path in cache_dir.glob(f".{keep}.*.tmp"):
        shutil.rmtree(path, ignore_errors=True)
    for path in cache_dir.glob(f".{prefix}*.lock"):
        if path.name != f".{keep}.lock" and not (cache_dir / path.name[1 : -len(".lock")]).is_dir():
            path.unlink(missing_ok=True)


def decoded_folder(
    cache_dir: Path, root: Path, listing: Listing, image_size: int, channels: int, workers: int
) -> CacheEntry:
    """The cache entry of ``listing`` (files under ``root``), decoded now if no run has done it before.

    Raises :class:`CacheUnavailable` when the cache folder cannot be written.
    """
    root = root.resolve()
    prefix = _prefix(root, image_size, channels)
    name = prefix + cache_key(root, listing, image_size, channels)
    entry = cache_dir / name
    found = _read(entry, len(listing))
    if found is not None:
        return found
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with _locked(cache_dir / f".{name}.lock"):
            found = _read(entry, len(listing))  # built by another run while this one waited
            if found is not None:
                return found
            _remove_stale(cache_dir, prefix, name, root)
            _check_room(cache_dir, entry_bytes(len(listing), image_size, channels))
            _build(entry, listing, image_size, channels, workers, root)
    except CacheUnavailable:
        raise
    except OSError as err:
        raise CacheUnavailable(f"cannot write the decode cache in {cache_dir} ({err})") from err
    built = _read(entry, len(listing))
    if built is None:
        raise CacheUnavailable(f"the decode cache entry {entry} is incomplete after writing it")
    built.built = True
    return built
