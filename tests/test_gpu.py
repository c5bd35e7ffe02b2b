"""GPU path (``trainer=gpu``): in-memory data lives on the GPU, so batches never cross the bus per step.

Skipped without CUDA (CI has none).
"""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from lossdiag.app.pipeline import build_datamodule, build_module, build_trainer, prepare

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class Devices(L.Callback):
    """Where the cap and the epoch's val metrics live while the fit runs (Lightning moves the module back to the
    CPU at its teardown, so they are read at each epoch's end)."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # after validation
        self.seen.add(("loss_cap", pl_module.loss_cap.device.type))
        self.seen.add(("val/acc", pl_module.epoch_summary("val")["val/acc"].device.type))  # from the GPU records


def fit_watched(cfg) -> tuple[L.LightningModule, list[tuple[str, ...]], Devices]:
    """Fit ``cfg``'s model, recording where each batch is before Lightning's transfer hook and (:class:`Devices`)
    where the cap and the val metrics live."""
    prepare(cfg)
    datamodule = build_datamodule(cfg)
    model = build_module(cfg, datamodule)
    seen: list[tuple[str, ...]] = []

    def record(batch, dataloader_idx: int):  # what the loader yields, before Lightning moves anything
        seen.append(tuple(t.device.type for t in batch))
        return batch

    model.on_before_batch_transfer = record
    probe = Devices()
    trainer = build_trainer(cfg)
    trainer.callbacks.append(probe)
    trainer.fit(model, datamodule=datamodule)
    return model, seen, probe


def test_batches_are_already_on_the_gpu_before_lightnings_transfer(make_cfg) -> None:
    _, seen, probe = fit_watched(make_cfg("trainer=gpu", "callbacks=none", "~logger", "trainer.max_epochs=1"))
    assert seen, "no batch went through the model"
    assert all(devices == ("cuda", "cuda", "cuda") for devices in seen), seen
    assert probe.seen == {("loss_cap", "cuda"), ("val/acc", "cuda")}, probe.seen


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
        model, seen, probe = fit_watched(cfg)
        assert seen and all(devices == ("cuda", "cuda", "cuda") for devices in seen), seen
        assert ("loss_cap", "cuda") in probe.seen, probe.seen
        losses[run_mode] = model.epoch_records("val").cross_entropy.cpu()
        caps[run_mode] = float(model.loss_cap)
    assert torch.allclose(losses[mode], losses["memory"], rtol=1e-5, atol=1e-6)
    assert caps[mode] == pytest.approx(caps["memory"], rel=1e-6)


def test_mixed_precision_keeps_the_per_sample_cross_entropy_in_float32(make_cfg) -> None:
    """bf16 autocast makes the logits bf16; the records (and every per-sample CE derived from them) stay float32,
    equal to the float64 cross-entropy of the same logits."""
    cfg = make_cfg(
        "trainer=gpu", "trainer.precision=bf16-mixed", "callbacks=none", "~logger", "trainer.max_epochs=2"
    )
    prepare(cfg)
    datamodule = build_datamodule(cfg)
    model = build_module(cfg, datamodule)
    trainer = build_trainer(cfg)
    trainer.fit(model, datamodule=datamodule)
    rec = model.epoch_records("val")
    assert rec.logits.dtype == torch.float32 and rec.cross_entropy.dtype == torch.float32
    exact = torch.nn.functional.cross_entropy(rec.logits.double(), rec.target, reduction="none")
    torch.testing.assert_close(rec.cross_entropy.double(), exact, rtol=1e-5, atol=1e-6)
    assert len(rec.index) == len(datamodule.val) and torch.isfinite(rec.cross_entropy).all()


def test_the_diagnosis_adds_no_host_sync_to_a_step(make_cfg) -> None:
    """CUDA's sync debug mode is on from each batch's start to its end (the step, backward, optimizer step and
    every callback's batch-end hook): no synchronizing call may come from lossdiag's own code (Lightning's are
    counted, not judged)."""
    import warnings
    from pathlib import Path

    import lightning as L

    import lossdiag

    class SyncWatch(L.Callback):
        def on_train_batch_start(self, *args) -> None:
            torch.cuda.set_sync_debug_mode("warn")

        def on_validation_batch_start(self, *args) -> None:
            torch.cuda.set_sync_debug_mode("warn")

        def on_train_batch_end(self, *args) -> None:
            torch.cuda.set_sync_debug_mode("default")

        def on_validation_batch_end(self, *args) -> None:
            torch.cuda.set_sync_debug_mode("default")

    cfg = make_cfg("trainer=gpu", "~logger", "trainer.max_epochs=3")
    prepare(cfg)
    datamodule = build_datamodule(cfg)
    model = build_module(cfg, datamodule)
    trainer = build_trainer(cfg)
    trainer.callbacks.append(SyncWatch())  # last: its batch-end hook runs after the diagnosis's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer.fit(model, datamodule=datamodule)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    package = str(Path(lossdiag.__file__).parent)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    ours = sorted({f"{w.filename}:{w.lineno}" for w in syncs if w.filename.startswith(package)})
    print(f"synchronizing calls in the steps: {len(syncs)} (lossdiag: {len(ours)})")
    assert not ours, ours
    assert (Path(cfg.paths.output_dir) / "diagnosis.json").is_file()  # the diagnosis ran


def test_a_gpu_run_through_the_entry_point_matches_its_checkpoint_on_the_cpu(tmp_path) -> None:
    """python -m src.train trainer=gpu: the per-sample val losses it records for its last model are the ones
    src.evaluate (always on the CPU) computes from last.ckpt (cuDNN's TF32 convolutions: to 1e-2)."""
    from lossdiag.diagnosis.samples import load_samples
    from tests.conftest import run_module

    run, evaluation = tmp_path / "run", tmp_path / "evaluation"
    proc = run_module("src.train", "trainer=gpu", "trainer.max_epochs=5", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_module(
        "src.evaluate", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={evaluation}"
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    on_gpu = load_samples(run).models["last"]["val"].loss
    on_cpu = load_samples(evaluation).models["last"]["val"].loss
    assert on_gpu.dtype == on_cpu.dtype == np.float32
    torch.testing.assert_close(torch.as_tensor(on_gpu), torch.as_tensor(on_cpu), rtol=1e-2, atol=1e-3)


def test_the_end_of_fit_evaluations_run_on_the_gpu(make_cfg) -> None:
    """Lightning moves the module to the CPU before on_fit_end; the diagnosis's end-of-fit evaluations (initial,
    best, last weights over whole loaders) still run on the GPU, and leave the module where they found it."""

    class EndOfFit(L.Callback):
        def __init__(self) -> None:
            self.at_end = False
            self.devices: set[str] = set()

        def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # runs first
            self.at_end = True

    cfg = make_cfg("trainer=gpu", "~logger", "trainer.max_epochs=2")
    prepare(cfg)
    datamodule = build_datamodule(cfg)
    model = build_module(cfg, datamodule)
    probe = EndOfFit()
    model.net.register_forward_pre_hook(
        lambda _, args: probe.devices.add(args[0].device.type) if probe.at_end else None
    )
    trainer = build_trainer(cfg)
    trainer.callbacks.insert(0, probe)
    trainer.fit(model, datamodule=datamodule)
    assert probe.devices == {"cuda"}, probe.devices
    assert model.device.type == "cpu"  # as Lightning's teardown left it
