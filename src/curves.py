"""Per-epoch curves of a run's metric history (as :func:`src.history.read_history` returns it)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

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
