"""Outside the training loop: a module's per-sample outputs on whole loaders (before training, for the bounded
view's cap; at the end of fit, for the initial / best / last weights), and the inputs of chosen samples (figures).

Every pass reads batches and logits through the project's :class:`~lossdiag.callbacks.contract.Contract` (its
``batch_fn`` / ``logits_fn`` hooks, never ``validation_step``: that would log and update the module's metrics) and
covers the batches the trainer uses (``limit_val_batches`` / ``limit_train_batches``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import move_data_to_device

from lossdiag.callbacks.contract import Contract
from lossdiag.callbacks.data_info import first_loader
from lossdiag.diagnosis.judge.suspects import REFERENCE_MODELS, rank_run, wanted_images
from lossdiag.diagnosis.samples import Samples
from lossdiag.functional.breakdown import worst_indices
from lossdiag.models.predict import DEFAULT_CHUNK_BYTES, predict_records
from lossdiag.models.recorder import SampleRecorder, SampleRecords
from lossdiag.rundir.checkpoints import load_checkpoint


def _batches(trainer: L.Trainer, loader: Any, stage: str) -> Iterator[Any]:
    """The batches of ``loader`` the trainer uses per epoch (its ``limit_*_batches``)."""
    limit = trainer.num_val_batches[0] if stage == "val" and trainer.num_val_batches else math.inf
    if stage == "train":
        limit = trainer.num_training_batches
    return iter(loader) if math.isinf(limit) else itertools.islice(loader, int(limit))


def evaluate_loader(
    trainer: L.Trainer,
    pl_module: L.LightningModule,
    loader: Any,
    stage: str,
    contract: Contract,
    max_bytes: int = DEFAULT_CHUNK_BYTES,
) -> SampleRecords | None:
    """``pl_module``'s outputs on every batch of ``loader`` (gathered over ranks, targets checked), streamed in
    chunks of at most ``max_bytes`` of input and activations (:func:`~lossdiag.models.predict.iter_logits`);
    ``None`` for a train loader without an index (a shuffled order cannot be told apart)."""
    loader = first_loader(loader)
    if loader is None:
        return None
    batches = (
        contract.split(move_data_to_device(batch, pl_module.device), stage, trainer.world_size)
        for batch in _batches(trainer, loader, stage)
    )
    rec = predict_records(
        pl_module,
        batches,
        max_bytes,
        forward=lambda x, n: contract.predict(pl_module, x, n),
        recorder=SampleRecorder().to(pl_module.device),
        require_index=stage == "train",
        target=lambda y, logits: contract.target(y, logits.shape[1], stage),
    )
    return None if rec is None else contract.check(rec, stage, pl_module, trainer.world_size)


def train_models(names: list[str]) -> set[str]:
    """The end-of-fit models evaluated on the training split too: the last (its train losses give the verdict's
    ``n_train_above_cap``) and the one that scores the suspects (``best_val_acc`` when there is one: it names the
    class a mislabeled training image belongs to better than the last, which has memorised more of them). The
    others (initial, min_val_loss, ...) are evaluated on val only."""
    return {"last", next(m for m in (*REFERENCE_MODELS, "last") if m in names)}


def evaluate_models(
    trainer: L.Trainer,
    pl_module: L.LightningModule,
    states: dict[str, tuple[int, dict[str, torch.Tensor]]],
    contract: Contract,
    max_bytes: int = DEFAULT_CHUNK_BYTES,
) -> dict[str, tuple[int, dict[str, SampleRecords]]]:
    """Each of ``states`` (``{name: (epoch, state_dict)}``) loaded into ``pl_module`` in turn and evaluated on the
    val loader (and, for :func:`train_models`, the train loader) on the device it trained on:
    ``{name: (epoch, {split: records})}``. The last state is loaded back at the end, whatever happens."""
    models: dict[str, tuple[int, dict[str, SampleRecords]]] = {}
    loaders = {"val": trainer.val_dataloaders, "train": trainer.train_dataloader}
    with_train = train_models(list(states))
    # Lightning's teardown has moved the module to the CPU before on_fit_end: evaluate where it trained
    home = pl_module.device
    pl_module.to(trainer.strategy.root_device)
    try:
        for name, (epoch, state) in states.items():
            pl_module.load_state_dict(state)
            splits = ("val", "train") if name in with_train else ("val",)
            records = {
                s: evaluate_loader(trainer, pl_module, loaders[s], s, contract, max_bytes) for s in splits
            }
            models[name] = (epoch, {s: r for s, r in records.items() if r is not None})
    finally:
        pl_module.load_state_dict(list(states.values())[-1][1])
        pl_module.to(home)
    return models


def loader_inputs(loader: Any, stage: str, wanted: set[int], contract: Contract) -> dict[int, torch.Tensor]:
    """The inputs (on the CPU) of the samples ``wanted`` by index: image data only, no forward pass."""
    found: dict[int, torch.Tensor] = {}
    if not wanted:
        return found
    offset = 0
    for batch in first_loader(loader) or ():
        x, y, index = contract.split(batch, stage, 1)
        if not torch.is_tensor(x) or x.ndim != 4 or (index is None and stage == "train"):
            return {}
        positions = index.tolist() if index is not None else range(offset, offset + len(y))
        offset += len(y)
        found.update(
            (int(i), x[pos].detach().float().cpu()) for pos, i in enumerate(positions) if i in wanted
        )
        if len(found) == len(wanted):
            break
    return found


def end_states(
    trainer: L.Trainer,
    pl_module: L.LightningModule,
    initial: dict[str, torch.Tensor] | None,
    reports: bool,
    last_epoch: int,
) -> dict[str, tuple[int, dict[str, torch.Tensor]]]:
    """The weights evaluated at the end of fit, ``{name: (epoch, state_dict)}``: ``initial`` and each checkpoint
    callback's best (with ``reports``; named after its file: best_val_acc, min_val_loss, ...), and last."""
    states: dict[str, tuple[int, dict[str, torch.Tensor]]] = {}
    if initial is not None and reports:
        states["initial"] = (-1, initial)
    for callback in trainer.checkpoint_callbacks if reports else ():
        best = Path(getattr(callback, "best_model_path", "") or "")
        if best.name and best.is_file():
            ckpt = load_checkpoint(best)
            states[best.stem] = (int(ckpt.get("epoch", -1)), ckpt["state_dict"])
    states["last"] = (last_epoch, {k: v.detach().clone() for k, v in pl_module.state_dict().items()})
    return states


def figure_images(
    trainer: L.Trainer, samples: Samples, worst_k: int, contract: Contract, tensorboard: bool
) -> tuple[dict[int, torch.Tensor], dict[str, dict[int, torch.Tensor]] | None]:
    """The inputs the final figures show, in one pass over each loader: the final worst val samples (the
    worst-samples figure) and, for TensorBoard, the most suspect samples of each split (``None`` without)."""
    worst = samples.val.index[worst_indices(samples.val_epochs[-1].loss, worst_k)].tolist()
    suspects = wanted_images(rank_run(samples), samples) if tensorboard else {}
    # a run resumed after its last epoch (suspects.folds killed during the folds) has no val loader of its own
    datamodule = getattr(trainer, "datamodule", None)
    val_loader = trainer.val_dataloaders
    if val_loader is None and datamodule is not None:
        val_loader = datamodule.val_dataloader()
    val_images = loader_inputs(val_loader, "val", {*worst, *suspects.get("val", ())}, contract)
    suspect_images = {"val": val_images}
    if "train" in suspects:
        suspect_images["train"] = loader_inputs(
            trainer.train_dataloader, "train", set(suspects["train"]), contract
        )
    final_images = {i: val_images[i] for i in worst if i in val_images}
    return final_images, suspect_images if tensorboard else None
