"""Figures into a run folder and TensorBoard at once: every image TensorBoard shows is also a PNG under ``figures/``.

:func:`write_figure` renders a figure once, writes it as a PNG (atomically) and, given a ``SummaryWriter``, logs
the same pixels as one TensorBoard image: an image grid (:class:`lossdiag.render.figures.TileGrid`) as one image
per row of tiles, the *samples* of one image summary, which TensorBoard shows as one card each ("Sample 1/3"),
each legible at card size; the PNG is those rows stacked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.util import tensor_util

from lossdiag.render.figures import figure_samples, png_bytes, render
from lossdiag.rundir.atomic import atomic_write_bytes


def image_summary(tag: str, images: list[np.ndarray], pngs: list[bytes], description: str = "") -> Summary:
    """One TensorBoard image summary holding ``images`` (their encoded ``pngs``) as its samples: TensorBoard's own
    image format (a string tensor ``[width, height, png, ...]`` with the ``images`` plugin's metadata)."""
    height, width = images[0].shape[:2]
    content = np.array([str(width).encode(), str(height).encode(), *pngs], dtype=object)
    metadata = image_metadata.create_summary_metadata(display_name=tag, description=description)
    return Summary(
        value=[Summary.Value(tag=tag, metadata=metadata, tensor=tensor_util.make_tensor_proto(content))]
    )


def write_figure(
    path: str | Path,
    fig: Figure,
    writer: Any = None,
    tag: str = "",
    step: int = 0,
    description: str = "",
) -> np.ndarray:
    """Render ``fig`` once; write it to ``path`` as a PNG and, with a ``writer`` (a ``SummaryWriter``), to
    TensorBoard as image ``tag`` at ``step`` (a tile grid as one sample per row). Returns the pixels."""
    image = render(fig)
    samples = figure_samples(fig, image)
    pngs = [png_bytes(sample) for sample in samples]
    atomic_write_bytes(Path(path), pngs[0] if len(samples) == 1 else png_bytes(image))
    if writer is not None:
        writer.file_writer.add_summary(image_summary(tag, samples, pngs, description), global_step=step)
    return image
