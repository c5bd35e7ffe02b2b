"""Freed memory goes back to the OS: glibc keeps a fragmented heap's free memory until ``malloc_trim``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lossdiag.memory import _glibc, free_heap_bytes, release_free_heap
from tests.conftest import ROOT, child_env

needs_glibc = pytest.mark.skipif(sys.platform != "linux" or _glibc() is None, reason="glibc only")


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def fragment_and_trim() -> None:
    """Run in a fresh process (by the test below): the heap a test process has been through may already hold
    holes that the blocks below would reuse, which blurs the numbers."""
    # 200 MB of 100 kB blocks (below glibc's mmap threshold: they come from the heap), each followed by a
    # 1 kB block that stays (malloc'ed too: Python's own allocator takes only blocks up to 512 bytes):
    # freeing the big ones leaves 200 MB of holes that free() cannot return
    big, keep = [], []
    for _ in range(2000):
        big.append(bytearray(100_000))
        keep.append(bytearray(1024))
    del big
    assert free_heap_bytes() > 150 * 2**20
    held = _rss_mb()
    assert not release_free_heap(min_free_bytes=10 * 2**30)  # below the threshold: nothing done
    assert release_free_heap(min_free_bytes=64 * 2**20)
    assert held - _rss_mb() > 150, (held, _rss_mb())
    del keep


@needs_glibc
def test_free_heap_memory_held_by_a_fragmented_heap_is_given_back() -> None:
    code = "from tests.test_memory import fragment_and_trim; fragment_and_trim()"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@needs_glibc
def test_every_pass_over_the_data_gives_freed_memory_back(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import lossdiag.data.batches as batches

    calls: list[int] = []
    monkeypatch.setattr(batches, "release_free_heap", lambda: calls.append(1))
    loader = batches.TensorBatches(torch.zeros(100, 1, 2, 2), torch.zeros(100), batch_size=4, shuffle=True)
    assert len(list(loader)) == 25
    assert len(calls) == 4  # before batches 0, 8, 16 and 24
