"""Every figure the project makes: ``Figure`` objects (never global pyplot state), rendered with Agg.

Figures take numbers and return a :class:`~matplotlib.figure.Figure`; :func:`render` turns one into
pixels and :func:`png_bytes` into a PNG file's bytes. Writing files and TensorBoard images is
the write stage's job (:func:`lossdiag.diagnosis.write.write_figure`).

Every figure TensorBoard shows is drawn to be read there: scaled into its card (:data:`CARD_BOX`), the
smallest text stays at least :data:`CARD_TEXT_PX` high (:func:`card_scale`), and every colour is named in a
legend. An image grid is a :class:`TileGrid`: one band per row of tiles, each band one TensorBoard image (a
card of its own), the bands stacked the PNG.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import NullFormatter
from PIL import Image

from lossdiag.functional.ece import N_BINS, reliability_bins

# TensorBoard 2.21 at its default card size (measured in a 1400-px-wide window) fits an image into 375 x 215 px
# in the Time Series tab's card and into 350 px of width in the Images tab's: a figure must read in CARD_BOX
CARD_BOX = (350, 215)
CARD_TEXT_PX = 9.5  # the smallest text height that stays legible there
# charts (reliability, loss distribution, data map): as wide as tall as the card allows, every text >= CHART_PT
CHART_INCHES = (6.0, 3.0)
CHART_DPI = 120
CHART_PT = 12.0
# image grids (worst samples, likely label errors): rows of WORST_COLUMNS tiles of at most TILE_PX pixels, the
# captions below each tile in one font sized to it; each row is one TensorBoard image (TileGrid)
WORST_TILES = 9
WORST_COLUMNS = 3
TILE_PX = 180
FIGURE_DPI = 100
CAPTION_PT = (14.0, 12.0)  # preferred and smallest caption font size (points at FIGURE_DPI)
HEADER_PT = (15.0, 12.0)  # the same for the header line of each row
_GAP_PX = 14
_HEADER_PX = 34
_NOTE_PX = 20  # a second header line in each row, saying how the images were brought into [0, 1] for display

Normalization = tuple[list[float], list[float]]  # per-channel (mean, std) the inputs were normalised with
UNNORMALISED = "un-normalised with the data's mean/std"
MIN_MAX = "each channel min-max scaled over these images"


def card_scale(width_px: float, height_px: float) -> float:
    """How much TensorBoard shrinks a ``width_px`` x ``height_px`` image to show it in its card (:data:`CARD_BOX`)."""
    return min(CARD_BOX[0] / width_px, CARD_BOX[1] / height_px)


class TileGrid(Figure):
    """Image tiles in rows of equal height, ``band_px`` pixels each. Every row is a band of its own (header line,
    tiles, their captions), so each band reads alone as one TensorBoard image, and the stacked bands are the whole
    grid as saved to PNG and shown in a notebook (:func:`figure_samples`)."""

    band_px: int = 0


def figure_samples(fig: Figure, image: np.ndarray) -> list[np.ndarray]:
    """The images TensorBoard shows for ``fig`` rendered as ``image``: one per band of a :class:`TileGrid`, else one."""
    if not isinstance(fig, TileGrid) or fig.band_px <= 0:
        return [image]
    band, n = fig.band_px, max(1, round(image.shape[0] / fig.band_px))  # a pixel more or less when rendered
    return [image[i * band : (i + 1) * band if i < n - 1 else None] for i in range(n)]


def _chart(columns: int = 1) -> tuple[Figure, Any]:
    """A :data:`CHART_INCHES` figure with ``columns`` axes side by side, every text at least :data:`CHART_PT`."""
    fig = Figure(figsize=CHART_INCHES, dpi=CHART_DPI)
    sizes = ("font.size", "axes.labelsize", "xtick.labelsize", "ytick.labelsize", "legend.fontsize")
    with rc_context({**dict.fromkeys(sizes, CHART_PT), "axes.titlesize": CHART_PT + 1}):
        axes = fig.subplots(1, columns)
    return fig, axes


def display_images(images: torch.Tensor, norm: Normalization | None = None) -> tuple[torch.Tensor, str]:
    """``(k, C, H, W)`` inputs as images in [0, 1], and how they were brought there (``""``: shown as they are).

    With ``norm`` (the data's ``Normalize`` mean/std, one value or one per channel) they are un-normalised;
    without, inputs outside [0, 1] are min-max scaled per channel over all ``k`` images (the relative brightness
    of the images is kept). Never clipped to [0, 1] first: a normalised image would turn black.
    """
    x = images.detach().float().cpu()
    channels = x.shape[1] if x.ndim == 4 else 0
    if norm is not None and channels and len(norm[0]) in (1, channels):
        mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in norm)
        return (x * std + mean).clamp(0, 1), UNNORMALISED
    if not x.numel() or (float(x.min()) >= -1e-6 and float(x.max()) <= 1 + 1e-6):
        return x.clamp(0, 1), ""
    dims = (0, 2, 3) if x.ndim == 4 else tuple(range(x.ndim))
    low, high = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    return (x - low) / (high - low).clamp_min(1e-12), MIN_MAX


def _tiles(images: torch.Tensor) -> tuple[np.ndarray, int, int]:
    """``(k, C, H, W)`` images in [0, 1] (see :func:`display_images`) as ``(k, h, w, 3)`` uint8 tiles about :data:`TILE_PX` pixels wide.

    Small images grow by a whole factor (every source pixel the same size), large ones shrink (area).
    """
    imgs = images.detach().float().cpu().clamp(0, 1)
    if imgs.shape[1] == 1:
        imgs = imgs.expand(-1, 3, -1, -1)
    imgs = imgs[:, :3]
    h, w = imgs.shape[2], imgs.shape[3]
    if max(h, w) <= TILE_PX:
        factor = max(1, TILE_PX // max(h, w))
        imgs = imgs.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
    else:
        scale = TILE_PX / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        imgs = torch.nn.functional.interpolate(imgs, size=size, mode="area")
    tiles = (imgs.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return tiles, tiles.shape[1], tiles.shape[2]


def _fit_lines(
    fig: Figure, lines: Sequence[str], width_px: float, sizes: tuple[float, float], weight: str = "normal"
) -> tuple[float, list[str]]:
    """One font size for all ``lines`` (the largest in ``sizes`` at which they fit ``width_px``), and the
    lines, any still too wide at the smallest size cut with an ellipsis, so no caption is ever clipped."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    probe = fig.text(0, 0, "", fontsize=sizes[0], weight=weight)

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
    norm: Normalization | None = None,
) -> TileGrid:
    """A grid of inputs ``(k, C, H, W)``, each with its caption lines below it, in rows of ``columns``, shown by
    :func:`display_images` (``norm``: the data's mean/std); a second header line says when they were
    un-normalised or rescaled.

    Laid out in pixels so each row reads in TensorBoard's card (:data:`CARD_BOX`): tiles of at most
    :data:`TILE_PX` pixels (whole pixel multiples of small images), caption lines in one font size sized to the
    tile width, cut with an ellipsis rather than clipped, in their own band below the tile (never over the image).
    Each row has its own header line (``1-3 of 9 <title>``), so it reads alone as one TensorBoard image.
    """
    k = len(captions)
    cols = max(1, min(columns, k))
    rows = max(1, -(-k // cols))
    shown, note = display_images(images[:k], norm) if k else (images[:0], "")
    tiles, th, tw = (
        _tiles(shown) if k else (np.zeros((0, TILE_PX, TILE_PX, 3), np.uint8), TILE_PX, TILE_PX)
    )
    width = cols * TILE_PX + (cols + 1) * _GAP_PX
    fig = TileGrid(dpi=FIGURE_DPI)
    lines = [str(c).split("\n") for c in captions]
    n_lines = max((len(ls) for ls in lines), default=1)
    size, fitted = _fit_lines(fig, [line for ls in lines for line in ls], TILE_PX, CAPTION_PT)
    spans = [(r * cols + 1, min(k, (r + 1) * cols)) for r in range(rows)]
    headers = [f"{a}-{b} of {k} {title}" if rows > 1 else f"{k} {title}" for a, b in spans]
    header_size, headers = _fit_lines(fig, headers, width - 2 * _GAP_PX, HEADER_PT, weight="bold")
    line_px = size * FIGURE_DPI / 72 * 1.3
    header_px = _HEADER_PX + (_NOTE_PX if note else 0)
    band = header_px + th + int(np.ceil(n_lines * line_px)) + 8 + _GAP_PX
    height = rows * band
    fig.band_px = band
    fig.set_size_inches(width / FIGURE_DPI, height / FIGURE_DPI)
    grid = np.full((height, width, 3), 255, np.uint8)
    it = iter(fitted)
    for i in range(k):
        r, c = divmod(i, cols)
        left = _GAP_PX + c * (TILE_PX + _GAP_PX) + (TILE_PX - tw) // 2
        top = r * band + header_px
        grid[top : top + th, left : left + tw] = tiles[i]
        x = (left + tw / 2) / width
        for j in range(len(lines[i])):
            y = 1 - (top + th + 4 + j * line_px) / height
            fig.text(x, y, next(it), ha="center", va="top", fontsize=size, color="black")
    # one axes filling the figure, its image one pixel per figure pixel (an axes also lets notebooks show it)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(grid, interpolation="nearest", aspect="auto")
    ax.axis("off")
    for r, header in enumerate(headers):
        fig.text(0.5, 1 - (r * band + 8) / height, header, ha="center", va="top", fontsize=header_size,
                 weight="bold")  # fmt: skip
        if note:
            fig.text(0.5, 1 - (r * band + _HEADER_PX - 4) / height, f"({note})", ha="center", va="top",
                     fontsize=CAPTION_PT[1] - 1)  # fmt: skip
    return fig


def worst_caption(given: str, predicted: str, p_given: float, loss: float) -> str:
    """Four short lines under a worst-sample tile: the label in the data (given), the model's prediction, the loss,
    and the model's probability of the given label."""
    return f"given: {given}\npredicted: {predicted}\nloss {loss:.3g}\np(given) {p_given:.2g}"


# colours of the evaluated models in the loss-distribution chart (others take the next free colour)
MODEL_COLOURS = {
    "initial": "tab:gray",
    "best_val_acc": "tab:blue",
    "min_val_loss": "tab:green",
    "best": "tab:blue",
    "last": "tab:red",
}


# how the groups of val samples of rise_by_group read on a chart
GROUP_LABELS = {
    "suspected_label_error": "label error?",
    "collapsed_class": "collapsed class",
    "wrong_both": "wrong, stayed",
    "newly_wrong": "became wrong",
    "newly_right": "became right",
    "right_both": "right, stayed",
}


def groups_figure(
    rise: Mapping[str, Mapping[str, float]], final: Mapping[str, Mapping[str, float]]
) -> Figure:
    """One chart over the groups of val samples (tick labels with their size): each group's share of the rise of
    the mean val loss (red when it adds to it, blue when its loss fell; the shares add up to 100%) and, beside it,
    its share of the final mean loss (grey)."""
    names = list(rise)
    fig, ax = _chart()
    y = np.arange(len(names))
    rise_share = np.array([100 * (rise[n]["share"] or 0.0) for n in names])
    final_share = np.array([100 * (final[n]["share"] or 0.0) for n in names])
    colours = ["tab:red" if v > 0 else "tab:blue" for v in rise_share]
    ax.barh(y - 0.2, rise_share, height=0.4, color=colours)
    ax.barh(y + 0.2, final_share, height=0.4, color="tab:gray")
    ax.set_yticks(y, [f"{GROUP_LABELS.get(n, n)} ({rise[n]['n']})" for n in names])
    ax.invert_yaxis()
    ax.set_xlabel("share (%)")
    ax.grid(axis="x", alpha=0.3)
    legend = [
        Patch(color="tab:red", label="of the rise: adds"),
        Patch(color="tab:blue", label="of the rise: fell"),
        Patch(color="tab:gray", label="of the final loss"),
    ]
    ax.legend(handles=legend, loc="lower right", handlelength=1.0, borderaxespad=0.3, fontsize=CHART_PT)
    ax.set_title("what carried the rise (val samples)", fontsize=CHART_PT + 1)
    fig.subplots_adjust(left=0.33, right=0.98, bottom=0.17, top=0.9)
    return fig


def loss_distribution_figure(
    losses: Mapping[str, np.ndarray],
    title: str = "val per-sample cross-entropy",
    epochs: Mapping[str, int] | None = None,
) -> Figure:
    """One chart: every model's per-sample loss histogram (outlines, log count) with its mean marked.

    The bulk of samples sits near zero and a few carry losses of 10+; the log count shows both, and
    the dashed means show how far those few pull each model's mean.
    """
    fig, ax = _chart()
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
        top = float(np.max(finite)) if finite.size else float("nan")
        label = f"{name}{when}: mean {mean:.3g}, max {top:.3g}"
        ax.hist(finite, bins=bins, histtype="step", linewidth=2, color=colour, label=label)
        ax.axvline(mean, color=colour, linestyle="--", linewidth=1.5)
    ax.set_yscale("log")
    ax.set(xlabel="per-sample cross-entropy (dashed: mean)", ylabel="val samples", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", handlelength=1.2, borderaxespad=0.2, framealpha=1.0, fontsize=CHART_PT)
    fig.subplots_adjust(left=0.11, right=0.985, bottom=0.17, top=0.9)  # fixed: tight_layout draws the figure twice
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


def reliability_figure(
    conf: np.ndarray, correct: np.ndarray, title: str = "", n_bins: int = N_BINS
) -> Figure:
    """Reliability diagram and where the samples are: each confidence bin's accuracy against its mean confidence
    and the diagonal (left); each bin's correct and wrong samples on a log axis (right), where a confidently wrong
    minority shows in the top bins."""
    mean_conf, acc, count = reliability_bins(conf, correct, n_bins)
    edges = np.linspace(0, 1, n_bins + 1)
    filled = count > 0
    fig, (ax, ax_n) = _chart(columns=2)
    ax.bar(edges[:-1][filled], acc[filled], width=1 / n_bins, align="edge", color="tab:blue",
           edgecolor="white", label="accuracy")  # fmt: skip
    centres = (edges[:-1] + 0.5 / n_bins)[filled]
    ax.plot(centres, mean_conf[filled], "o", color="tab:orange", markersize=5, label="mean confidence")
    ax.plot([0, 1], [0, 1], linestyle="--", color="black", linewidth=1, label="calibrated")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.05),
        xlabel="confidence (max p)",
        ylabel="accuracy",
        title=title or "reliability",
    )
    bins = np.clip((np.asarray(conf, dtype=np.float64) * n_bins).astype(int), 0, n_bins - 1)
    right = np.asarray(correct, dtype=bool)
    n_right = np.bincount(bins[right], minlength=n_bins)
    n_wrong = np.bincount(bins[~right], minlength=n_bins)
    ax_n.bar(edges[:-1], n_right, width=1 / n_bins, align="edge", color="tab:blue", edgecolor="white",
             label="correct")  # fmt: skip
    ax_n.bar(edges[:-1], n_wrong, bottom=n_right, width=1 / n_bins, align="edge", color="tab:red",
             edgecolor="white", label="wrong")  # fmt: skip
    if count.max(initial=0) > 0:
        ax_n.set_yscale("log")
        ax_n.yaxis.set_minor_formatter(NullFormatter())  # powers of ten only: 12 pt labels need the room
    ax_n.set(xlim=(0, 1), xlabel="confidence (max p)", ylabel="val samples", title="samples per bin")
    for a in (ax, ax_n):
        a.legend(loc="upper left", handlelength=1.0, borderaxespad=0.2, framealpha=1.0, fontsize=CHART_PT)
        a.grid(alpha=0.3)
    fig.subplots_adjust(left=0.1, right=0.975, bottom=0.17, top=0.9, wspace=0.38)
    return fig


def data_map_figure(
    confidence: np.ndarray, variability: np.ndarray, flagged: np.ndarray, title: str = ""
) -> Figure:
    """Dataset cartography (Swayamdipta et al. 2020): each training sample's mean p(given label) over the
    epochs against its standard deviation; flagged samples (likely label errors) in red."""
    fig, ax = _chart()
    flagged = np.asarray(flagged, dtype=bool)
    ax.scatter(
        variability[~flagged], confidence[~flagged], s=10, alpha=0.5, color="tab:blue", label="not flagged"
    )
    ax.scatter(variability[flagged], confidence[flagged], s=18, alpha=0.9, color="tab:red",
               label=f"flagged ({int(flagged.sum())})")  # fmt: skip
    ax.set(xlabel="std of p(given label) over epochs", ylabel="mean p(given label)", ylim=(-0.02, 1.02),
           title=title or "training data map")  # fmt: skip
    ax.legend(loc="lower right", framealpha=1.0, fontsize=CHART_PT)
    ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.11, right=0.985, bottom=0.17, top=0.9)
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
    fig, ax = _chart()
    ax.plot(lrs, losses, color="0.7", linewidth=1, label="loss of each step")
    ax.plot(lrs, smoothed, color="tab:blue", linewidth=2, label="smoothed")
    ax.axvline(at, color="tab:red", linestyle=":", linewidth=2, label=f"{what}: {at:.3g}")
    ax.axvline(chosen, color="tab:green", linestyle="--", linewidth=2, label=f"chosen: {chosen:g}")
    # up to the marked rate: the diverging end would squash the rest
    upto = int(np.argmin(np.abs(np.log(np.asarray(lrs)) - math.log(at)))) + 1
    top = 1.3 * float(np.nanmax(np.asarray(smoothed)[:upto]))
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", ylim=(0, top),
           title="optimizer.lr=auto: range test")  # fmt: skip
    ax.xaxis.set_minor_formatter(NullFormatter())  # powers of ten only
    ax.legend(loc="lower left", handlelength=1.5, borderaxespad=0.2, framealpha=1.0, fontsize=CHART_PT)
    ax.grid(alpha=0.3, which="both")
    fig.subplots_adjust(left=0.11, right=0.985, bottom=0.17, top=0.9)
    return fig
