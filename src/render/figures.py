"""Every figure the project makes: ``Figure`` objects (never global pyplot state), rendered with Agg.

Figures take numbers and return a :class:`~matplotlib.figure.Figure`; :func:`render` turns one into
pixels and :func:`png_bytes` into a PNG file's bytes. Writing files is :mod:`src.rundir`'s job.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from src.functional.calibration import N_BINS, reliability_bins


def worst_samples_figure(images: torch.Tensor, captions: Sequence[str], columns: int = 4) -> Figure:
    """A grid of images ``(k, C, H, W)`` in [0, 1], each captioned (one axes, so it renders fast)."""
    k = len(captions)
    cols = max(1, min(columns, k))
    rows = max(1, -(-k // cols))
    imgs = images.detach().float().cpu().clamp(0, 1)
    if imgs.shape[1] == 1:
        imgs = imgs.expand(-1, 3, -1, -1)
    h, w = imgs.shape[2], imgs.shape[3]
    pad = max(1, h // 16)
    grid = torch.ones(3, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for i in range(k):
        r, c = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[:, top : top + h, left : left + w] = imgs[i]
    fig = Figure(figsize=(2.0 * cols, 2.3 * rows), dpi=80)
    ax = fig.add_axes((0, 0, 1, 1 - 0.35 / (2.3 * rows)))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest", aspect="auto")
    for i, caption in enumerate(captions):
        r, c = divmod(i, cols)
        ax.text(pad + c * (w + pad) + w / 2, pad + r * (h + pad) + h - 0.5, caption, ha="center", va="top",
                fontsize=7, color="white", bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})
    ax.axis("off")
    fig.suptitle("highest-loss val samples", fontsize=8)
    return fig


def worst_caption(true: str, pred: str, p_true: float, loss: float) -> str:
    return f"true {true} / pred {pred}\np(true)={p_true:.3g} loss={loss:.2f}"


def loss_distribution_figure(losses: dict[str, np.ndarray], title: str = "val per-sample cross-entropy") -> Figure:
    """One histogram of per-sample losses per model (log-count axis), with each model's mean marked."""
    fig = Figure(figsize=(4 * max(1, len(losses)), 3.2), dpi=80)
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
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.85, wspace=0.3)
    return fig


def render(fig: Figure) -> np.ndarray:
    """Draw ``fig`` with the Agg backend (no display needed) into an ``(H, W, 3)`` uint8 array."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def png_bytes(image: np.ndarray) -> bytes:
    """A rendered figure (``(H, W, 3)`` uint8) as PNG file contents."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="png")
    return buffer.getvalue()


def log_figure(writer, tag: str, fig: Figure, step: int) -> np.ndarray:
    """Render ``fig`` once and add it to a TensorBoard ``SummaryWriter`` as an image; returns the pixels."""
    image = render(fig)
    writer.add_image(tag, image, global_step=step, dataformats="HWC")
    return image


def reliability_figure(conf: np.ndarray, correct: np.ndarray, title: str = "", n_bins: int = N_BINS) -> Figure:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with bin counts."""
    mean_conf, acc, count = reliability_bins(conf, correct, n_bins)
    edges = np.linspace(0, 1, n_bins + 1)
    fig = Figure(figsize=(4, 4), dpi=80)
    ax = fig.add_subplot()
    filled = count > 0
    ax.bar(edges[:-1][filled], acc[filled], width=1 / n_bins, align="edge", edgecolor="black", label="accuracy")
    gap = mean_conf[filled] - acc[filled]
    ax.bar(edges[:-1][filled], gap, bottom=acc[filled], width=1 / n_bins, align="edge", color="red", alpha=0.3,
           label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    for left, a, n in zip(edges[:-1][filled], acc[filled], count[filled], strict=True):
        ax.text(left + 0.5 / n_bins, min(a, 0.93) + 0.02, str(int(n)), ha="center", fontsize=6)
    ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="confidence (max probability)", ylabel="accuracy", title=title)
    ax.legend(loc="upper left", fontsize=7)
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.12, top=0.92)
    return fig


def curves_figure(
    history: Mapping[str, Sequence[float]], panels: Mapping[str, Sequence[str]], panel_width: float = 4.5
) -> Figure:
    """One axes per panel (title -> metric names), each metric plotted against ``history["epoch"]``.

    Metrics the run did not log are left out of their panel (and named in its title), so the same
    figure works for runs trained with fewer callbacks.
    """
    fig = Figure(figsize=(panel_width * len(panels), 3.4))
    epochs = list(history.get("epoch", []))
    for i, (title, keys) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), i + 1)
        missing = [k for k in keys if k not in history or all(math.isnan(v) for v in history[k])]
        for key in keys:
            if key not in missing:
                ax.plot(epochs, history[key], marker="." if len(epochs) < 30 else None, label=key)
        ax.set(title=title + (f"\n(not logged: {', '.join(missing)})" if missing else ""), xlabel="epoch")
        if len(keys) > len(missing):
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class CurveBand:
    """A mean curve over runs with its ±std band: ``epochs`` (1-based), ``mean``, ``std`` (same length)."""

    epochs: np.ndarray
    mean: np.ndarray
    std: np.ndarray


def sweep_figure(groups: Sequence[tuple[str, CurveBand, CurveBand]], columns: int = 4) -> Figure:
    """A sweep's curves: ``groups`` holds ``(label, val cross-entropy band, val accuracy band)`` per group.

    Top row: every group's val cross-entropy on a log axis (a rise from 0.28 to 0.39 stays visible next to
    a group at 2.0) and every group's val accuracy. Below: one panel per group on its own linear axis, with
    its lowest and last val cross-entropy marked and their ratio in the title, and val accuracy on a
    right-hand axis.
    """
    cols = max(1, min(columns, len(groups)))
    rows = -(-len(groups) // cols)
    fig = Figure(figsize=(max(11.0, 3.3 * cols), 4.6 + 2.9 * rows), dpi=90)
    grid = fig.add_gridspec(1 + rows, 2 * cols, height_ratios=[1.45] + [1.0] * rows, hspace=1.0, wspace=0.7)
    ax_loss = fig.add_subplot(grid[0, :cols])
    ax_acc = fig.add_subplot(grid[0, cols:])
    colours = [f"C{i % 10}" for i in range(len(groups))]
    # mean curves only: a ±std band reaching below 0 has no place on a log axis (the panels below show bands)
    for (label, loss, acc), colour in zip(groups, colours, strict=True):
        for ax, band in ((ax_loss, loss), (ax_acc, acc)):
            if len(band.epochs):
                ax.plot(band.epochs, band.mean, color=colour, label=label, linewidth=1.2)
    if any(len(loss.epochs) and (loss.mean > 0).any() for _, loss, _ in groups):
        ax_loss.set_yscale("log")
    ax_loss.set(title="val cross-entropy (val/loss), log axis", xlabel="epoch")
    ax_acc.set(title="val accuracy (val/acc)", xlabel="epoch")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3, which="both")
    if groups:
        ax_loss.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.2), ncol=min(4, len(groups)),
                       frameon=False)
    for i, ((label, loss, acc), colour) in enumerate(zip(groups, colours, strict=True)):
        r, c = divmod(i, cols)
        ax = fig.add_subplot(grid[1 + r, 2 * c : 2 * c + 2])
        title = label.rsplit(" (n=", 1)[0]
        finite = np.isfinite(loss.mean) if len(loss.epochs) else np.zeros(0, dtype=bool)
        if finite.any():
            ax.plot(loss.epochs, loss.mean, color=colour, linewidth=1.2)
            ax.fill_between(loss.epochs, loss.mean - loss.std, loss.mean + loss.std, color=colour, alpha=0.2,
                            linewidth=0)
            low = int(np.nanargmin(np.where(finite, loss.mean, np.nan)))
            last = int(np.flatnonzero(finite)[-1])
            ax.plot([loss.epochs[low], loss.epochs[last]], [loss.mean[low], loss.mean[last]], "o", color="black",
                    markersize=3)
            if loss.mean[low] > 0:
                ratio = loss.mean[last] / loss.mean[low]
                title += (
                    f"\nval CE {loss.mean[low]:.3g} (epoch {int(loss.epochs[low])}) -> "
                    f"{loss.mean[last]:.3g} ({ratio:.2f}x)"
                )
            ax.set_ylim(*_zoom_after_minimum(loss, low))
        ax.set_title(title, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.tick_params(axis="y", colors=colour)
        ax.set_xlabel("epoch", fontsize=6)
        if len(acc.epochs):
            twin = ax.twinx()
            twin.plot(acc.epochs, acc.mean, color="grey", linewidth=0.8, linestyle="--")
            twin.set_ylim(0, 1)
            twin.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    if groups:
        fig.text(0.5, grid[1, 0].get_position(fig).y1 + 0.06,
                 "per group: val cross-entropy (solid, left axis, zoomed on the epochs from its minimum on; title: "
                 "the mean curve's minimum, last value and ratio) and val accuracy (dashed, right axis, 0 to 1)",
                 ha="center", fontsize=8)
    fig.subplots_adjust(left=0.06, right=0.95, top=0.95, bottom=0.05)
    return fig


def _zoom_after_minimum(band: CurveBand, low: int) -> tuple[float, float]:
    """y-limits showing a curve from its minimum on (the steep first epochs would flatten a later rise)."""
    after = slice(low, None)
    finite = np.isfinite(band.mean[after])
    lo_values = (band.mean[after] - band.std[after])[finite]
    hi_values = (band.mean[after] + band.std[after])[finite]
    lo, hi = float(lo_values.min()), float(hi_values.max())
    span = max(hi - lo, 0.1 * abs(float(band.mean[low])), 1e-6)
    return lo - 0.15 * span, hi + 0.15 * span
