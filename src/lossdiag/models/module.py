"""The LightningModule: ShallowNet (or any classifier ``net``) trained with the configured objective.

Per step it only runs the network, the objective and a list append of per-sample outputs
(:class:`~lossdiag.models.recorder.SampleRecorder`). Everything reported is derived once per epoch from the
de-duplicated per-sample records, so ``train/*`` and ``val/*`` use the same definitions, both the
standard and the bounded cross-entropy are logged whatever is optimised, and multi-process runs count
every sample exactly once.

Logging: nothing goes through ``self.log`` (each call costs ~0.4 ms per epoch). Every epoch value was
already gathered, so it goes to the loggers once per epoch, at ``step=epoch``, with
:func:`lossdiag.models.epoch_log.log_epoch_metrics`, and is kept in :attr:`epoch_values`, where the best
checkpoint (:mod:`lossdiag.callbacks.best_checkpoint`) and the progress bar (:mod:`lossdiag.callbacks.progress`)
read ``val/acc`` and ``val/loss``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from lossdiag.functional.losses import (
    LOSS_NAMES,
    bound_losses,
    loss_cap_from_initial,
    per_sample_cross_entropy,
    training_loss,
)
from lossdiag.models.epoch_log import log_epoch_metrics
from lossdiag.models.predict import DEFAULT_CHUNK_BYTES, ChunkedSplit, iter_logits
from lossdiag.models.recorder import SampleRecorder, SampleRecords

STAGES = ("train", "val")
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def classification_metrics(
    logits: torch.Tensor, target: torch.Tensor, num_classes: int
) -> dict[str, torch.Tensor]:
    """Accuracy (micro) and macro F1 of one epoch's gathered, de-duplicated records.

    torchmetrics' functional forms: the records are complete already, so there is no state to
    accumulate or sync. Per-class precision/recall/F1 are in the reports.
    """
    pred = logits.argmax(1)
    common = {"num_classes": num_classes, "validate_args": False}
    return {
        "acc": multiclass_accuracy(pred, target, average="micro", **common),
        "f1_macro": multiclass_f1_score(pred, target, average="macro", **common),
    }


class LossDiagModule(L.LightningModule):
    """Wraps a classifier ``net``; ``loss`` picks the objective (``standard``, ``bounded``, or one of
    :data:`lossdiag.functional.objectives.OBJECTIVES` with its parameter ``loss_param``). Whatever is optimised,
    ``*/loss`` is the cross-entropy and ``*/loss_bounded`` the capped cross-entropy, so runs compare.

    The bounded-loss cap is ``cap`` when given, else ``mean + k * std`` of the untrained
    model's per-sample cross-entropy on the training set, computed at ``on_train_start`` (before the
    first optimizer step) in eval mode, streamed in chunks of at most ``eval_chunk_bytes`` of float32 input
    (:func:`lossdiag.models.predict.iter_logits`). It is a buffer, so checkpoints carry it and
    evaluation/resume reuse it.
    ``training_step`` and ``validation_step`` return the batch's logits (``outputs["logits"]``), so
    callbacks such as :class:`lossdiag.callbacks.LossDiagnosis` never re-run the network.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        class_names: Sequence[str],
        loss: str = "standard",
        k: float = 3.0,
        cap: float | None = None,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        loss_param: float | None = None,
        eval_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        super().__init__()
        if loss not in LOSS_NAMES:
            raise ValueError(f"unknown loss {loss!r}: choose one of {', '.join(LOSS_NAMES)}")
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler", "eval_chunk_bytes"])
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.loss_name = loss
        self.loss_param = loss_param
        self.k = k
        self.eval_chunk_bytes = int(eval_chunk_bytes)
        self.class_names = list(class_names)
        self.register_buffer("loss_cap", torch.tensor(float("nan") if cap is None else float(cap)))
        self.train_records = SampleRecorder()
        self.val_records = SampleRecorder()
        # the best val accuracy and the lowest val loss so far; buffers, so a resumed run keeps them
        self.register_buffer("val_acc_best", torch.tensor(0.0))
        self.register_buffer("val_loss_min", torch.tensor(float("inf")))
        self.epoch_values: dict[str, float] = {}  # the last value of everything sent to the loggers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # -- bounded-loss cap ---------------------------------------------------------------------
    def initial_cap(self, data: ChunkedSplit | Iterable[Any]) -> float:
        """``mean + k * std`` of this (untrained) model's per-sample cross-entropy on ``data``: a split
        (:class:`~lossdiag.models.predict.ChunkedSplit`) or batches ``(x, y[, index])``, streamed in chunks
        of at most ``eval_chunk_bytes``; only the per-sample losses are kept (on the model's device)."""
        losses = [
            per_sample_cross_entropy(p.logits, p.target)
            for p in iter_logits(self.net, data, self.eval_chunk_bytes)
        ]
        return loss_cap_from_initial(torch.cat(losses) if losses else torch.empty(0), self.k)

    def on_train_start(self) -> None:
        if torch.isnan(self.loss_cap):
            # the datamodule's training split (un-augmented, in order); any other datamodule or plain
            # loaders: the training batches as they come
            train = getattr(getattr(self.trainer, "datamodule", None), "train", None)
            data = train if isinstance(train, ChunkedSplit) else self.trainer.train_dataloader
            self.loss_cap.fill_(self.initial_cap(data))

    # -- steps --------------------------------------------------------------------------------
    def _forward_and_record(
        self, stage: str, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        x, y, index = batch
        logits = self(x)
        self.recorder(stage).update(index, y, logits)
        return logits

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        logits = self._forward_and_record("train", batch)
        loss = training_loss(logits, batch[1], self.loss_name, self.loss_cap, self.loss_param)
        return {"loss": loss, "logits": logits.detach()}

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        # no objective here: every val number comes from the epoch's records (val/loss is cross-entropy)
        return {"logits": self._forward_and_record("val", batch)}

    # -- epoch summaries ----------------------------------------------------------------------
    def epoch_records(self, stage: str) -> SampleRecords:
        """This epoch's records for ``stage`` (gathered and de-duplicated; cached until the next epoch)."""
        return self.recorder(stage).compute()

    def recorder(self, stage: str) -> SampleRecorder:
        return self.train_records if stage == "train" else self.val_records

    def on_train_epoch_start(self) -> None:
        self.train_records.reset()

    def on_validation_epoch_start(self) -> None:
        self.val_records.reset()

    def epoch_summary(self, stage: str) -> dict[str, torch.Tensor]:
        """``<stage>/loss``, ``loss_bounded``, ``acc`` and ``f1_macro`` of this epoch's records."""
        rec = self.epoch_records(stage)
        ce = rec.cross_entropy
        values = classification_metrics(rec.logits, rec.target, len(self.class_names))
        return {
            f"{stage}/loss": ce.mean(),
            f"{stage}/loss_bounded": bound_losses(ce, self.loss_cap).mean(),
            f"{stage}/acc": values["acc"],
            f"{stage}/f1_macro": values["f1_macro"],
        }

    def on_train_epoch_end(self) -> None:
        values = self.epoch_summary("train")
        values["train/loss_cap"] = self.loss_cap  # from the training set's losses under the untrained model
        self.epoch_values.update(log_epoch_metrics(self.trainer, values, self.current_epoch))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        values = self.epoch_summary("val")
        self.val_acc_best.copy_(torch.maximum(self.val_acc_best, values["val/acc"]))
        self.val_loss_min.copy_(torch.minimum(self.val_loss_min, values["val/loss"]))
        values["val/acc_best"] = self.val_acc_best
        values["val/loss_min"] = self.val_loss_min
        # the loggers get every value at step=epoch; the best checkpoint and the progress bar read epoch_values
        self.epoch_values.update(log_epoch_metrics(self.trainer, values, self.current_epoch))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # checkpoints written before val_loss_min existed: it restarts from the resumed epochs on
        checkpoint.get("state_dict", {}).setdefault("val_loss_min", torch.tensor(float("inf")))

    # -- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer)}}
