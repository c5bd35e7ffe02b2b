"""``LossDiagnosis`` in a foreign Lightning project: an MLP written here, plain ``DataLoader(TensorDataset)``."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lossdiag.callbacks import LossDiagnosis
from lossdiag.diagnosis.judge.stats import mean_losses
from lossdiag.diagnosis.samples import load_samples
from lossdiag.errors import UserError
from tests.conftest import read_events, read_images


class MLP(L.LightningModule):
    """Knows nothing about lossdiag: no recorder, no loss_cap, no class names; validation_step returns nothing."""

    def __init__(self, features: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5, momentum=0.9)


def blobs(n: int, seed: int, flip: float = 0.1) -> TensorDataset:
    """Three Gaussian blobs in 16 dimensions with a share of labels flipped: some samples end confidently wrong."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(n, 16, generator=gen) + 2.5 * F.one_hot(y, 16).float()
    flipped = torch.rand(n, generator=gen) < flip
    y = torch.where(flipped, (y + 1) % 3, y)
    return TensorDataset(x, y)


# a Trainer that prints nothing and runs on the CPU, and two small loaders of blobs
QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu", "devices": 1}


def small_loaders(n_train: int = 96, n_val: int = 60) -> tuple[DataLoader, DataLoader]:
    return DataLoader(blobs(n_train, 0), batch_size=32), DataLoader(blobs(n_val, 1), batch_size=32)


def fit(
    tmp_path: Path, model: L.LightningModule, epochs: int = 12, options: dict | None = None, **loaders
) -> LossDiagnosis:
    torch.manual_seed(0)
    diagnosis = LossDiagnosis(
        output_dir=tmp_path / "diagnosis", **{"figures_every_n_epochs": 5, **(options or {})}
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=TensorBoardLogger(tmp_path, name="", version=""),
        callbacks=[diagnosis],
        enable_checkpointing=False,
        **QUIET,
    )
    train = loaders.get("train", DataLoader(blobs(240, 0), batch_size=32, shuffle=True))
    val = loaders.get("val", DataLoader(blobs(150, 1), batch_size=64))
    trainer.fit(model, train, val)
    return diagnosis


def test_foreign_module_gets_the_whole_diagnosis(tmp_path: Path) -> None:
    epochs = 12
    torch.manual_seed(0)  # the initial weights, whatever earlier tests in this process drew
    fit(tmp_path, MLP(), epochs)
    out = tmp_path / "diagnosis"

    numbers = json.loads((out / "diagnosis.json").read_text())
    assert numbers["verdict"] in {
        "phenomenon",
        "overfitting",
        "no_rise",
        "inconclusive",
        "not_learning",
        "partial_collapse",
    }
    assert numbers["n_epochs"] == epochs and numbers["n_samples"] == 150

    markdown = (out / "diagnosis.md").read_text()
    assert markdown.startswith("# ") and "**Verdict: " in markdown and "Most extreme samples" in markdown
    # in a project of its own, the advice names no lossdiag config key and no checkpoint that does not exist
    advice = json.loads((out / "diagnosis.json").read_text())["advice"]
    for key in ("optimizer.", "remedy=", "loss=", "data.", "scheduler=", "checkpoints/"):
        assert key not in advice and key not in markdown.split("## What carried")[0], key
    # the per-sample records: every val sample once per epoch, in loader order; classes named by id
    samples = load_samples(out)
    assert samples.epochs == list(range(epochs))
    assert samples.history.loss.shape == (epochs, 150)
    assert samples.classes == ["0", "1", "2"] and (samples.val.path == "").all()
    np.testing.assert_array_equal(samples.val.index, np.arange(150))
    np.testing.assert_array_equal(samples.val.target, blobs(150, 1).tensors[1].numpy())
    # the models: initial (before the first step) and last; no checkpoint callback, so no best
    assert set(samples.models) == {"initial", "last"}
    assert samples.models["last"]["val"].loss.mean() == pytest.approx(
        samples.history.loss[-1].mean(), rel=1e-5
    )
    assert samples.models["initial"]["val"].loss.mean() == pytest.approx(
        np.log(3), abs=0.3
    )  # untrained: ~uniform
    assert samples.models["last"]["val"].correct(samples.val.target).mean() > 0.6
    assert (out / "reports" / "last.md").is_file() and (out / "worst.csv").is_file()
    assert (out / "figures" / "reliability.png").is_file()
    assert not (out / "figures" / "worst_samples.png").exists()  # 16 features are not images

    events = read_events(tmp_path)
    tags = events.Tags()
    assert [h.step for h in events.Histograms("val/loss_per_sample")] == list(range(epochs))
    assert [s.step for s in events.Scalars("val/ece")] == list(range(epochs))
    assert "train/loss_per_sample" not in tags["histograms"]  # its training_step returns no logits


def test_blocks_of_epochs_log_what_epoch_by_epoch_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-epoch diagnosis is evaluated in blocks; the block size changes when values are written, not what."""
    from lossdiag.callbacks import epoch_figures

    class Pictures(MLP):  # 4x4 one-channel "images": the worst-samples grids are drawn too
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.flatten(1))

    def pictures(n: int, seed: int) -> TensorDataset:
        x, y = blobs(n, seed).tensors
        return TensorDataset(x.view(n, 1, 4, 4), y)

    monkeypatch.setattr(epoch_figures, "TIME_SHARE", 1e9)  # figures drawn when their block is evaluated
    epochs, outputs = 7, {}
    for name, every in (("each", 1), ("blocks", 3)):
        run = tmp_path / name
        torch.manual_seed(0)  # the same initial weights
        fit(
            run,
            Pictures(),
            epochs,
            {"flush_every_n_epochs": every, "flush_every_s": 1e9, "figures_every_n_epochs": 2},
            train=DataLoader(pictures(240, 0), batch_size=32),
            val=DataLoader(pictures(150, 1), batch_size=64),
        )
        events = read_events(run)
        scalars = {
            tag: sorted((s.step, s.value) for s in events.Scalars(tag)) for tag in events.Tags()["scalars"]
        }
        written = read_images(events)
        images = [(tag, step, pngs) for tag in ("val/reliability", "val/worst_samples") for step, pngs in written[tag]]
        outputs[name] = scalars, images, load_samples(run / "diagnosis")
    (each, each_images, each_samples), (blocks, block_images, block_samples) = (
        outputs["each"],
        outputs["blocks"],
    )
    assert {"val/ece", "val/temperature", "val/loss_p99", "val/loss_from_wrong"} <= set(each)
    assert blocks == each
    assert [step for step, _ in each["val/temperature"]] == list(range(epochs))
    # every 2 epochs and the last; in blocks of 3, epochs 1 and 3 are drawn when their block is evaluated
    for tag in ("val/reliability", "val/worst_samples"):
        assert [step for t, step, _ in each_images if t == tag] == [1, 3, 5, 6], tag
    assert block_images == each_images
    assert block_samples.epochs == each_samples.epochs == list(range(epochs))
    np.testing.assert_array_equal(block_samples.history.loss, each_samples.history.loss)
    for key, values in each_samples.history.calibration.items():
        np.testing.assert_array_equal(block_samples.history.calibration[key], values, err_msg=key)
    # cross-fitted calibration (what the verdict reads), given at the end: the lowest-loss epoch and the last only
    history = each_samples.history
    lowest = int(np.argmin(mean_losses(history.loss)))
    expected = [e in (lowest, epochs - 1) for e in range(epochs)]
    for key in ("nll_crossfit", "ece_crossfit"):
        assert np.isfinite(history.calibration[key]).tolist() == expected, key
    assert np.isfinite(history.calibration["nll_crossfit_splits"][lowest]).all()


def test_a_block_is_in_the_event_file_when_it_is_logged(tmp_path: Path) -> None:
    """The writer is flushed after each block: TensorBoard shows it at once, and the writer thread does not
    checksum the block's events beside the next epochs' training."""
    seen: dict[int, tuple[int, list[int]]] = {}
    flushes: list[int] = []

    class ReadEvents(L.Callback):  # runs after LossDiagnosis's epoch end, which logs every third epoch
        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            writer = trainer.logger.experiment
            flush = writer.flush
            writer.flush = lambda: (flushes.append(trainer.current_epoch), flush())[1]

        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            events = read_events(tmp_path)
            tags = events.Tags()["histograms"]
            seen[trainer.current_epoch] = (
                len(flushes), [h.step for h in events.Histograms("val/loss_per_sample")] if tags else []
            )

    class Quiet(MLP):  # no self.log: Lightning itself would flush the loggers after every logged value
        def validation_step(self, batch, batch_idx: int) -> None:
            self(batch[0])

    options = {"flush_every_n_epochs": 3, "flush_every_s": 1e9, "figures_every_n_epochs": 0}
    torch.manual_seed(0)
    L.Trainer(
        max_epochs=4, logger=TensorBoardLogger(tmp_path, name="", version=""), enable_checkpointing=False,
        callbacks=[LossDiagnosis(tmp_path / "diagnosis", **options), ReadEvents()], **QUIET,
    ).fit(Quiet(), *small_loaders())  # fmt: skip
    assert seen[1] == (0, [])  # not evaluated yet
    assert seen[2] == (1, [0, 1, 2])  # evaluated, logged, flushed
    assert flushes[:2] == [2, 4]  # and the last block when training ends (the epoch counter has moved on)


def test_each_epoch_is_one_tensorboard_event_even_with_the_stock_logger(tmp_path: Path) -> None:
    """Lightning's TensorBoardLogger writes one event per scalar; the diagnosis writes each epoch's scalars and
    histograms as one event (TensorBoard reads its values like separate ones)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    epochs = 3
    fit(tmp_path, MLP(), epochs, {"figures_every_n_epochs": 0})
    (path,) = tmp_path.glob("events.out.tfevents.*")
    diagnosis_events = [
        (event.step, {v.tag for v in event.summary.value})
        for event in EventFileLoader(str(path)).Load()
        if any(v.tag == "val/ece" for v in event.summary.value)
    ]
    assert [step for step, _ in diagnosis_events] == list(range(epochs))
    for _, tags in diagnosis_events:
        assert {"val/ece", "val/temperature", "val/loss_p99", "val/loss_per_sample"} <= tags
    events = read_events(tmp_path)
    assert [s.step for s in events.Scalars("val/loss_from_wrong")] == list(range(epochs))


def test_pending_logits_over_the_memory_cap_are_evaluated_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lossdiag.diagnosis import record

    logged: list[int] = []

    class Watch(L.Callback):  # after LossDiagnosis's epoch end
        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            logged.append(diagnosis.recorder.logged_through)

    held_per_epoch = 60 * 3 * 4  # val logits, float32 (its training_step returns no logits: no train records)
    monkeypatch.setattr(record, "MAX_PENDING_BYTES", 2 * held_per_epoch)
    diagnosis = LossDiagnosis(tmp_path, flush_every_n_epochs=100, flush_every_s=1e9, figures_every_n_epochs=0)
    torch.manual_seed(0)
    L.Trainer(
        max_epochs=5, logger=False, enable_checkpointing=False, callbacks=[diagnosis, Watch()], **QUIET
    ).fit(MLP(), *small_loaders())
    assert logged == [-1, 1, 1, 3, 3]  # every second epoch: two epochs' logits reach the cap


def test_a_forward_that_returns_no_logits_is_one_line(tmp_path: Path) -> None:
    class Images(MLP):  # forward returns (N, C, 1): not logits
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)[:, :, None]

        def training_step(self, batch, batch_idx: int) -> torch.Tensor:
            return F.cross_entropy(self(batch[0])[:, :, 0], batch[1])

        def validation_step(self, batch, batch_idx: int) -> None:
            self(batch[0])

    with pytest.raises(
        UserError, match=r"logits of shape \(batch, classes\) from Images.forward\(x\), got a tensor of shape \(\d+, 3, 1\)"
    ):
        fit(tmp_path, Images(), epochs=1)


def test_batches_that_are_not_pairs_are_one_line(tmp_path: Path) -> None:
    class Dicts(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"x": torch.zeros(16), "y": torch.tensor(0)}

    class DictMLP(MLP):
        def validation_step(self, batch, batch_idx: int) -> None:
            self(batch["x"])

    with pytest.raises(
        UserError, match=r"got a dict with keys 'x', 'y': .*\(batch_fn=lambda batch: \(batch\['x'\], batch\['y'\]\)\)$"
    ):
        fit(tmp_path, DictMLP(), epochs=1, val=DataLoader(Dicts(), batch_size=4))


def test_epochs_not_yet_logged_travel_in_the_checkpoint(tmp_path: Path) -> None:
    """Resumed (twice) from checkpoints taken before the diagnosis logged its latest epochs, a run still logs and
    records every epoch."""
    import shutil

    from lightning.pytorch.callbacks import ModelCheckpoint

    def fit_run(run: Path, flush_every: int, ckpt_path: Path | None = None, diagnosis_from: Path | None = None) -> None:
        if diagnosis_from is not None:  # what the interrupted attempt left in its folder
            shutil.copytree(diagnosis_from, run / "diagnosis")
        options = {"flush_every_n_epochs": flush_every, "flush_every_s": 1e9, "figures_every_n_epochs": 0}
        every = ModelCheckpoint(dirpath=run / "ckpt", filename="{epoch}", save_top_k=-1, every_n_epochs=1)
        torch.manual_seed(0)
        L.Trainer(
            max_epochs=6, callbacks=[LossDiagnosis(run / "diagnosis", **options), every],
            logger=TensorBoardLogger(run, name="", version=""), **QUIET,
        ).fit(MLP(), *small_loaders(), ckpt_path=ckpt_path)  # fmt: skip

    def state(ckpt: Path) -> dict:
        callbacks = torch.load(ckpt, weights_only=False)["callbacks"]
        return next(v for k, v in callbacks.items() if k.startswith("LossDiagnosis"))

    clean, once, twice = tmp_path / "clean", tmp_path / "once", tmp_path / "twice"
    fit_run(clean, 2)  # logs after epochs 1, 3 and 5
    assert state(clean / "ckpt" / "epoch=2.ckpt")["logged_through"] == 1
    assert state(clean / "ckpt" / "epoch=2.ckpt")["pending"]["val"]["epochs"] == [2]
    fit_run(once, 10, clean / "ckpt" / "epoch=2.ckpt", clean / "diagnosis")  # logs only at the end
    # saved before this run logged anything: it still holds what the first attempt had not logged
    assert state(once / "ckpt" / "epoch=3.ckpt")["logged_through"] == 1
    assert state(once / "ckpt" / "epoch=3.ckpt")["pending"]["val"]["epochs"] == [2, 3]
    fit_run(twice, 10, once / "ckpt" / "epoch=3.ckpt", once / "diagnosis")
    want = load_samples(clean / "diagnosis")
    for run in (once, twice):
        got = load_samples(run / "diagnosis")
        assert got.epochs == want.epochs == list(range(6)), run.name
        np.testing.assert_allclose(got.history.loss, want.history.loss, rtol=1e-5, atol=1e-6, err_msg=run.name)
        for key in ("nll_crossfit", "ece_crossfit"):  # the same epochs cross-fitted as in the uninterrupted run
            np.testing.assert_allclose(got.history.calibration[key], want.history.calibration[key], rtol=1e-5,
                                       equal_nan=True, err_msg=f"{run.name} {key}")  # fmt: skip
    events = read_events(once)
    assert sorted({s.step for s in events.Scalars("val/ece")}) == list(range(2, 6))  # epoch 2 from the checkpoint
    assert sorted({h.step for h in events.Histograms("val/loss_per_sample")}) == list(range(2, 6))
