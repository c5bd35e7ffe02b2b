"""Matplotlib figures of the diagnosis (no pyplot state: ``Figure`` objects, Agg-rendered)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from src.fileio import atomic_write


def worst_samples_figure(images: torch.Tensor, captions: Sequence[str], columns: int = 4) -> Figure:
    """A grid of images ``(k, C, H, W)`` in [0, 1], each titled with its caption."""
    k = len(captions)
    cols = max(1, min(columns, k))
    rows = max(1, -(-k // cols))
    fig = Figure(figsize=(2.2 * cols, 2.4 * rows))
    for i in range(k):
        ax = fig.add_subplot(rows, cols, i + 1)
        img = images[i].detach().float().cpu().clamp(0, 1)
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(img.permute(1, 2, 0).numpy())
        ax.set_title(captions[i], fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    return fig


def worst_caption(true: str, pred: str, p_true: float, loss: float) -> str:
    return f"true {true} / pred {pred}\np(true)={p_true:.3g} loss={loss:.2f}"


def loss_distribution_figure(losses: dict[str, np.ndarray], title: str = "val per-sample cross-entropy") -> Figure:
    """One histogram of per-sample losses per model (log-count axis), with each model's mean marked."""
    fig = Figure(figsize=(4 * max(1, len(losses)), 3.2))
    finite_max = max((float(np.nanmax(v[np.isfinite(v)])) for v in losses.values() if np.isfinite(v).any()), default=1.0)
    bins = np.linspace(0, max(finite_max, 1e-6), 40)
    for i, (name, values) in enumerate(losses.items()):
        ax = fig.add_subplot(1, len(losses), i + 1)
        finite = values[np.isfinite(values)]
        ax.hist(finite, bins=bins, color="tab:blue")
        mean = float(np.mean(values, dtype=np.float64))
        ax.axvline(mean, color="red", linestyle="--", label=f"mean {mean:.3f}")
        ax.set_yscale("log")
        ax.set(title=f"{name}", xlabel="cross-entropy", ylabel="samples")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def save_png(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` with the Agg backend to ``path`` atomically (no display needed)."""
    FigureCanvasAgg(fig)
    return atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=100))
