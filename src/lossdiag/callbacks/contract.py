"""What a foreign Lightning project gives the diagnosis: its batches and outputs (checked with one line), and
what its datamodule and module tell about the data (class names, file paths, the objective).

Batches are ``(x, y)`` or ``(x, y, index)`` of tensors; logits ``(batch, classes)`` come from ``outputs["logits"]``
of the step, else from the module's ``forward(x)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch

from lossdiag.diagnosis.samples import SplitInfo
from lossdiag.errors import UserError
from lossdiag.models.recorder import SampleRecords

Unpacked = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def unpack(batch: Any, stage: str, world_size: int = 1) -> Unpacked:
    """``(x, y, index or None)`` of a batch; a one-line error names what is wrong and how to fix it."""
    if (
        not isinstance(batch, list | tuple)
        or len(batch) not in (2, 3)
        or not all(map(torch.is_tensor, batch))
    ):
        raise UserError(
            f"LossDiagnosis needs {stage} batches (x, y) or (x, y, index) of tensors, got {type(batch).__name__}"
            + (f" of {len(batch)}" if isinstance(batch, list | tuple) else "")
            + ": make the dataset return (input, label) pairs"
        )
    x, y = batch[0], batch[1]
    index = batch[2] if len(batch) == 3 else None
    if index is None and world_size > 1 and stage == "val":
        raise UserError(
            "LossDiagnosis under DDP needs val batches (x, y, index): padded repeats can only be dropped by index"
        )
    return x, y, index


def step_logits(outputs: Any) -> torch.Tensor | None:
    """``outputs["logits"]`` of a training/validation step, when it returned them."""
    return outputs.get("logits") if isinstance(outputs, Mapping) else None


def checked_logits(logits: Any, n: int, owner: str) -> torch.Tensor:
    """``logits`` detached, or a one-line error when they are not ``(n, classes)``."""
    if not torch.is_tensor(logits) or logits.ndim != 2 or len(logits) != n:
        raise UserError(
            f"LossDiagnosis needs {owner}.forward(x) to return logits of shape (batch, classes), "
            f"got {tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__}"
        )
    return logits.detach()


def class_names(trainer: L.Trainer, rec: SampleRecords) -> list[str]:
    names = getattr(getattr(trainer, "datamodule", None), "class_names", None)
    n_classes = rec.logits.shape[1]
    if names is not None and len(names) == n_classes:
        return [str(n) for n in names]
    return [str(c) for c in range(n_classes)]


def objective(pl_module: L.LightningModule) -> str:
    """The training loss's name, when the module saved it as hyperparameter ``loss`` (else ``""``)."""
    name = getattr(pl_module, "hparams", {}).get("loss", "")
    return name if isinstance(name, str) else ""


def split_info(trainer: L.Trainer, rec: SampleRecords, stage: str) -> SplitInfo:
    paths = getattr(getattr(trainer, "datamodule", None), f"{stage}_paths", None)
    index = rec.index.cpu().numpy()
    if paths is not None and len(paths) <= int(index.max(initial=-1)):
        paths = None  # paths that do not cover every index name nothing
    return SplitInfo.create(index, rec.target.cpu().numpy(), list(paths) if paths else None)
