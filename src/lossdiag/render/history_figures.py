"""The figures of a run's history and of a sweep: curves per epoch, and each group's mean val loss against its
accuracy with a band over seeds (``report.png``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure


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
            twin.plot(acc.epochs, acc.mean, color=ACC_COLOUR, linewidth=0.8, linestyle="--")
            twin.set_ylim(0, 1)
            twin.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    if groups:
        fig.text(
            0.5,
            grid[1, 0].get_position(fig).y1 + 0.075,
            "per group: val cross-entropy (solid, left axis, zoomed on the epochs from its minimum on; title: "
            "the mean curve's minimum, last value and ratio) and val accuracy (dashed, right axis, 0 to 1)",
            ha="center",
            fontsize=8,
        )
        fig.legend(handles=_panel_legend(), loc="center", fontsize=7, ncol=3, frameon=False,
                   bbox_to_anchor=(0.5, grid[1, 0].get_position(fig).y1 + 0.045))  # fmt: skip
    fig.subplots_adjust(left=0.06, right=0.95, top=0.95, bottom=0.05)
    return fig


# the per-group panels of sweep_figure: val accuracy on the right axis, the lowest and last val CE marked
ACC_COLOUR = "grey"


def _panel_legend() -> list[Any]:
    """Legend entries for what every per-group panel of :func:`sweep_figure` draws besides the group's colour."""
    from matplotlib.lines import Line2D

    return [
        Line2D([], [], color=ACC_COLOUR, linestyle="--", label="val accuracy (right axis)"),
        Line2D(
            [], [], color="black", marker="o", linestyle="none", markersize=3, label="lowest and last val CE"
        ),
    ]


def _zoom_after_minimum(band: CurveBand, low: int) -> tuple[float, float]:
    """y-limits showing a curve from its minimum on (the steep first epochs would flatten a later rise)."""
    after = slice(low, None)
    finite = np.isfinite(band.mean[after])
    lo_values = (band.mean[after] - band.std[after])[finite]
    hi_values = (band.mean[after] + band.std[after])[finite]
    lo, hi = float(lo_values.min()), float(hi_values.max())
    span = max(hi - lo, 0.1 * abs(float(band.mean[low])), 1e-6)
    return lo - 0.15 * span, hi + 0.15 * span


