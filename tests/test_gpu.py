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
