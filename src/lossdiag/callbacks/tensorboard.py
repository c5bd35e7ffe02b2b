"""TensorBoard glue: the run's ``SummaryWriter``, its HParams tab and its Custom Scalars layout.

The HParams tab compares runs by a few hyperparameters a person would vary (chosen by the app, see
:mod:`lossdiag.app.hparams`) and by :data:`HPARAM_METRICS`: per-epoch metrics whose last value sums the run up
(``val/acc_best`` is the best val accuracy so far, ``val/loss_min`` the lowest val loss so far), so the tab shows
the same names as the CSV and the sweep report, and the Scalars tab gets no one-point summary charts: its tag
groups are ``train/`` and ``val/`` only (TensorBoard orders groups by their first tag). The Custom Scalars tab
(:data:`LAYOUT`) puts the curves that tell the story side by side: val loss against val accuracy,
the loss tail, the loss carried by correct and by wrong samples, calibration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary

from lossdiag.functional.breakdown import equal_width_histograms

# per-sample loss histogram bins: enough for a few hundred to thousands of samples, and every byte of an event
# costs (TensorBoard's writer checksums events in pure Python without TensorFlow: ~0.1 ms per KB)
HISTOGRAM_BINS = 32

# the HParams tab's metrics: per-epoch tags, each shown by its value at the run's last epoch (a resumed run's too:
# val/acc_best and val/loss_min are module buffers, restored from last.ckpt)
HPARAM_METRICS: tuple[str, ...] = ("val/acc_best", "val/acc", "val/loss_min", "val/loss", "val/ece")


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
        "bounded loss (every sample capped at train/loss_cap)": [
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


def histogram_values(
    blocks: Mapping[str, tuple[Sequence[int], np.ndarray]], bins: int = HISTOGRAM_BINS
) -> dict[int, list[Summary.Value]]:
    """``<stage>/loss_per_sample`` for a block of epochs (``{stage: (epochs, losses (E, N))}``), by epoch: every
    stage's histogram of that epoch. ``bins`` equal-width bins (a linear axis shows the tail; TensorBoard's stock
    exponential buckets cost twice as much), counted for the whole block at once."""
    values: dict[int, list[Summary.Value]] = {}
    for stage, (epochs, losses) in blocks.items():
        h = equal_width_histograms(losses, bins=bins)
        for i, epoch in enumerate(epochs):
            if not h["num"][i]:
                continue
            proto = HistogramProto(
                min=h["min"][i],
                max=h["max"][i],
                num=h["num"][i],
                sum=h["sum"][i],
                sum_squares=h["sum_squares"][i],
                # right bin limits, after an empty bin that carries the left edge (as TensorBoard's own)
                bucket_limit=h["edges"][i].tolist(),
                bucket=[0.0, *h["counts"][i].tolist()],
            )
            values.setdefault(epoch, []).append(Summary.Value(tag=f"{stage}/loss_per_sample", histo=proto))
    return values


def write_epoch_events(
    writer: Any,
    values: Mapping[int, Mapping[str, float]],
    losses: Mapping[str, tuple[Sequence[int], np.ndarray]] | None = None,
) -> None:
    """Each epoch's scalars (and, given ``losses``, its per-sample loss histograms) as ONE event at step = epoch
    (Lightning's stock logger would write one event per scalar), then flush.

    TensorBoard's writer thread checksums every event byte in Python. Left to work through a block beside
    training, it holds the GIL in turns with the training loop and slows the next epochs by more than this wait
    (~0.5 ms per epoch on the default run); and TensorBoard shows the block at once.
    """
    histograms = histogram_values(losses) if losses else {}
    for epoch, scalars in values.items():
        summary = Summary(value=[*scalar_values(scalars), *histograms.get(epoch, [])])
        writer.file_writer.add_summary(summary, global_step=epoch)
    writer.flush()


def hparam_value(value: Any) -> bool | int | float | str:
    """A value the HParams tab can show: numbers and strings as they are, anything else as text."""
    return value if isinstance(value, bool | int | float | str) else str(value)


def log_hparams(trainer: L.Trainer, hparams: Mapping[str, Any]) -> None:
    """Write ``hparams`` to TensorBoard's HParams tab (rank 0), declaring :data:`HPARAM_METRICS`.

    Lightning's ``log_hyperparams`` only writes the HParams summary together with metric values,
    which would add a fake step-0 point to those curves; the summary alone is enough for TensorBoard,
    which shows each metric's last value in this run (the per-epoch values the module logs).
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
    """HParams and Custom Scalars for the run, written at the start of fit inside the training process(es) (so
    spawned multi-process runs write into rank 0's event file rather than opening one in the launcher)."""

    def __init__(self, hparams: Mapping[str, Any]) -> None:
        self.hparams = dict(hparams)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_hparams(trainer, self.hparams)
        log_layout(trainer)
