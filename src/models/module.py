"""The LightningModule: ShallowNet (or any classifier ``net``) trained with the configured objective.

Per step it only runs the network, the objective and a list append of per-sample outputs
(:class:`~src.models.recorder.SampleRecorder`). Everything reported is derived once per epoch from the
de-duplicated per-sample records, so ``train/*`` and ``val/*`` use the same definitions, both the
standard and the bounded cross-entropy are logged whatever is optimised, and multi-process runs count
every sample exactly once.

Logging: only what Lightning itself consumes goes through ``self.log`` (``val/acc``, which the
checkpoints monitor; ``val/loss`` and ``val/acc`` for the progress bar; ``val/acc_best``, the sweepers'
default ``optimized_metric``; and ``step`` = ``epoch``, so Lightning's own write of these is plotted
against the epoch). Every other epoch value was already gathered, so it goes to the loggers once per
epoch with :func:`src.models.epoch_log.log_epoch_metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from src.functional.losses import (
    LOSS_NAMES,
    bound_losses,
    loss_cap_from_initial,
    objective,
    per_sample_cross_entropy,
)
from src.models.epoch_log import log_epoch_metrics
from src.models.predict import predict_logits
from src.models.recorder import SampleRecorder, SampleRecords

STAGES = ("train", "val")
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def classification_metrics(num_classes: int) -> MetricCollection:
    """Accuracy (micro) and macro F1 of one epoch.

    They are fed the already gathered, de-duplicated records once per epoch, so they must not
    sync again (``sync_on_compute=False``). Per-class precision/recall/F1 are in the reports.
    """
    common = {"num_classes": num_classes, "sync_on_compute": False}
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(average="micro", **common),
            "f1_macro": MulticlassF1Score(average="macro", **common),
        },
        compute_groups=True,
    )


class LossDiagModule(L.LightningModule):
    """Wraps a classifier ``net``; ``loss`` picks the objective (``standard`` or ``bounded``).

    The bounded-loss cap is ``cap`` when given, else ``mean + k * std`` of the untrained
    model's per-sample cross-entropy on the training set, computed at ``on_train_start`` (before the
    first optimizer step). It is a buffer, so checkpoints carry it and evaluation/resume reuse it.
    ``training_step`` and ``validation_step`` return the batch's logits (``outputs["logits"]``), so
    callbacks such as :class:`src.callbacks.LossDiagnosis` never re-run the network.
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
    ) -> None:
        super().__init__()
        if loss not in LOSS_NAMES:
            raise ValueError(f"unknown loss {loss!r}: choose one of {', '.join(LOSS_NAMES)}")
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.loss_name = loss
        self.k = k
        self.class_names = list(class_names)
        self.register_buffer("loss_cap", torch.tensor(float("nan") if cap is None else float(cap)))
        self.train_records = SampleRecorder()
        self.val_records = SampleRecorder()
        self.train_metrics = classification_metrics(len(self.class_names))
        self.val_metrics = classification_metrics(len(self.class_names))
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # a resumed run keeps its best-so-far
        self.epoch_values: dict[str, float] = {}  # the last value of everything sent to the loggers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # -- bounded-loss cap ---------------------------------------------------------------------
    def initial_cap(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """``mean + k * std`` of this (untrained) model's per-sample cross-entropy on ``(x, y)``."""
        return loss_cap_from_initial(per_sample_cross_entropy(predict_logits(self.net, x), y.cpu()), self.k)

    def on_train_start(self) -> None:
        if torch.isnan(self.loss_cap):
            train = self.trainer.datamodule.train  # type: ignore[attr-defined]
            self.loss_cap.fill_(self.initial_cap(train.inputs(), train.y))

    # -- steps --------------------------------------------------------------------------------
    def _step(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y, index = batch
        logits = self(x)
        self.recorder(stage).update(index, y, logits)
        loss = objective(per_sample_cross_entropy(logits, y), self.loss_name, self.loss_cap)
        return {"loss": loss, "logits": logits.detach()}

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._step("train", batch)

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._step("val", batch)

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
        metrics = self.train_metrics if stage == "train" else self.val_metrics
        metrics.reset()
        metrics.update(rec.logits, rec.target)
        values = metrics.compute()
        return {
            f"{stage}/loss": ce.mean(),
            f"{stage}/loss_bounded": bound_losses(ce, self.loss_cap).mean(),
            f"{stage}/acc": values["acc"],
            f"{stage}/f1_macro": values["f1_macro"],
        }

    def on_train_epoch_end(self) -> None:
        values = self.epoch_summary("train")
        values["loss/cap"] = self.loss_cap
        self.epoch_values.update(log_epoch_metrics(self.trainer, values, self.current_epoch))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        values = self.epoch_summary("val")
        self.val_acc_best.update(values["val/acc"])
        shown = {"val/loss": values.pop("val/loss"), "val/acc": values.pop("val/acc")}
        self.log_dict(shown, prog_bar=True, sync_dist=False)
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=False)
        # Lightning writes these at its `step` metric when one is logged: the epoch, as every other value
        self.log_dict({"step": float(self.current_epoch), "epoch": float(self.current_epoch)}, sync_dist=False)
        self.epoch_values.update(log_epoch_metrics(self.trainer, values, self.current_epoch))

    # -- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer)}}
