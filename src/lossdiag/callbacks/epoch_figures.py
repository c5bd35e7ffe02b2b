"""Mid-run figures: every ``every_n_epochs`` epochs (and the last) the reliability diagram and the worst val
images of that epoch, drawn into TensorBoard once the epoch's block has been evaluated.

A figure epoch keeps only the inputs of its worst val samples (ranked by that epoch's loss, as the block
evaluation ranks them). Drawing takes ~0.1-0.2 s per epoch whatever the model: a run whose epochs take longer
gets its figures when their block is evaluated; a run whose figures would take more than :data:`TIME_SHARE` of its
training time gets them when training ends (``now``), at the same steps: the same images, later.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from lossdiag.diagnosis.samples import Samples
from lossdiag.diagnosis.write import epoch_figures, write_figure
from lossdiag.functional.breakdown import worst_indices
from lossdiag.render.figures import WORST_TILES, Normalization
from lossdiag.rundir.paths import epoch_figure_path

TIME_SHARE = 0.1  # at most this share of the time since the last drawing goes to drawing mid-run


class EpochFigures:
    """The figure epochs' kept inputs until they are drawn (they travel in checkpoints: :attr:`pending`)."""

    def __init__(self, every_n_epochs: int, worst_k: int) -> None:
        self.every_n_epochs, self.worst_k = int(every_n_epochs), int(worst_k)
        self.collecting = False  # this val epoch's inputs are kept
        self._images: dict[int, torch.Tensor] = {}  # this val epoch's inputs by sample index
        # figures due but not drawn yet: [(epoch, the inputs of that epoch's worst samples)]
        self.pending: list[tuple[int, dict[int, torch.Tensor]]] = []
        self._draw_s = 0.2  # how long one epoch's figures took to draw (a guess until the first is drawn)
        self._drawn_at = time.monotonic()
        self.norm: Normalization | None = None  # the data's mean/std: the images are drawn un-normalised
        self.drawn: set[str] = set()  # the TensorBoard tags drawn so far (diagnosis.md names only those)

    def start_epoch(self, epoch: int, last: bool, writer: Any) -> None:
        every = self.every_n_epochs
        self.collecting = writer is not None and every > 0 and ((epoch + 1) % every == 0 or last)
        self._images = {}

    def collect(self, index: torch.Tensor, x: Any) -> None:
        if self.collecting and torch.is_tensor(x) and x.ndim == 4:
            self._images.update(zip(index.tolist(), x.detach().float().cpu(), strict=True))

    def keep_worst(self, epoch: int, samples: Samples, losses: torch.Tensor) -> None:
        """At the end of a figure epoch, keep only the inputs of its worst samples (``losses``: that epoch's)."""
        if not self.collecting:
            return
        worst = worst_indices(losses.numpy(), min(self.worst_k, WORST_TILES))
        keep = {int(samples.val.index[i]) for i in worst}
        self.pending.append((epoch, {i: x for i, x in self._images.items() if i in keep}))
        self._images = {}

    def draw(
        self, writer: Any, samples: Samples | None, evaluated_through: int, out_dir: Path, now: bool = False
    ) -> None:
        """Draw the pending epochs up to ``evaluated_through`` (when due, or ``now``) as TensorBoard ``val/<figure>``
        and ``<out_dir>/figures/epochs/<figure>_<epoch>.png``."""
        if writer is None or samples is None:
            self.pending = []
            return
        ready = [(epoch, images) for epoch, images in self.pending if epoch <= evaluated_through]
        if not ready or not (now or self._draw_s <= TIME_SHARE * (time.monotonic() - self._drawn_at)):
            return
        start = time.monotonic()
        for epoch, images in ready:
            ev = samples.val_epochs[samples.epochs.index(epoch)]
            figures = epoch_figures(samples, ev, images, self.worst_k, epoch, f"val, epoch {epoch}", self.norm)
            for name, fig in figures.items():
                write_figure(epoch_figure_path(out_dir, name, epoch), fig, writer, f"val/{name}", epoch)
                self.drawn.add(f"val/{name}")
        self._draw_s = (time.monotonic() - start) / len(ready)
        self._drawn_at = time.monotonic()
        self.pending = [(e, images) for e, images in self.pending if e > evaluated_through]
