"""The drop-in inside a project shaped like lightning-hydra-template: its own top-level ``src`` package
(``src/models/...``, ``src/train.py``), Hydra instantiating ``lossdiag.callbacks.LossDiagnosis`` from its own
config, trained under ``ddp_spawn`` with two CPU processes, run as ``python -m src.train`` from that folder.

Before the package was ``lossdiag``, the project's ``src`` shadowed ours and the import failed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_spawned, write_tree

MODEL = '''
import lightning as L
import torch
import torch.nn.functional as F
from torch import nn


class BlobNet(L.LightningModule):
    """A module that knows nothing about lossdiag; its batches carry the sample index (needed under DDP)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y, _ = batch
        return {"logits": self(x)}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.3)
'''

DATA = '''
import torch
from torch.utils.data import DataLoader, Dataset


class Blobs(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % 3
        self.x = torch.randn(n, 8, generator=gen) + 2.0 * torch.nn.functional.one_hot(self.y, 8).float()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


def loaders():
    return DataLoader(Blobs(64, 0), batch_size=16), DataLoader(Blobs(45, 1), batch_size=16)
'''

TRAIN = '''
import hydra
import lightning as L
from hydra.utils import instantiate

from src.data.blobs import loaders
from src.models.blob_net import BlobNet


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg):
    L.seed_everything(0)
    trainer = L.Trainer(callbacks=[instantiate(c) for c in cfg.callbacks.values()], **cfg.trainer)
    trainer.fit(BlobNet(), *loaders())


if __name__ == "__main__":
    main()
'''

CONFIG = '''
trainer:
  max_epochs: 3
  accelerator: cpu
  devices: 2
  strategy: ddp_spawn
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
'''


def write_project(root: Path) -> None:
    files = {
        "src/__init__.py": "",
        "src/models/__init__.py": "",
        "src/models/blob_net.py": MODEL,
        "src/data/__init__.py": "",
        "src/data/blobs.py": DATA,
        "src/train.py": TRAIN,
        "configs/train.yaml": CONFIG,
    }
    write_tree(root, files)


@pytest.mark.slow
def test_callback_from_hydra_in_a_project_with_its_own_src_package_under_ddp_spawn(tmp_path: Path) -> None:
    project = tmp_path / "project"
    write_project(project)
    proc = run_spawned("src.train", cwd=project, output=project / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = project / "run" / "diagnosis"
    numbers = json.loads((out / "diagnosis.json").read_text())
    assert numbers["n_samples"] == 45  # every val sample once, the padded repeat of DistributedSampler dropped
    assert numbers["n_epochs"] == 3
    assert (out / "diagnosis.md").is_file() and (out / "samples.npz").is_file()
