"""Atomic file writes: a reader (or a killed run) never sees a half-written file."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None], durable: bool = True) -> Path:
    """Call ``write(handle)`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    The rename makes the write atomic for readers and against a killed process; ``durable`` also
    fsyncs the file first, so it survives a crash of the machine (a few ms per call).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_bytes(path: str | Path, data: bytes | memoryview, durable: bool = True) -> Path:
    return atomic_write(path, lambda handle: handle.write(data), durable)


def atomic_torch_save(path: str | Path, obj: object, durable: bool = True) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: serialised in memory, then one write (torch's zip writer makes
    many small writes, 2x slower straight to a file)."""
    import torch  # here: the CLI's --help path imports this module and must not import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getbuffer(), durable)
