"""``optimizer.lr=auto``'s figure: the learning-rate range test's curve as ``figures/lr_find.png`` and the TensorBoard
image :data:`LR_FIND_TAG` (with the choice as text), at step 0.

The test runs before training, in the launching process (:mod:`lossdiag.app.lr_find`); the figure is drawn by
the training process of rank 0 at the start of fit, so a multi-process run writes it into rank 0's event file
instead of opening a second one in the launcher. The callback holds plain numbers (it travels to spawned
processes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L

from lossdiag.callbacks.tensorboard import tensorboard_writer
from lossdiag.diagnosis.write import write_figure
from lossdiag.functional.learning_rate import smooth
from lossdiag.render.figures import lr_find_figure
from lossdiag.rundir.paths import LR_FIND_FIGURE, figure_path

# a train/ tag: the test trains on the training batches, and TensorBoard groups tags by what precedes the "/"
LR_FIND_TAG = f"train/{LR_FIND_FIGURE}"


class RangeTestFigure(L.Callback):
    """Draw the range test's curve (``lrs``, ``losses``; ``marker``: the rate the choice was read at and what it
    is; ``chosen``: the rate) into ``<run_dir>/figures/lr_find.png`` and TensorBoard; ``summary`` is the text."""

    def __init__(
        self,
        run_dir: str | Path,
        lrs: Sequence[float],
        losses: Sequence[float],
        marker: tuple[float, str],
        chosen: float,
        summary: str,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.lrs, self.losses = list(lrs), list(losses)
        self.marker, self.chosen, self.summary = marker, float(chosen), summary

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        fig = lr_find_figure(self.lrs, self.losses, smooth(self.losses), self.marker, self.chosen)
        writer = tensorboard_writer(trainer)
        path = figure_path(self.run_dir, LR_FIND_FIGURE)
        write_figure(path, fig, writer, LR_FIND_TAG, step=0, description=self.summary)
        if writer is not None:
            writer.add_text(LR_FIND_TAG, self.summary, global_step=0)
            writer.flush()
