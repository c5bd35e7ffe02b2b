"""Byte budgets: how many samples fit in one (evaluation chunks are sized in bytes, not samples), and sizes
as people read them."""

from __future__ import annotations

import math
from collections.abc import Sequence


def rows_per_chunk(sample_shape: Sequence[int], max_bytes: int, itemsize: int = 4) -> int:
    """How many samples of ``sample_shape`` (``itemsize`` bytes per value: 4 for float32) fit in ``max_bytes``;
    at least one, so a sample larger than the budget is still processed (alone)."""
    return max(1, int(max_bytes) // (itemsize * max(1, math.prod(sample_shape))))


def human_bytes(n_bytes: float) -> str:
    """``"234.4 MB"`` / ``"2.3 GB"`` (binary units, as ``free -h`` and ``du -h`` count)."""
    return f"{n_bytes / 2**30:.1f} GB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MB"
