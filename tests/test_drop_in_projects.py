"""The drop-in in projects shaped like real ones (issue 22): a torchvision ``ImageFolder`` with a ``Normalize``
transform behind a ``Subset``, and lightning-hydra-template's MNIST module (``MNISTLitModule`` + ``SimpleDenseNet``,
written here as the template has them) on random 28x28 data, in process and as ``python -m src.train`` of a foreign
Hydra project whose val loader shuffles.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import ModuleType

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Subset

from lossdiag.callbacks import LossDiagnosis
from lossdiag.diagnosis.samples import load_samples
from tests.conftest import run_module, write_tree
from tests.test_drop_in import QUIET

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class TinyCNN(L.LightningModule):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                 nn.Linear(32, classes))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx: int) -> None:
        self(batch[0])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


COLOURS = {"cats": (170, 60, 110), "dogs": (110, 170, 60), "pandas": (60, 110, 170)}


def write_narrow_folder(root: Path, per_class: int = 20) -> None:
    """12x12 PNGs whose channels stay in a narrow band around their class colour: shown per-channel min-max
    scaled, or clipped after ``Normalize``, their colours would visibly change."""
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.asarray(colour) + rng.normal(0, 8, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")


@pytest.fixture(scope="module")
def image_folder_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Subset]:
    """A generated RGB folder read by ``ImageFolder`` (``ToTensor`` + ``Normalize``), split by ``Subset``s."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    tmp = tmp_path_factory.mktemp("image_folder")
    write_narrow_folder(tmp / "data")
    folder = ImageFolder(tmp / "data", transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)]))
    order = torch.randperm(len(folder), generator=torch.Generator().manual_seed(0)).tolist()
    train, val = Subset(folder, order[:36]), Subset(folder, order[36:])
    torch.manual_seed(0)
    L.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        **QUIET,
        callbacks=[LossDiagnosis(tmp / "diagnosis", figures_every_n_epochs=0)],
    ).fit(TinyCNN(), DataLoader(train, batch_size=12, shuffle=True), DataLoader(val, batch_size=12))
    return tmp / "diagnosis", val


def test_image_folder_class_names_and_files_through_a_subset(image_folder_run: tuple[Path, Subset]) -> None:
    out, val = image_folder_run
    samples = load_samples(out)
    assert samples.classes == ["cats", "dogs", "pandas"]
    files = [val.dataset.samples[i][0] for i in val.indices]
    assert samples.val.path.tolist() == files
    worst = (out / "worst.csv").read_text().splitlines()[1].split(",")
    assert worst[2] in files and worst[3] in {"cats", "dogs", "pandas"}  # the file and the class by name


def tile_colour(png: Path) -> np.ndarray:
    """The mean RGB of the figure's coloured pixels: its tiles (the background is white, the text grey)."""
    pixels = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3).astype(np.float64)
    return pixels[np.ptp(pixels, axis=1) > 30].mean(0)


def test_normalised_images_are_shown_un_normalised(image_folder_run: tuple[Path, Subset]) -> None:
    """The worst-samples grid shows the files' own colours: its tiles' mean colour is that of the 9 worst images'
    files (every tile the same size). Clipped to [0, 1] after ``Normalize`` it is ~55 levels darker; min-max
    scaled per channel, 12-15 levels off."""
    from lossdiag.render.figures import display_images

    out, val = image_folder_run
    files = [line.split(",")[2] for line in (out / "worst.csv").read_text().splitlines()[1:10]]
    want = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]).reshape(-1, 3).mean(0)
    np.testing.assert_allclose(tile_colour(out / "figures" / "worst_samples.png"), want, atol=1.0)
    x = torch.stack([val[i][0] for i in range(4)])
    shown, note = display_images(x, (list(MEAN), list(STD)))
    raw = x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    torch.testing.assert_close(shown, raw.clamp(0, 1))
    assert note == "un-normalised with the data's mean/std"
    scaled, note = display_images(x)  # without the mean/std: each channel min-max over the images
    assert note.startswith("each channel min-max") and scaled.amin() == 0 and scaled.amax() == 1
    assert display_images(raw.clamp(0, 1))[1] == ""  # already in [0, 1]: shown as it is


# -- lightning-hydra-template's MNIST module ------------------------------------------------------------------
TEMPLATE_MODULE = """
import torch
from lightning import LightningModule
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification.accuracy import Accuracy


class SimpleDenseNet(nn.Module):
    def __init__(self, input_size=784, lin1_size=64, lin2_size=64, lin3_size=64, output_size=10):
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(input_size, lin1_size), nn.BatchNorm1d(lin1_size), nn.ReLU(),
            nn.Linear(lin1_size, lin2_size), nn.BatchNorm1d(lin2_size), nn.ReLU(),
            nn.Linear(lin2_size, lin3_size), nn.BatchNorm1d(lin3_size), nn.ReLU(),
            nn.Linear(lin3_size, output_size),
        )

    def forward(self, x):
        batch_size, channels, width, height = x.size()
        return self.model(x.view(batch_size, -1))


class MNISTLitModule(LightningModule):
    def __init__(self, net, optimizer, scheduler=None, compile=False):
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["net"])
        self.net = net
        self.criterion = torch.nn.CrossEntropyLoss()
        self.train_acc = Accuracy(task="multiclass", num_classes=10, average="micro")
        self.val_acc = Accuracy(task="multiclass", num_classes=10, average="micro")
        self.train_loss, self.val_loss = MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()

    def forward(self, x):
        return self.net(x)

    def on_train_start(self):
        self.val_loss.reset(); self.val_acc.reset(); self.val_acc_best.reset()

    def model_step(self, batch):
        x, y = batch
        logits = self.forward(x)
        return self.criterion(logits, y), torch.argmax(logits, dim=1), y

    def training_step(self, batch, batch_idx):
        loss, preds, targets = self.model_step(batch)
        self.train_loss(loss); self.train_acc(preds, targets)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, preds, targets = self.model_step(batch)
        self.val_loss(loss); self.val_acc(preds, targets)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self):
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def configure_optimizers(self):
        return {"optimizer": self.hparams.optimizer(params=self.trainer.model.parameters())}
"""

TEMPLATE_DATA = '''
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset


def digits(n, seed):
    """Random 28x28 "digits": each class a brighter stripe of rows, plus noise."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    x = torch.rand(n, 1, 28, 28, generator=gen)
    for c in range(10):
        x[y == c, :, 2 * c : 2 * c + 4] += 1.0
    return TensorDataset(x, y)


class RandomMNISTDataModule(LightningDataModule):
    def __init__(self, shuffle_val=False, batch_size=25):
        super().__init__()
        self.shuffle_val, self.batch_size = shuffle_val, batch_size

    def train_dataloader(self):
        return DataLoader(digits(200, 0), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(digits(100, 1), batch_size=self.batch_size, shuffle=self.shuffle_val)
'''

TEMPLATE_TRAIN = """
import hydra
import lightning as L
from hydra.utils import instantiate


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg):
    L.seed_everything(0)
    trainer = instantiate(cfg.trainer, callbacks=[instantiate(c) for c in cfg.callbacks.values()])
    trainer.fit(instantiate(cfg.model), datamodule=instantiate(cfg.data))


if __name__ == "__main__":
    main()
"""

TEMPLATE_CONFIG = """
model:
  _target_: src.models.mnist_module.MNISTLitModule
  net:
    _target_: src.models.mnist_module.SimpleDenseNet
  optimizer:
    _target_: torch.optim.Adam
    _partial_: true
    lr: 0.001
data:
  _target_: src.data.random_mnist.RandomMNISTDataModule
  shuffle_val: true
trainer:
  _target_: lightning.Trainer
  max_epochs: 3
  accelerator: cpu
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
callbacks:
  diagnosis:
    _target_: lossdiag.callbacks.LossDiagnosis
    output_dir: ${hydra:runtime.output_dir}/diagnosis
hydra:
  run:
    dir: run
"""


def write_template_project(root: Path) -> None:
    files = {
        "src/__init__.py": "",
        "src/models/__init__.py": "",
        "src/models/mnist_module.py": TEMPLATE_MODULE,
        "src/data/__init__.py": "",
        "src/data/random_mnist.py": TEMPLATE_DATA,
        "src/train.py": TEMPLATE_TRAIN,
        "configs/train.yaml": TEMPLATE_CONFIG,
    }
    write_tree(root, files)


def load_file(path: Path) -> ModuleType:
    """The module in ``path``, imported by file (the project's ``src`` package would clash with ours)."""
    spec = importlib.util.spec_from_file_location(f"template_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_template_module_in_order_gets_its_own_val_loss(tmp_path: Path) -> None:
    """Same numbers as the module logs: the template's val/loss is a mean of equal-size batch means."""
    write_template_project(tmp_path / "project")
    modules = load_file(tmp_path / "project" / "src" / "models" / "mnist_module.py")
    data = load_file(tmp_path / "project" / "src" / "data" / "random_mnist.py")
    torch.manual_seed(0)
    model = modules.MNISTLitModule(modules.SimpleDenseNet(), functools.partial(torch.optim.Adam, lr=1e-3))
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, **QUIET,
                        callbacks=[LossDiagnosis(tmp_path / "diagnosis", figures_every_n_epochs=0)])  # fmt: skip
    trainer.fit(model, datamodule=data.RandomMNISTDataModule())
    samples = load_samples(tmp_path / "diagnosis")
    assert samples.history.loss.shape == (3, 100)
    assert samples.history.loss[-1].mean() == pytest.approx(
        float(trainer.callback_metrics["val/loss"]), rel=1e-4
    )
    acc = (samples.history.pred[-1] == samples.val.target).mean()
    assert acc == pytest.approx(float(trainer.callback_metrics["val/acc"]), abs=1e-6)


@pytest.mark.slow
def test_the_template_project_with_a_shuffled_val_loader_stops_with_one_line(tmp_path: Path) -> None:
    project = tmp_path / "project"
    write_template_project(project)
    proc = run_module("src.train", cwd=project)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    lines = [line for line in output.splitlines() if "shuffle=False" in line]
    assert len(lines) == 1, output[-3000:]
    assert "UserError: LossDiagnosis: the val loader gave its samples in another order in epoch 0" in lines[0]
    assert sum("no TensorBoard logger" in line for line in output.splitlines()) == 1  # logger: false
    assert not (project / "run" / "diagnosis" / "diagnosis.md").exists()
