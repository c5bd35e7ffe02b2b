from pathlib import Path

import pytest

from lossdiag.rundir.atomic import atomic_write, atomic_write_text


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "report.md"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["report.md"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "a.txt", "good")

    def explode(handle) -> None:
        handle.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, explode)
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_write_uses_normal_permissions(tmp_path: Path) -> None:
    import os

    mask = os.umask(0o022)
    try:
        target = atomic_write_text(tmp_path / "r.md", "x")
    finally:
        os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o644
