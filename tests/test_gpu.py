"""GPU path (``trainer=gpu``): in-memory data lives on the GPU, so batches never cross the bus per step.

Skipped without CUDA (CI has none).
"""

from __future__ import annotations

import pytest
import torch

from lossdiag.app.pipeline import build_datamodule, build_module, build_trainer, prepare

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_batches_are_already_on_the_gpu_before_lightnings_transfer(make_cfg) -> None:
    cfg = make_cfg("trainer=gpu", "callbacks=none", "~logger", "trainer.max_epochs=1")
    prepare(cfg)
    datamodule = build_datamodule(cfg)
    model = build_module(cfg, datamodule)
    seen: list[tuple[str, ...]] = []

    def record(batch, dataloader_idx: int):  # what the loader yields, before Lightning moves anything
        seen.append(tuple(t.device.type for t in batch))
        return batch

    model.on_before_batch_transfer = record
    trainer = build_trainer(cfg)
    trainer.fit(model, datamodule=datamodule)
    assert seen, "no batch went through the model"
    assert all(devices == ("cuda", "cuda", "cuda") for devices in seen), seen
    assert trainer.callback_metrics["val/acc"].device.type == "cuda"


@pytest.mark.parametrize("mode", ["cached", "lazy"])
def test_folder_modes_train_on_the_gpu_with_the_memory_modes_records(make_cfg, tmp_path, mode: str) -> None:
    """Memory-mapped and lazily decoded folders: batches leave the loader already on the GPU (moved as uint8,
    converted there), the cap streams on the GPU, and the per-sample val losses equal the in-memory run's."""
    from omegaconf import open_dict

    from tests.image_folders import write_image_folder

    root = tmp_path / "data"
    write_image_folder(root, {"a": 16, "b": 16, "c": 16}, size=12)
    losses, caps = {}, {}
    for run_mode in ("memory", mode):
        cfg = make_cfg(
            "trainer=gpu",
            "callbacks=none",
            "~logger",
            "trainer.max_epochs=2",
            "data=folder",
            f"data.root={root}",
            "data.train_size=null",
            "data.image_size=8",
            "data.augment=flip_crop",
            f"data.mode={run_mode}",
            "data.workers=1",
            f"data.cache_dir={tmp_path / 'cache'}",
        )
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / run_mode)
        prepare(cfg)
        datamodule = build_datamodule(cfg)
        model = build_module(cfg, datamodule)
        seen: list[tuple[str, ...]] = []

        def record(batch, dataloader_idx: int, seen=seen):
            seen.append(tuple(t.device.type for t in batch))
            return batch

        model.on_before_batch_transfer = record
        trainer = build_trainer(cfg)
        trainer.fit(model, datamodule=datamodule)
        assert seen and all(devices == ("cuda", "cuda", "cuda") for devices in seen), seen
        assert model.loss_cap.device.type == "cuda"
        losses[run_mode] = model.epoch_records("val").cross_entropy.cpu()
        caps[run_mode] = float(model.loss_cap)
    assert torch.allclose(losses[mode], losses["memory"], rtol=1e-5, atol=1e-6)
    assert caps[mode] == pytest.approx(caps["memory"], rel=1e-6)
