"""TensorBoard glue: the run's ``SummaryWriter``, its HParams tab and its Custom Scalars layout.

The HParams tab compares runs by a few hyperparameters a person would vary (chosen by the app, see
:mod:`lossdiag.app.hparams`) and by :data:`HPARAM_METRICS`, summary scalars written once at the end of fit
from the run's whole per-epoch history (a resumed run included). The Custom Scalars tab
(:data:`LAYOUT`) puts the curves that tell the story side by side: val loss against val accuracy,
the loss tail, the loss carried by correct and by wrong samples, calibration.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.compat.proto.summary_pb2 import Summary

from lossdiag.rundir.metrics_csv import read_history

# HParams metric tag -> (per-epoch metric, how the run's history of it is summarised)
HPARAM_METRICS: dict[str, tuple[str, str]] = {
    "hparams/val_acc_best": ("val/acc", "max"),
    "hparams/val_acc_last": ("val/acc", "last"),
    "hparams/val_loss_min": ("val/loss", "min"),
    "hparams/val_loss_last": ("val/loss", "last"),
    "hparams/val_ece_last": ("val/ece", "last"),
}


def _exactly(*tags: str) -> list[str]:
    """Custom-scalars charts match tags by regular expression: anchor each tag so ``val/loss`` is only that."""
    return [f"^{tag}$" for tag in tags]


# TensorBoard's Custom Scalars tab: category -> chart title -> ["Multiline", tag regexes]
LAYOUT: dict[str, dict[str, list[Any]]] = {
    "why val loss rises while val accuracy holds": {
        "val loss vs val accuracy": ["Multiline", _exactly("val/loss", "val/acc")],
        "val loss tail: median, p99, max per-sample loss": [
            "Multiline",
            _exactly("val/loss_median", "val/loss_p99", "val/loss_max"),
        ],
        "val loss carried by correct vs wrong samples (they add up to val/loss)": [
            "Multiline",
            _exactly("val/loss", "val/loss_from_correct", "val/loss_from_wrong"),
        ],
        "calibration: ECE and fitted temperature": ["Multiline", _exactly("val/ece", "val/temperature")],
    },
    "train vs val": {
        "loss": ["Multiline", _exactly("train/loss", "val/loss")],
        "accuracy": ["Multiline", _exactly("train/acc", "val/acc")],
        "bounded loss (every sample capped at loss/cap)": [
            "Multiline",
            _exactly("train/loss_bounded", "val/loss_bounded"),
        ],
    },
}


def tensorboard_logger(trainer: L.Trainer) -> TensorBoardLogger | None:
    """The trainer's (first) TensorBoard logger on rank 0, else ``None``."""
    if trainer.global_rank != 0:
        return None
    return next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)


def tensorboard_writer(trainer: L.Trainer) -> Any:
    """The ``SummaryWriter`` of the trainer's TensorBoard logger on rank 0, else ``None``."""
    logger = tensorboard_logger(trainer)
    return logger.experiment if logger is not None else None


def scalar_values(metrics: Mapping[str, Any]) -> list[Summary.Value]:
    """Numeric ``metrics`` (but ``epoch``, which the step already is) as TensorBoard scalar values, to be written
    together as one event (a ``Summary`` holding many values reads like separate scalars)."""
    return [
        Summary.Value(tag=key, simple_value=float(value))
        for key, value in metrics.items()
        if key != "epoch" and isinstance(value, int | float) and not isinstance(value, bool)
    ]


def hparam_value(value: Any) -> bool | int | float | str:
    """A value the HParams tab can show: numbers and strings as they are, anything else as text."""
    return value if isinstance(value, bool | int | float | str) else str(value)


def summarise_history(history: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """:data:`HPARAM_METRICS` of a per-epoch history (``{metric: [value per epoch]}``); absent metrics are left out."""
    out: dict[str, float] = {}
    for tag, (metric, how) in HPARAM_METRICS.items():
        values = [v for v in history.get(metric, ()) if math.isfinite(v)]
        if values:
            out[tag] = {"max": max, "min": min, "last": lambda v: v[-1]}[how](values)
    return out


def log_hparams(trainer: L.Trainer, hparams: Mapping[str, Any]) -> None:
    """Write ``hparams`` to TensorBoard's HParams tab (rank 0), declaring :data:`HPARAM_METRICS`.

    Lightning's ``log_hyperparams`` only writes the HParams summary together with metric values,
    which would add a fake step-0 point to those curves; the summary alone is enough for TensorBoard,
    which shows each metric's last value in this run.
    """
    writer = tensorboard_writer(trainer)
    if writer is None:
        return
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    values = {key: hparam_value(value) for key, value in hparams.items()}
    for summary in hparams_summaries(values, dict.fromkeys(HPARAM_METRICS, 0.0)):
        writer.file_writer.add_summary(summary)
    writer.flush()


def log_layout(trainer: L.Trainer) -> None:
    """Write :data:`LAYOUT` for TensorBoard's Custom Scalars tab (rank 0)."""
    writer = tensorboard_writer(trainer)
    if writer is not None:
        writer.add_custom_scalars(LAYOUT)


class TensorBoardDashboards(L.Callback):
    """HParams and Custom Scalars for the run, written inside the training process(es) (so spawned
    multi-process runs write into rank 0's event file rather than opening one in the launcher).

    ``hparams`` go to the HParams tab at the start of fit, with ``extras`` (tag -> ``("image", HWC uint8
    pixels)`` or ``("text", markdown)``, made before fit, e.g. the learning-rate range test's) at step 0; at its
    end, :data:`HPARAM_METRICS` are
    computed from ``<run_dir>/csv/metrics.csv`` (every epoch, including those before a resume) or,
    without that file, from this fit's last values, and written at step = last epoch.
    """

    def __init__(
        self,
        hparams: Mapping[str, Any],
        run_dir: str | Path | None = None,
        extras: Mapping[str, tuple[str, Any]] | None = None,
    ) -> None:
        self.hparams = dict(hparams)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.extras = dict(extras or {})

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_hparams(trainer, self.hparams)
        log_layout(trainer)
        writer = tensorboard_writer(trainer)
        if writer is not None:
            for tag, (kind, value) in self.extras.items():
                if kind == "image":
                    writer.add_image(tag, value, global_step=0, dataformats="HWC")
                else:
                    writer.add_text(tag, value, global_step=0)

    def _history(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, list[float]]:
        if self.run_dir is not None:
            try:
                return read_history(self.run_dir)
            except FileNotFoundError:
                pass
        last: dict[str, float] = {}
        for owner in (pl_module, *trainer.callbacks):  # type: ignore[attr-defined]
            last.update(getattr(owner, "epoch_values", {}))
        return {key: [value] for key, value in last.items()}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        history = self._history(trainer, pl_module)
        # the last epoch (when fit has ended, current_epoch is one past it)
        step = int(history["epoch"][-1]) if history.get("epoch") else max(trainer.current_epoch - 1, 0)
        for tag, value in summarise_history(history).items():
            writer.add_scalar(tag, value, global_step=step)
        writer.flush()
