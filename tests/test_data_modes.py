"""Image folders held in memory, memory-mapped from the decode cache, or decoded on the fly by loader workers:
the same samples, batches and records in every mode; the cache is reused, invalidated and safe in parallel."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lossdiag.data.batches import StoreBatches, TensorBatches
from lossdiag.data.datamodules import ImageFolderDataModule
from lossdiag.data.images import list_images, load_image
from lossdiag.data.stores import ImageFiles, MappedImages
from lossdiag.diagnosis.samples import load_samples
from lossdiag.errors import UserError
from lossdiag.rundir.metrics_csv import read_history
from tests.conftest import TEST_CACHE_DIR, run_module
from tests.image_folders import write_image_folder

MODES_LOG = "lossdiag.data.folder_modes"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_image_folder(root, {"a": 16, "b": 16, "c": 16}, size=12)
    return root


def _dm(root: Path, **kwargs) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(str(root), **{"image_size": 8, "seed": 3, **kwargs})
    dm.setup()
    return dm


def _batches(loader) -> list[tuple[torch.Tensor, ...]]:
    out = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        out += [tuple(t.clone() for t in batch) for batch in loader]
    return out


def test_every_mode_holds_the_same_samples_in_the_same_split(folder: Path, tmp_path: Path) -> None:
    memory = _dm(folder, mode="memory")
    assert isinstance(memory.train.x, torch.Tensor)
    cached = _dm(folder, mode="cached", cache_dir=str(tmp_path / "cache"))
    lazy = _dm(folder, mode="lazy", workers=0)
    assert isinstance(cached.train.x, MappedImages) and isinstance(lazy.train.x, ImageFiles)
    for dm in (cached, lazy):
        assert (dm.depth, dm.height, dm.width) == (3, 8, 8)
        for ours, theirs in ((dm.train, memory.train), (dm.val, memory.val)):
            assert ours.paths == theirs.paths and torch.equal(ours.y, theirs.y)
            assert torch.equal(ours.inputs(), theirs.inputs())


def test_store_batches_equal_tensor_batches_with_shuffle_and_augmentation(
    folder: Path, tmp_path: Path
) -> None:
    """Same order, same pixels, same augmentation, same indices: also read by a worker process."""
    memory = _dm(folder, mode="memory")
    cached = _dm(folder, mode="cached", cache_dir=str(tmp_path / "cache"))
    lazy = _dm(folder, mode="lazy")

    def flip_odd_batches(x: torch.Tensor, epoch: int, i: int) -> torch.Tensor:
        return x.flip(-1) * (epoch + 1) if i % 2 else x

    split = memory.train
    args = (5, True, 7, 1, 0, 255.0, flip_odd_batches)
    expected = _batches(TensorBatches(split.x, split.y, *args))
    assert len(expected) == 2 * len(TensorBatches(split.x, split.y, *args)) and len(expected) > 4
    for store, workers in ((cached.train.x, 0), (lazy.train.x, 1)):
        got = _batches(StoreBatches(store, cached.train.y, *args, workers=workers))
        assert len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            assert all(torch.equal(a, b) for a, b in zip(g, e, strict=True))


def test_auto_mode_chooses_by_size_and_says_why(
    folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = str(tmp_path / "cache")
    cases = [
        ({"max_memory_mb": 1024, "cache_dir": cache}, torch.Tensor, "in memory, decoded into the cache"),
        ({"max_memory_mb": 0, "cache_dir": cache}, MappedImages, "memory-mapped, read from the decode cache"),
        ({"max_memory_mb": 0, "cache_dir": None}, ImageFiles, "decoded on the fly by"),
    ]
    for kwargs, kind, note in cases:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=MODES_LOG):
            dm = _dm(folder, mode="auto", **kwargs)
        assert isinstance(dm.train.x, kind)
        lines = [r.getMessage() for r in caplog.records if r.name == MODES_LOG]
        assert len(lines) == 1 and note in lines[0], lines
        assert "48 images of 3x8x8" in lines[0] and "data.mode=auto" in lines[0]
        assert ("at most" if kind is torch.Tensor else "more than") + " data.max_memory_mb=" in lines[0]


def _rewrite(path: Path, value: int) -> None:
    """New pixels in ``path``, with a modification time that surely differs from the old one."""
    before = path.stat().st_mtime_ns
    Image.fromarray(np.full((12, 12, 3), value, dtype=np.uint8)).save(path)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


def test_decode_cache_is_reused_and_a_changed_file_invalidates_it(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    first = _dm(folder, mode="cached", cache_dir=str(cache))
    (entry,) = cache.glob("data-8px-3ch-*")
    assert (entry / "images.npy").is_file()

    import lossdiag.data.decode as decode

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded although the cache holds it")

    with monkeypatch.context() as patch:
        patch.setattr(decode, "load_image", no_decoding)
        again = _dm(folder, mode="memory", cache_dir=str(cache))  # memory mode reads the same entry
    assert torch.equal(again.train.inputs(), first.train.inputs())
    assert list(cache.glob("data-8px-3ch-*")) == [entry]

    changed = folder / "b" / "b_0_3.png"
    _rewrite(changed, 200)
    with caplog.at_level(logging.INFO):
        fresh = _dm(folder, mode="cached", cache_dir=str(cache))
    (new_entry,) = cache.glob("data-8px-3ch-*")  # the stale entry of this folder is gone
    assert new_entry != entry and not entry.exists()
    assert any("removed" in r.getMessage() and entry.name in r.getMessage() for r in caplog.records)
    split = fresh.train if str(changed) in fresh.train.paths else fresh.val
    row = split.paths.index(str(changed))
    assert torch.equal(
        split.inputs([row])[0], torch.from_numpy(np.array(load_image(changed, 8, 3))).float() / 255
    )
    assert (split.inputs([row])[0] == 200 / 255).all()
    _dm(folder, mode="cached", cache_dir=str(cache), image_size=6)  # another size: its own entry, kept
    assert len(list(cache.glob("data-*px-3ch-*"))) == 2
    assert not list(cache.glob(".*.tmp"))


def _build_in_child(args: tuple[str, str, float]) -> bool:
    """Decode the folder into the cache from a forked process, each image slowed down; True if this
    process decoded it (False: it found the entry another process wrote)."""
    root, cache, start = args
    import lossdiag.data.decode as decode
    from lossdiag.data.decode_cache import decoded_folder

    slow_load = decode.load_image

    def slow(*a, **k):
        time.sleep(0.01)
        return slow_load(*a, **k)

    decode.load_image = slow
    listing = list_images(Path(root), [Path(root)], ["a", "b", "c"])
    time.sleep(max(0.0, start - time.time()))  # all start together
    return decoded_folder(Path(cache), Path(root), listing, 8, 3, workers=0).built


def test_parallel_runs_decode_a_folder_once(folder: Path, tmp_path: Path) -> None:
    """Three processes (a sweep's parallel jobs) ask for the same entry at once: one decodes, two wait and read."""
    cache = tmp_path / "cache"
    start = time.time() + 0.5
    with multiprocessing.get_context("fork").Pool(3) as pool:
        built = pool.map(_build_in_child, [(str(folder), str(cache), start)] * 3)
    assert sorted(built) == [False, False, True]
    assert len(list(cache.glob("data-8px-3ch-*"))) == 1
    assert not list(cache.glob(".*.tmp"))
    memory = _dm(folder, mode="memory")
    mapped = _dm(folder, mode="cached", cache_dir=str(cache))
    assert torch.equal(mapped.train.inputs(), memory.train.inputs())


def test_an_unusable_cache_folder(folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Memory mode decodes without it (a warning); cached mode stops with one line; auto falls back to lazy."""
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file, not a folder")
    with caplog.at_level(logging.WARNING):
        dm = _dm(folder, mode="memory", cache_dir=str(not_a_folder))
    assert len(dm.train) + len(dm.val) == 48
    assert any("cannot write the decode cache" in r.getMessage() for r in caplog.records)
    with pytest.raises(
        UserError, match=r"cannot write the decode cache .*set data.cache_dir to a writable folder"
    ):
        _dm(folder, mode="cached", cache_dir=str(not_a_folder))
    dm = _dm(folder, mode="auto", max_memory_mb=0, cache_dir=str(not_a_folder))
    assert isinstance(dm.train.x, ImageFiles)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("data.mode=fast", "data.mode='fast' is unknown: use one of auto, memory, cached, lazy"),
        ("data.workers=-1", "data.workers=-1 must be a count >= 0"),
        ("data.workers=many", "data.workers='many' must be a count >= 0"),
        ("data.max_memory_mb=-5", "data.max_memory_mb=-5 must be >= 0"),
        ("data.cache_dir=null data.mode=cached", "data.mode=cached needs a decode cache folder"),
        ("eval_chunk_mb=0", "eval_chunk_mb=0 must be > 0"),
    ],
)
def test_bad_data_mode_values_are_one_line(make_cfg, folder: Path, override: str, needle: str) -> None:
    from lossdiag.app.validate import validate

    cfg = make_cfg("data=folder", f"data.root={folder}", *override.split())
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        validate(cfg)


def test_tests_cache_into_a_temporary_folder(make_cfg, folder: Path) -> None:
    cfg = make_cfg("data=folder", f"data.root={folder}")
    assert cfg.data.cache_dir == TEST_CACHE_DIR != "outputs/cache"


# -- through the entry point -----------------------------------------------------------------
@pytest.mark.slow
def test_lazy_and_cached_runs_record_what_the_memory_run_records(
    make_cfg, folder: Path, tmp_path: Path
) -> None:
    """Per-sample records of 2-epoch runs (augmented training batches) are identical in every mode; the lazy
    run goes through ``python -m src.train`` with a loader worker and the cap computed in many small chunks."""
    from omegaconf import open_dict

    from lossdiag.app.pipeline import train

    data = ("data=folder", f"data.root={folder}", "data.train_size=null", "data.image_size=8")
    options = (*data, "data.augment=flip_crop", "trainer.max_epochs=2", "loss=bounded")
    runs = {}
    for mode in ("memory", "cached"):
        cfg = make_cfg(*options, f"data.mode={mode}", f"data.cache_dir={tmp_path / 'cache'}")
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / mode)
        train(cfg)
        runs[mode] = tmp_path / mode
    runs["lazy"] = tmp_path / "lazy"
    proc = run_module(
        "src.train",
        *options,
        "data.train_size=null",
        "data.mode=lazy",
        "data.workers=1",
        "eval_chunk_mb=0.05",  # 52,428 bytes: 3 samples of 3x8x8 with ShallowNet's activations per chunk
        # the end-of-fit evaluations in whole loader batches, as in the other runs: logits of chunks of under 17
        # samples may differ in the last bit (tests/test_streaming.py checks those chunks)
        "callbacks.diagnosis.eval_chunk_mb=64",
        f"hydra.run.dir={runs['lazy']}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "decoded on the fly by 1 loader worker(s) (data.mode=lazy)" in proc.stdout
    assert load_samples(runs["memory"]).history.loss.shape == (2, 12)
    reference = np.load(runs["memory"] / "samples.npz")
    for mode in ("cached", "lazy"):
        arrays = np.load(runs[mode] / "samples.npz")
        assert set(arrays.files) == set(reference.files)
        for key in reference.files:
            assert np.array_equal(arrays[key], reference[key], equal_nan=reference[key].dtype.kind == "f"), (
                mode,
                key,
            )
        for journal in ("val_epochs.bin", "train_dynamics.bin"):  # the per-epoch history, every sample
            got, want = (runs[m] / "records" / journal for m in (mode, "memory"))
            assert got.read_bytes() == want.read_bytes(), (mode, journal)
        caps = [read_history(runs[m])["train/loss_cap"] for m in ("memory", mode)]
        assert caps[0] == caps[1], (mode, caps)


@pytest.mark.slow
def test_lazy_mode_skips_unidentifiable_files_and_stops_at_undecodable_ones(
    folder: Path, tmp_path: Path
) -> None:
    """Lazy mode checks headers at the start: a file that is no image is skipped with the usual warning; one
    whose header reads but whose pixels do not (truncated) stops training with one line, exit code 2."""
    (folder / "a" / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    good = (folder / "b" / "b_0_0.png").read_bytes()
    (folder / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    proc = run_module(
        "src.train",
        "data=folder",
        f"data.root={folder}",
        "data.mode=lazy",
        "data.workers=1",
        "data.image_size=8",
        "trainer.max_epochs=1",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert (
        "skipped 1 unreadable image(s)" in proc.stdout + proc.stderr
        and "corrupt.jpg" in proc.stdout + proc.stderr
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "cannot read image" in errors[0] and "truncated.png" in errors[0] and "data.mode=lazy" in errors[0]


def test_cross_validation_folds_and_the_range_test_read_every_mode(folder: Path, tmp_path: Path) -> None:
    """``suspects.folds`` joins splits (:func:`concatenate`) and ``optimizer.lr=auto`` caches by a fingerprint of
    the training split: both work on memory-mapped and lazily decoded images, with the memory mode's pixels."""
    from lossdiag.app.lr_find import data_fingerprint
    from lossdiag.data.splits import concatenate

    memory = _dm(folder, mode="memory", cache_dir=None)
    want = concatenate([memory.train, memory.val]).inputs()
    prints = set()
    for mode in ("cached", "lazy"):
        dm = _dm(folder, mode=mode, cache_dir=str(tmp_path / "cache"), workers=0)
        assert not isinstance(dm.train.x, torch.Tensor)
        assert torch.equal(concatenate([dm.train, dm.val]).inputs(), want), mode
        assert data_fingerprint(dm) == data_fingerprint(
            _dm(folder, mode=mode, cache_dir=str(tmp_path / "cache"))
        )
        prints.add(data_fingerprint(dm))
    (folder / "a" / "a_0_0.png").write_bytes((folder / "b" / "b_0_0.png").read_bytes())  # a changed file
    changed = _dm(folder, mode="lazy", cache_dir=None, workers=0)
    assert len(prints) == 2 and data_fingerprint(changed) not in prints
