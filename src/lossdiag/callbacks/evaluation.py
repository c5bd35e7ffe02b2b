"""End of fit: a module's per-sample outputs on whole loaders, and the inputs of chosen samples (for figures)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import move_data_to_device

from lossdiag.callbacks.contract import checked_logits, unpack
from lossdiag.models.predict import predict_records
from lossdiag.models.recorder import SampleRecorder, SampleRecords


def first_loader(loader: Any) -> Any:
    """The (first) loader of ``trainer.val_dataloaders`` / ``train_dataloader``, or ``None``."""
    if isinstance(loader, list | tuple):
        return loader[0] if loader else None
    return loader


def evaluate_loader(
    trainer: L.Trainer, pl_module: L.LightningModule, loader: Any, stage: str
) -> SampleRecords | None:
    """``pl_module``'s outputs on every batch of ``loader`` (gathered over ranks); ``None`` for a train loader
    without an index (a shuffled order cannot be told apart)."""
    loader = first_loader(loader)
    if loader is None:
        return None
    batches = (unpack(move_data_to_device(b, pl_module.device), stage, trainer.world_size) for b in loader)
    owner = type(pl_module).__name__
    was_training = pl_module.training
    pl_module.eval()
    try:
        return predict_records(
            lambda x, n: checked_logits(pl_module(x), n, owner),
            batches,
            SampleRecorder().to(pl_module.device),
            require_index=stage == "train",
        )
    finally:
        pl_module.train(was_training)  # also after an error


def evaluate_models(
    trainer: L.Trainer, pl_module: L.LightningModule, states: dict[str, tuple[int, dict[str, torch.Tensor]]]
) -> dict[str, tuple[int, dict[str, SampleRecords]]]:
    """Each of ``states`` (``{name: (epoch, state_dict)}``) loaded into ``pl_module`` in turn and evaluated on the
    val and train loaders: ``{name: (epoch, {split: records})}``. The last state is loaded back at the end,
    whatever happens."""
    models: dict[str, tuple[int, dict[str, SampleRecords]]] = {}
    loaders = {"val": trainer.val_dataloaders, "train": trainer.train_dataloader}
    try:
        for name, (epoch, state) in states.items():
            pl_module.load_state_dict(state)
            records = {s: evaluate_loader(trainer, pl_module, loaders[s], s) for s in loaders}
            models[name] = (epoch, {s: r for s, r in records.items() if r is not None})
    finally:
        pl_module.load_state_dict(list(states.values())[-1][1])
    return models


def loader_inputs(loader: Any, stage: str, wanted: set[int]) -> dict[int, torch.Tensor]:
    """The inputs (on the CPU) of the samples ``wanted`` by index: image data only, no forward pass."""
    found: dict[int, torch.Tensor] = {}
    if not wanted:
        return found
    offset = 0
    for batch in first_loader(loader) or ():
        x, y, index = unpack(batch, stage, 1)
        if x.ndim != 4 or (index is None and stage == "train"):
            return {}
        positions = index.tolist() if index is not None else range(offset, offset + len(y))
        offset += len(y)
        found.update(
            (int(i), x[pos].detach().float().cpu()) for pos, i in enumerate(positions) if i in wanted
        )
    return found
