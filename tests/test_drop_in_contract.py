"""The drop-in's contract with real LightningModules (issue 22): each way a foreign project differs from the plain
``(x, y)`` + ``forward(x) -> logits`` shape either works, with the right numbers, or stops with one line.

Every test fits a module written here (it knows nothing about lossdiag) on a few dozen samples for a few epochs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lossdiag.callbacks import LossDiagnosis
from lossdiag.diagnosis.samples import load_samples
from lossdiag.errors import UserError
from tests.conftest import read_events
from tests.test_drop_in import MLP, QUIET, blobs


def run(
    tmp_path: Path,
    model: L.LightningModule,
    train: DataLoader,
    val: DataLoader,
    epochs: int = 3,
    logger: Any = None,
    **options: Any,
) -> Path:
    """Fit ``model`` with ``LossDiagnosis(**options)``; the diagnosis folder. ``logger=None``: a TensorBoardLogger."""
    torch.manual_seed(0)
    out = tmp_path / "diagnosis"
    L.Trainer(
        max_epochs=epochs,
        logger=TensorBoardLogger(tmp_path, name="", version="") if logger is None else logger,
        callbacks=[LossDiagnosis(out, **{"figures_every_n_epochs": 0, **options})],
        enable_checkpointing=False,
        **QUIET,
    ).fit(model, train, val)
    return out


def val_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


# -- the val order ------------------------------------------------------------------------------------------
class Indexed(Dataset):
    """``blobs`` with the sample index as the third item."""

    def __init__(self, data: TensorDataset) -> None:
        self.x, self.y = data.tensors

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.x[i], self.y[i], i


class IndexedMLP(MLP):
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx: int) -> None:
        self(batch[0])


def test_a_shuffled_val_loader_stops_at_the_first_epoch_with_one_line(tmp_path: Path) -> None:
    train = DataLoader(blobs(96, 0), batch_size=32, shuffle=True)
    val = DataLoader(blobs(60, 1), batch_size=16, shuffle=True)
    with pytest.raises(UserError) as err:
        run(tmp_path, MLP(), train, val, epochs=5)
    message = str(err.value)
    assert "\n" not in message
    assert "in another order in epoch 0" in message and "DataLoader(val_set, shuffle=False)" in message
    assert not (tmp_path / "diagnosis" / "diagnosis.json").exists()  # no wrong answer written


def test_a_shuffled_val_loader_with_an_index_gives_the_numbers_of_an_ordered_one(tmp_path: Path) -> None:
    train = DataLoader(Indexed(blobs(96, 0)), batch_size=32)
    runs = {}
    for shuffle in (False, True):
        val = DataLoader(Indexed(blobs(60, 1)), batch_size=16, shuffle=shuffle)
        torch.manual_seed(0)  # the same initial weights
        runs[shuffle] = load_samples(run(tmp_path / str(shuffle), IndexedMLP(), train, val))
    np.testing.assert_array_equal(runs[True].val.index, np.arange(60))
    np.testing.assert_array_equal(runs[True].val.target, runs[False].val.target)
    np.testing.assert_allclose(runs[True].history.loss, runs[False].history.loss, rtol=1e-5, atol=1e-6)


# -- where the logits come from -------------------------------------------------------------------------------
class HFOutput:
    """What a Hugging Face model returns: an object with ``.logits`` (and more)."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits, self.hidden_states = logits, None


class RichForward(MLP):
    """``forward`` returns more than logits; ``validation_step`` returns ``{"logits": z}`` (the documented way)."""

    def __init__(self, shape: str) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> Any:
        z = self.net(x)
        return {"tuple": (z, x), "dict": {"logits": z, "features": x}, "object": HFOutput(z)}[self.shape]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self.logits(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return {"logits": self.logits(batch[0])}


@pytest.mark.parametrize("shape", ["tuple", "dict", "object"])
def test_forward_returning_a_tuple_a_dict_or_an_object_with_logits(tmp_path: Path, shape: str) -> None:
    model = RichForward(shape)
    val = blobs(60, 1)
    out = run(
        tmp_path, model, DataLoader(blobs(96, 0), batch_size=32), DataLoader(val, batch_size=16), epochs=2
    )
    samples = load_samples(out)
    assert set(samples.models) == {"initial", "last"}
    expected = F.cross_entropy(val_logits(model.net, val.tensors[0]), val.tensors[1], reduction="none")
    np.testing.assert_allclose(samples.models["last"]["val"].loss, expected.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(samples.history.loss[-1], expected.numpy(), rtol=1e-4, atol=1e-6)


class DictBatches(Dataset):
    def __init__(self, data: TensorDataset) -> None:
        self.x, self.y = data.tensors

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"features": self.x[i], "mask": torch.ones(16), "label": self.y[i]}


class TwoInputs(MLP):
    """``forward(features, mask)``: the callback cannot call it with one ``x``; it never tries when given a hook."""

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(features * mask)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch["features"], batch["mask"]), batch["label"])

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch["features"], batch["mask"]), batch["label"]))


class TwoInputsWithHooks(TwoInputs):
    """The same, with the hooks as module methods instead of callables."""

    def lossdiag_batch(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return batch, batch["label"]

    def lossdiag_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self(batch["features"], batch["mask"])


@pytest.mark.parametrize("hooks", ["callables", "methods"])
def test_dict_batches_and_a_two_input_forward_through_the_hooks(tmp_path: Path, hooks: str) -> None:
    options = {
        "callables": {
            "batch_fn": lambda batch: (batch, batch["label"]),
            "logits_fn": lambda module, batch: module(batch["features"], batch["mask"]),
        },
        "methods": {},
    }[hooks]
    model = TwoInputs() if hooks == "callables" else TwoInputsWithHooks()
    val = blobs(60, 1)
    train = DataLoader(DictBatches(blobs(96, 0)), batch_size=32)
    out = run(tmp_path, model, train, DataLoader(DictBatches(val), batch_size=16), epochs=2, **options)
    samples = load_samples(out)
    expected = F.cross_entropy(val_logits(model.net, val.tensors[0]), val.tensors[1], reduction="none")
    np.testing.assert_allclose(samples.models["last"]["val"].loss, expected.numpy(), rtol=1e-4, atol=1e-6)
    assert samples.models["initial"]["val"].loss.mean() == pytest.approx(
        np.log(3), abs=0.3
    )  # the untrained pass


def test_dict_batches_without_a_hook_are_one_line_that_names_the_keys(tmp_path: Path) -> None:
    train = DataLoader(DictBatches(blobs(32, 0)), batch_size=32)
    with pytest.raises(
        UserError, match=r"batch_fn=lambda batch: \(batch\['features'\], batch\['label'\]\)\)$"
    ):
        run(tmp_path, TwoInputs(), train, DataLoader(DictBatches(blobs(16, 1)), batch_size=16), epochs=1,
            logits_fn=lambda module, x: module(x, torch.ones_like(x)))  # fmt: skip


# -- targets -------------------------------------------------------------------------------------------------
class Binary(L.LightningModule):
    """One logit per sample and float 0/1 targets, trained with BCE-with-logits."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return {"logits": self(batch[0])}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def binary_blobs(n: int, seed: int) -> TensorDataset:
    x, y = blobs(n, seed, flip=0.05).tensors
    return TensorDataset(x, (y == 0).float())


def test_a_binary_single_logit_model_is_diagnosed_as_two_classes(tmp_path: Path) -> None:
    model, val = Binary(), binary_blobs(60, 1)
    out = run(tmp_path, model, DataLoader(binary_blobs(96, 0), batch_size=32), DataLoader(val, batch_size=16))
    samples = load_samples(out)
    assert samples.classes == ["0", "1"]
    np.testing.assert_array_equal(samples.val.target, val.tensors[1].long().numpy())
    z = val_logits(model, val.tensors[0])
    bce = F.binary_cross_entropy_with_logits(z, val.tensors[1], reduction="none")  # the module's own loss
    np.testing.assert_allclose(samples.models["last"]["val"].loss, bce.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(samples.models["last"]["val"].p_true[val.tensors[1] == 1],
                               torch.sigmoid(z)[val.tensors[1] == 1].numpy(), rtol=1e-5)  # fmt: skip


class TargetsAs(MLP):
    """Targets given as rows (one-hot or soft) of width 3, trained with cross_entropy on probabilities."""

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return {"logits": self(batch[0])}


def rows(n: int, seed: int, soft: bool) -> TensorDataset:
    x, y = blobs(n, seed).tensors
    target = F.one_hot(y, 3).float()
    return TensorDataset(x, 0.8 * target + 0.2 / 3 if soft else target)


def test_one_hot_targets_are_class_indices(tmp_path: Path) -> None:
    val = rows(60, 1, soft=False)
    out = run(
        tmp_path, TargetsAs(), DataLoader(rows(96, 0, False), batch_size=32), DataLoader(val, batch_size=16)
    )
    samples = load_samples(out)
    np.testing.assert_array_equal(samples.val.target, val.tensors[1].argmax(1).numpy())
    assert json.loads((out / "diagnosis.json").read_text())["n_samples"] == 60


def test_soft_targets_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(
        UserError, match=r"one class per val sample, got rows of shape \(batch, 3\) that are not one-hot"
    ):
        run(tmp_path, TargetsAs(), DataLoader(rows(32, 0, True), batch_size=32),
            DataLoader(rows(16, 1, True), batch_size=16), epochs=1)  # fmt: skip


def test_labels_out_of_range_for_the_logits_are_one_line(tmp_path: Path) -> None:
    x, y = blobs(32, 1).tensors
    val = TensorDataset(x, torch.where(torch.arange(32) == 5, 3, y))  # label 3 for a 3-logit model
    with pytest.raises(UserError, match=r"val label 3 is out of range for 3 logits \(classes 0..2\)"):
        run(
            tmp_path,
            IndexedMLP(),
            DataLoader(blobs(32, 0), batch_size=32),
            DataLoader(val, batch_size=16),
            epochs=1,
        )


# -- no logger: a warning, and diagnosis.md names only what exists ---------------------------------------------
class Recorded(MLP):
    """Indexed train batches and training_step logits: train records, training dynamics, suspects."""

    def training_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        logits = self(batch[0])
        return {"loss": F.cross_entropy(logits, batch[1]), "logits": logits}

    def validation_step(self, batch, batch_idx: int) -> None:
        self(batch[0])


def test_without_a_logger_a_warning_and_no_tensorboard_in_the_diagnosis(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train = DataLoader(Indexed(blobs(96, 0)), batch_size=32, shuffle=True)
    with caplog.at_level(logging.WARNING, logger="lossdiag"):
        out = run(tmp_path, Recorded(), train, DataLoader(Indexed(blobs(60, 1)), batch_size=16), logger=False)
    warnings = [r.getMessage() for r in caplog.records if "no TensorBoard logger" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0] and "TensorBoardLogger(save_dir=" in warnings[0]
    markdown = (out / "diagnosis.md").read_text()
    assert "TensorBoard" not in markdown
    assert "## Possibly mislabeled" in markdown and "`figures/data_map.png`" in markdown  # written: named
    assert (out / "figures" / "data_map.png").is_file()


def test_diagnosis_names_only_the_tensorboard_outputs_and_figures_written(tmp_path: Path) -> None:
    out = run(tmp_path, MLP(), DataLoader(blobs(96, 0), batch_size=32), DataLoader(blobs(60, 1), batch_size=16),
              histograms=False)  # fmt: skip
    markdown = (out / "diagnosis.md").read_text()
    line = next(line for line in markdown.splitlines() if line.startswith("- TensorBoard"))
    assert "`val/ece`" in line and "histograms" not in line and "val/worst_samples" not in line
    assert "val/reliability" not in line  # figures_every_n_epochs=0
    tags = read_events(tmp_path).Tags()
    assert "val/ece" in tags["scalars"] and not tags["histograms"]
    assert not {"val/worst_samples", "val/reliability"} & set(tags["images"])
    assert "data_map" not in markdown and "suspects/train" not in markdown  # no train records: neither exists
    assert not (out / "figures" / "data_map.png").exists()


def test_limited_val_batches_are_the_same_samples_in_every_pass(tmp_path: Path) -> None:
    """With ``limit_val_batches`` the untrained pass and the end-of-fit evaluations read the batches the epochs
    read (else the order check would see other samples, and the models other sample counts)."""
    torch.manual_seed(0)
    out = tmp_path / "diagnosis"
    L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, limit_val_batches=2,
              callbacks=[LossDiagnosis(out, figures_every_n_epochs=0)], **QUIET).fit(
        MLP(), DataLoader(blobs(96, 0), batch_size=32), DataLoader(blobs(60, 1), batch_size=16))  # fmt: skip
    samples = load_samples(out)
    assert samples.history.loss.shape == (2, 32)
    assert len(samples.models["initial"]["val"].loss) == len(samples.models["last"]["val"].loss) == 32


def test_a_resumed_run_checks_the_val_order_of_the_first_attempt(tmp_path: Path) -> None:
    """The first pass's labels travel in the checkpoint: a resumed run whose val loader gives another order stops."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    x, y = blobs(60, 1).tensors
    train = DataLoader(blobs(96, 0), batch_size=32)

    def fit(epochs: int, val: TensorDataset, ckpt_path: Path | None = None) -> None:
        every = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1)
        L.Trainer(max_epochs=epochs, logger=False, callbacks=[LossDiagnosis(tmp_path / "diagnosis"), every],
                  **QUIET).fit(IndexedMLP(), train, DataLoader(val, batch_size=16), ckpt_path=ckpt_path)  # fmt: skip

    fit(2, TensorDataset(x, y))
    reordered = torch.randperm(60, generator=torch.Generator().manual_seed(1))
    with pytest.raises(UserError, match="in another order in epoch 2 than before"):
        fit(3, TensorDataset(x[reordered], y[reordered]), tmp_path / "ckpt" / "epoch=1.ckpt")
