"""The LightningModule: ShallowNet trained with standard or bounded cross-entropy.

Per step it only runs the network, the objective and a list append of per-sample outputs
(:class:`~src.records.SampleRecorder`). Everything reported is derived once per epoch from the
de-duplicated per-sample records, so ``train/*`` and ``val/*`` use the same definitions, both the
standard and the bounded cross-entropy are logged whatever is optimised, and multi-process runs
count every sample exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from src.losses import LOSS_NAMES, bound_losses, loss_cap_from_initial, objective, per_sample_cross_entropy
from src.model import predict_logits
from src.records import SampleRecorder, SampleRecords

STAGES = ("train", "val")
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def classification_metrics(num_classes: int) -> MetricCollection:
    """Accuracy (micro), macro F1, and per-class precision/recall/F1 (``average=None``).

    They are fed the already gathered, de-duplicated records once per epoch, so they must not
    sync again (``sync_on_compute=False``).
    """
    common = {"num_classes": num_classes, "sync_on_compute": False}
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(average="micro", **common),
            "f1_macro": MulticlassF1Score(average="macro", **common),
            "precision": MulticlassPrecision(average=None, **common),
            "recall": MulticlassRecall(average=None, **common),
            "f1": MulticlassF1Score(average=None, **common),
        },
        compute_groups=True,
    )


class LossDiagModule(L.LightningModule):
    """Wraps a classifier ``net``; ``loss`` picks the objective (``standard`` or ``bounded``).

    The bounded-loss cap is ``cap`` when given, else ``mean + k * std`` of the untrained
    model's per-sample cross-entropy on the training set, computed at ``on_train_start`` (before the
    first optimizer step). It is a buffer, so checkpoints carry it and evaluation/resume reuse it.
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
        # one object per stage (train_records, val_records, train_metrics, val_metrics)
        for stage in STAGES:
            setattr(self, f"{stage}_records", SampleRecorder())
            setattr(self, f"{stage}_metrics", classification_metrics(len(self.class_names)))
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # a resumed run keeps its best-so-far

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # -- bounded-loss cap ---------------------------------------------------------------------
    def initial_cap(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """``mean + k * std`` of this (untrained) model's per-sample cross-entropy on ``(x, y)``."""
        return loss_cap_from_initial(per_sample_cross_entropy(predict_logits(self.net, x), y.cpu()), self.k)

    def on_train_start(self) -> None:
        if torch.isnan(self.loss_cap):
            train = self.trainer.datamodule.train  # type: ignore[attr-defined]
            self.loss_cap.fill_(self.initial_cap(train.x, train.y))

    # -- steps --------------------------------------------------------------------------------
    def _step(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y, index = batch
        logits = self(x)
        self.recorder(stage).update(index, y, logits)
        return objective(per_sample_cross_entropy(logits, y), self.loss_name, self.loss_cap)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step("train", batch)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step("val", batch)

    # -- epoch summaries ----------------------------------------------------------------------
    def epoch_records(self, stage: str) -> SampleRecords:
        """This epoch's records for ``stage`` (gathered and de-duplicated; cached until the next epoch)."""
        return self.recorder(stage).compute()

    def recorder(self, stage: str) -> SampleRecorder:
        return getattr(self, f"{stage}_records")

    def on_train_epoch_start(self) -> None:
        self.train_records.reset()

    def on_validation_epoch_start(self) -> None:
        self.val_records.reset()

    def _log_epoch(self, stage: str) -> dict[str, torch.Tensor]:
        rec = self.epoch_records(stage)
        ce = rec.cross_entropy
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        metrics.reset()
        metrics.update(rec.logits, rec.target)
        values = metrics.compute()
        logged: dict[str, torch.Tensor] = {
            f"{stage}/loss": ce.mean(),
            f"{stage}/loss_bounded": bound_losses(ce, self.loss_cap).mean(),
            f"{stage}/acc": values["acc"],
            f"{stage}/f1_macro": values["f1_macro"],
        }
        for name in ("precision", "recall", "f1"):
            for cls, value in zip(self.class_names, values[name].unbind(), strict=True):
                logged[f"{stage}/{name}/{cls}"] = value
        shown = {key: logged.pop(key) for key in (f"{stage}/loss", f"{stage}/acc")}
        self.log_dict(shown, on_step=False, on_epoch=True, prog_bar=True, sync_dist=False)
        self.log_dict(logged, on_step=False, on_epoch=True, sync_dist=False)
        return {**shown, **logged}

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")
        self.log("loss/cap", self.loss_cap, on_step=False, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        logged = self._log_epoch("val")
        self.val_acc_best.update(logged["val/acc"])
        self.log("val/acc_best", self.val_acc_best.compute(), on_step=False, on_epoch=True, sync_dist=False)

    # -- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer)}}
