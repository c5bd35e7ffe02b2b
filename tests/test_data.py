from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lossdiag.data.datamodules import DigitsDataModule, ImageFolderDataModule, TensorBatches
from lossdiag.errors import UserError


def test_digits_shapes_split_and_subset() -> None:
    dm = DigitsDataModule(val_fraction=0.25, train_size=150, seed=0)
    dm.setup()
    assert (dm.depth, dm.height, dm.width, dm.num_classes) == (1, 8, 8, 10)
    assert dm.class_names == [str(i) for i in range(10)]
    assert len(dm.val) == 449 and len(dm.train) == 150
    assert dm.train.x.dtype == torch.uint8 and int(dm.train.x.max()) == 16  # stored as decoded
    x = dm.train.inputs()
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() == 1
    # stratified: every class in both splits, in proportion
    assert torch.bincount(dm.train.y).min() >= 13
    assert torch.bincount(dm.val.y).min() >= 40


def test_digits_split_is_seeded() -> None:
    a, b, c = (DigitsDataModule(train_size=0.5, seed=s) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
    assert not torch.equal(a.train.x, c.train.x)
    assert len(a.train) == round(1348 * 0.5)


def test_tensor_batches_cover_every_sample_and_reshuffle_per_epoch() -> None:
    x = torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1)
    y = torch.arange(10)
    loader = TensorBatches(x, y, batch_size=4, shuffle=True, seed=3)
    assert len(loader) == 3
    first = [b for b in loader]
    assert [len(b[0]) for b in first] == [4, 4, 2]
    order0 = torch.cat([b[2] for b in first])
    assert sorted(order0.tolist()) == list(range(10))
    for xb, yb, ib in first:  # images, labels and indices stay aligned
        assert torch.equal(xb.view(-1).long(), ib) and torch.equal(yb, ib)
    loader.sampler.set_epoch(1)
    order1 = torch.cat([b[2] for b in loader])
    assert not torch.equal(order0, order1)
    loader.sampler.set_epoch(0)
    assert torch.equal(torch.cat([b[2] for b in loader]), order0)  # reproducible per epoch


def test_tensor_batches_shard_like_distributed_sampler() -> None:
    x, y = torch.zeros(7, 1, 1, 1), torch.arange(7)
    shards = [TensorBatches(x, y, 2, shuffle=False, num_replicas=2, rank=r) for r in (0, 1)]
    seen = [torch.cat([b[2] for b in s]) for s in shards]
    assert [len(s) for s in seen] == [4, 4]  # 7 samples padded to 8
    assert sorted(torch.cat(seen).unique().tolist()) == list(range(7))


def _write_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (20, 14)) -> None:
    rng = np.random.default_rng(0)
    for c, (name, n) in enumerate(classes.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
            arr[..., c % 3] = 255  # class colour
            img = Image.fromarray(arr)
            if i % 2:
                img.convert("L").save(root / name / f"img{i}.png")  # grayscale PNG
            else:
                img.save(root / name / f"img{i}.jpg", quality=90)  # RGB JPEG
        (root / name / "notes.txt").write_text("not an image")


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_decodes_once_and_splits(tmp_path: Path, channels: int) -> None:
    _write_folder(tmp_path, {"cats": 8, "dogs": 8, "pandas": 8})
    dm = ImageFolderDataModule(
        root=str(tmp_path), image_size=16, channels=channels, val_fraction=0.25, seed=0
    )
    dm.setup()
    assert dm.class_names == ["cats", "dogs", "pandas"]
    assert (dm.depth, dm.height, dm.width, dm.num_classes) == (channels, 16, 16, 3)
    assert len(dm.train) + len(dm.val) == 24
    assert torch.bincount(dm.val.y).tolist() == [2, 2, 2]
    # each sample index maps to its file, whose class folder matches the label
    for split in (dm.train, dm.val):
        assert len(split.paths) == len(split)
        for path, label in zip(split.paths, split.y.tolist(), strict=True):
            assert Path(path).parent.name == dm.class_names[label]
    x_before = dm.train.x
    dm.setup()  # idempotent: no re-decode
    assert dm.train.x is x_before


def test_image_folder_uses_train_and_val_subfolders(tmp_path: Path) -> None:
    _write_folder(tmp_path / "train", {"a": 4, "b": 4})
    _write_folder(tmp_path / "val", {"a": 2, "b": 3})
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=8, channels=3)
    dm.setup()
    assert len(dm.train) == 8 and len(dm.val) == 5
    assert all("/val/" in p for p in dm.val.paths)


def test_image_folder_errors_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a folder"):
        ImageFolderDataModule(root=str(tmp_path / "missing")).setup()
    _write_folder(tmp_path / "one", {"only": 3})
    with pytest.raises(UserError, match="at least 2 classes"):
        ImageFolderDataModule(root=str(tmp_path / "one")).setup()
    _write_folder(tmp_path / "empty", {"a": 3, "b": 3})
    (tmp_path / "empty" / "c").mkdir()
    with pytest.raises(UserError, match="no readable images"):
        ImageFolderDataModule(root=str(tmp_path / "empty")).setup()


def test_a_real_trainer_reshuffles_every_epoch(make_cfg) -> None:
    """Lightning must call ``set_epoch`` on the loader's sampler each epoch: the order is ``randperm(seed + epoch)``."""
    import lightning as L

    from lossdiag.app.pipeline import build_datamodule, build_module, build_trainer, prepare

    class Orders(L.Callback):
        def __init__(self) -> None:
            self.orders: dict[int, list[int]] = {}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
            self.orders.setdefault(trainer.current_epoch, []).extend(batch[2].tolist())

    cfg = make_cfg("trainer.max_epochs=3", "callbacks=none", "~logger", "seed=7")
    prepare(cfg)
    dm = build_datamodule(cfg)
    probe = Orders()
    trainer = build_trainer(cfg, callbacks=[probe])
    trainer.fit(build_module(cfg, dm), datamodule=dm)
    n = len(dm.train)
    expected = {
        e: torch.randperm(n, generator=torch.Generator().manual_seed(7 + e)).tolist() for e in range(3)
    }
    assert probe.orders == expected
    assert len({tuple(o) for o in probe.orders.values()}) == 3
