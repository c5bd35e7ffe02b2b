"""Every figure the project makes: ``Figure`` objects (never global pyplot state), rendered with Agg.

Figures take numbers and return a :class:`~matplotlib.figure.Figure`; :func:`render` turns one into
pixels and :func:`png_bytes` into a PNG file's bytes. Writing files is :mod:`lossdiag.rundir`'s job.
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

from lossdiag.functional.calibration import N_BINS, reliability_bins

# the worst-samples grid is drawn for TensorBoard's image card (~400-500 px wide) and the PNG alike:
# at most WORST_TILES tiles of ~TILE_PX pixels, captions below each tile in fonts sized to it
WORST_TILES = 9
WORST_COLUMNS = 3
TILE_PX = 200
FIGURE_DPI = 100
CAPTION_PT = (14.0, 12.0)  # preferred and smallest caption font size (points at FIGURE_DPI)
_GAP_PX = 14
_TITLE_PX = 40


def _tiles(images: torch.Tensor) -> tuple[np.ndarray, int, int]:
    """``(k, C, H, W)`` images in [0, 1] as ``(k, h, w, 3)`` uint8 tiles about :data:`TILE_PX` pixels wide.

    Small images grow by a whole factor (every source pixel the same size), large ones shrink (area).
    """
    imgs = images.detach().float().cpu().clamp(0, 1)
    if imgs.shape[1] == 1:
        imgs = imgs.expand(-1, 3, -1, -1)
    imgs = imgs[:, :3]
    h, w = imgs.shape[2], imgs.shape[3]
    if max(h, w) <= TILE_PX:
        factor = max(1, round(TILE_PX / max(h, w)))
        imgs = imgs.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
    else:
        scale = TILE_PX / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        imgs = torch.nn.functional.interpolate(imgs, size=size, mode="area")
    tiles = (imgs.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return tiles, tiles.shape[1], tiles.shape[2]


def _fit_lines(
    fig: Figure, lines: Sequence[str], width_px: float, sizes: tuple[float, float]
) -> tuple[float, list[str]]:
    """One font size for all ``lines`` (the largest in ``sizes`` at which they fit ``width_px``), and the
    lines, any still too wide at the smallest size cut with an ellipsis, so no caption is ever clipped."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    probe = fig.text(0, 0, "", fontsize=sizes[0])

    def width(text: str, size: float) -> float:
        probe.set_text(text)
        probe.set_fontsize(size)
        return probe.get_window_extent(renderer).width

    widest = max((width(line, sizes[0]) for line in lines), default=0.0)
    size = sizes[0] if widest <= width_px else max(sizes[1], sizes[0] * width_px / widest)
    fitted = []
    for line in lines:
        while len(line) > 1 and width(line, size) > width_px:
            line = line[:-2] + "\u2026"
        fitted.append(line)
    probe.remove()
    return size, fitted


def worst_samples_figure(
    images: torch.Tensor,
    captions: Sequence[str],
    columns: int = WORST_COLUMNS,
    title: str = "highest-loss val samples",
) -> Figure:
    """A grid of images ``(k, C, H, W)`` in [0, 1], each with its caption lines below it.

    Laid out in pixels so it reads at TensorBoard's card size: tiles of about :data:`TILE_PX` pixels (whole
    pixel multiples of small images), caption lines in one font size sized to the tile width, cut with an
    ellipsis rather than clipped, in their own band below the tile (never over the image).
    """
    k = len(captions)
    cols = max(1, min(columns, k))
    rows = max(1, -(-k // cols))
    tiles, th, tw = (
        _tiles(images[:k]) if k else (np.zeros((0, TILE_PX, TILE_PX, 3), np.uint8), TILE_PX, TILE_PX)
    )
    cell_w = max(tw, TILE_PX)
    fig = Figure(dpi=FIGURE_DPI)
    lines = [str(c).split("\n") for c in captions]
    n_lines = max((len(ls) for ls in lines), default=1)
    size, fitted = _fit_lines(fig, [line for ls in lines for line in ls], cell_w, CAPTION_PT)
    line_px = size * FIGURE_DPI / 72 * 1.3
    band = int(np.ceil(n_lines * line_px)) + 8
    width = cols * cell_w + (cols + 1) * _GAP_PX
    height = _TITLE_PX + rows * (th + band + _GAP_PX)
    fig.set_size_inches(width / FIGURE_DPI, height / FIGURE_DPI)
    grid = np.full((height, width, 3), 255, np.uint8)
    it = iter(fitted)
    for i in range(k):
        r, c = divmod(i, cols)
        left = _GAP_PX + c * (cell_w + _GAP_PX) + (cell_w - tw) // 2
        top = _TITLE_PX + r * (th + band + _GAP_PX)
        grid[top : top + th, left : left + tw] = tiles[i]
        x = (left + tw / 2) / width
        for j in range(len(lines[i])):
            y = 1 - (top + th + 4 + j * line_px) / height
            fig.text(x, y, next(it), ha="center", va="top", fontsize=size, color="black")
    # one axes filling the figure, its image one pixel per figure pixel (an axes also lets notebooks show it)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(grid, interpolation="nearest", aspect="auto")
    ax.axis("off")
    fig.text(0.5, 1 - 8 / height, title, ha="center", va="top", fontsize=CAPTION_PT[0] + 1, weight="bold")
    return fig


def worst_caption(true: str, pred: str, p_true: float, loss: float) -> str:
    """Four short lines under a worst-sample tile: true class, predicted class, loss, p(true class)."""
    return f"true: {true}\npred: {pred}\nloss {loss:.3g}\np(true) {p_true:.2g}"


# colours of the evaluated models in the loss-distribution chart (others take the next free colour)
MODEL_COLOURS = {"initial": "tab:gray", "best": "tab:blue", "last": "tab:red"}


def loss_distribution_figure(
    losses: Mapping[str, np.ndarray],
    title: str = "val per-sample cross-entropy",
    epochs: Mapping[str, int] | None = None,
) -> Figure:
    """One chart: every model's per-sample loss histogram (outlines, log count) with its mean marked.

    The bulk of samples sits near zero and a few carry losses of 10+; the log count shows both, and
    the dashed means show how far those few pull each model's mean.
    """
    fig = Figure(figsize=(5.6, 3.9), dpi=FIGURE_DPI)
    ax = fig.add_subplot()
    finite_max = max(
        (float(np.max(v[np.isfinite(v)])) for v in losses.values() if np.isfinite(v).any()), default=1.0
    )
    bins = np.linspace(0, max(finite_max, 1e-6) * 1.001, 41)
    spare = iter(
        c for c in ("tab:green", "tab:purple", "tab:orange", "tab:brown") if c not in MODEL_COLOURS.values()
    )
    for name, values in losses.items():
        colour = MODEL_COLOURS.get(name) or next(spare, "black")
        finite = values[np.isfinite(values)]
        mean = float(np.mean(values, dtype=np.float64))
        epoch = (epochs or {}).get(name)
        when = "" if epoch is None else (" (untrained)" if epoch < 0 else f" (epoch {epoch})")
        label = (
            f"{name}{when}: mean {mean:.3f}, max {float(np.max(finite)) if finite.size else float('nan'):.1f}"
        )
        ax.hist(finite, bins=bins, histtype="step", linewidth=2, color=colour, label=label)
        ax.axvline(mean, color=colour, linestyle="--", linewidth=1.5)
    ax.set_yscale("log")
    ax.set_xlabel("per-sample cross-entropy (dashed: mean)", fontsize=12)
    ax.set_ylabel("val samples (log scale)", fontsize=12)
    ax.set_title(title, fontsize=13)
    ax.tick_params(labelsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=10.5, loc="upper right", handlelength=1.2, borderaxespad=0.3)
    fig.subplots_adjust(left=0.13, right=0.98, bottom=0.14, top=0.91)
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


def reliability_figure(
    conf: np.ndarray, correct: np.ndarray, title: str = "", n_bins: int = N_BINS
) -> Figure:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with bin counts."""
    mean_conf, acc, count = reliability_bins(conf, correct, n_bins)
    edges = np.linspace(0, 1, n_bins + 1)
    fig = Figure(figsize=(4, 4), dpi=80)
    ax = fig.add_subplot()
    filled = count > 0
    ax.bar(
        edges[:-1][filled], acc[filled], width=1 / n_bins, align="edge", edgecolor="black", label="accuracy"
    )
    gap = mean_conf[filled] - acc[filled]
    ax.bar(
        edges[:-1][filled],
        gap,
        bottom=acc[filled],
        width=1 / n_bins,
        align="edge",
        color="red",
        alpha=0.3,
        label="gap to confidence",
    )
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
        ax_loss.legend(
            fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.2), ncol=min(4, len(groups)), frameon=False
        )
    for i, ((label, loss, acc), colour) in enumerate(zip(groups, colours, strict=True)):
        r, c = divmod(i, cols)
        ax = fig.add_subplot(grid[1 + r, 2 * c : 2 * c + 2])
        title = label.rsplit(" (n=", 1)[0]
        finite = np.isfinite(loss.mean) if len(loss.epochs) else np.zeros(0, dtype=bool)
        if finite.any():
            ax.plot(loss.epochs, loss.mean, color=colour, linewidth=1.2)
            ax.fill_between(
                loss.epochs, loss.mean - loss.std, loss.mean + loss.std, color=colour, alpha=0.2, linewidth=0
            )
            low = int(np.nanargmin(np.where(finite, loss.mean, np.nan)))
            last = int(np.flatnonzero(finite)[-1])
            ax.plot(
                [loss.epochs[low], loss.epochs[last]],
                [loss.mean[low], loss.mean[last]],
                "o",
                color="black",
                markersize=3,
            )
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
        fig.text(
            0.5,
            grid[1, 0].get_position(fig).y1 + 0.06,
            "per group: val cross-entropy (solid, left axis, zoomed on the epochs from its minimum on; title: "
            "the mean curve's minimum, last value and ratio) and val accuracy (dashed, right axis, 0 to 1)",
            ha="center",
            fontsize=8,
        )
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


def data_map_figure(
    confidence: np.ndarray, variability: np.ndarray, flagged: np.ndarray, title: str = ""
) -> Figure:
    """Dataset cartography (Swayamdipta et al. 2020): each training sample's mean p(given label) over the
    epochs against its standard deviation; flagged samples (likely label errors) in red."""
    fig = Figure(figsize=(5.5, 4.5), dpi=FIGURE_DPI)
    ax = fig.add_subplot()
    flagged = np.asarray(flagged, dtype=bool)
    ax.scatter(
        variability[~flagged], confidence[~flagged], s=10, alpha=0.5, color="tab:blue", label="not flagged"
    )
    ax.scatter(variability[flagged], confidence[flagged], s=18, alpha=0.9, color="tab:red",
               label=f"flagged ({int(flagged.sum())})")  # fmt: skip
    ax.set(xlabel="variability (std of p(given label) over epochs)", ylabel="confidence (mean p(given label))",
           ylim=(-0.02, 1.02), title=title or "training data map")  # fmt: skip
    ax.legend(loc="lower right", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def lr_find_figure(
    lrs: Sequence[float],
    losses: Sequence[float],
    smoothed: Sequence[float],
    marker: tuple[float, str],
    chosen: float,
) -> Figure:
    """The learning-rate range test: each step's loss and its smoothed curve against the rate (log scale), the
    rate the choice was read at (``marker``: rate, what it is) and the chosen rate marked."""
    at, what = marker
    fig = Figure(figsize=(5.5, 3.6), dpi=90)
    ax = fig.add_subplot()
    ax.plot(lrs, losses, color="0.75", linewidth=1, label="loss of each step")
    ax.plot(lrs, smoothed, color="C0", linewidth=2, label="smoothed")
    ax.axvline(at, color="C3", linestyle=":", label=f"{what}: lr {at:.3g}")
    ax.axvline(chosen, color="C2", linestyle="--", label=f"chosen: lr {chosen:g}")
    # up to the marked rate: the diverging end would squash the rest
    upto = int(np.argmin(np.abs(np.log(np.asarray(lrs)) - math.log(at)))) + 1
    top = 1.3 * float(np.nanmax(np.asarray(smoothed)[:upto]))
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (cross-entropy)", ylim=(0, top))
    ax.set_title("optimizer.lr=auto: learning-rate range test", fontsize=10)
    ax.legend(fontsize=7.5, loc="lower left")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig
