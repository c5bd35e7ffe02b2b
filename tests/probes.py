"""Callbacks that tests add to real runs (``+callbacks.<name>._target_=tests.probes.<Class>``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch


class SleepPerStep(L.Callback):
    """Only slows training down, so a test can kill a run in the middle of an epoch."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args, **kwargs) -> None:
        time.sleep(self.seconds)


class DistributedProbe(L.Callback):
    """In every process: are this epoch's val records every val sample exactly once, and is the
    bounded-loss cap the same on all ranks? Rank 0 writes the answers to ``path`` (JSON)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        index = pl_module.epoch_records("val").index.cpu()
        n_val = len(trainer.datamodule.val)
        exactly_once = bool(torch.equal(index, torch.arange(n_val)))
        flags = pl_module.all_gather(torch.tensor(exactly_once, device=pl_module.device)).flatten()
        caps = pl_module.all_gather(pl_module.loss_cap.detach()).flatten()
        seen_per_rank = pl_module.all_gather(
            torch.tensor(sum(len(i) for i in pl_module.val_records.index), device=pl_module.device)
        ).flatten()
        if trainer.global_rank == 0:
            result = {
                "world_size": trainer.world_size,
                "n_val": n_val,
                "n_records": len(index),
                "exactly_once_on_every_rank": bool(flags.all()),
                "caps": caps.tolist(),
                "seen_per_rank": seen_per_rank.tolist(),
            }
            Path(self.path).write_text(json.dumps(result))


class PoisonWeights(L.Callback):
    """Fill the model's weights with NaN at the start of ``epoch``: a diverged run, on cue."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(float("nan"))
