"""A run's likely label errors: ``suspects.csv``, ``suspects.md``, ``figures/data_map.png`` and the image grids
of the most suspect images of each split (TensorBoard ``suspects/<split>``, ``figures/suspects_<split>.png``).

The ranking (:func:`lossdiag.functional.suspects.rank_suspects`) uses what the run already recorded: the training
dynamics of every epoch (``samples.train_margin``) and the best model's outputs on the val split (a
``src.evaluate`` folder: the evaluated model's). Nothing is re-run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lossdiag.functional.suspects import Suspects, cartography, rank_suspects
from lossdiag.render.figures import WORST_COLUMNS, data_map_figure, worst_samples_figure
from lossdiag.render.suspects import SUSPECT_COLUMNS, TILES, SuspectRow, suspect_caption, suspects_markdown
from lossdiag.render.tables import csv_text
from lossdiag.rundir.atomic import atomic_write_text
from lossdiag.rundir.figures import write_figure
from lossdiag.rundir.paths import SUSPECTS_CSV, SUSPECTS_MD, figure_path
from lossdiag.rundir.samples import Samples

# figures/<file>.png of the TensorBoard images suspects/<name> (the data map keeps its own name)
FIGURE_NAMES = {"train": "suspects_train", "val": "suspects_val"}


def _reference_model(samples: Samples, model: str | None = None) -> str | None:
    """The model whose outputs score the val samples and name the class the model prefers."""
    if model is not None:
        return model
    return next((m for m in ("best", "last") if m in samples.models), None)


def rank_run(samples: Samples, model: str | None = None) -> Suspects | None:
    """The run's suspects (``None`` when it recorded neither training dynamics nor an evaluated model)."""
    ref = _reference_model(samples, model)
    evals = samples.models.get(ref, {}) if ref else {}
    train_eval = evals.get("train")
    dynamics = samples.dynamics_epochs and samples.train is not None and model is None
    val_eval = evals.get("val")
    if not dynamics and val_eval is None:
        return None
    return rank_suspects(
        train_margin=np.stack(samples.train_margin) if dynamics else None,
        train_p_given=train_eval.p_true if dynamics and train_eval is not None else
        (np.asarray(samples.train_p_given[-1], dtype=np.float64) if dynamics else None),
        train_preferred=train_eval.pred if dynamics and train_eval is not None else None,
        val_p_given=val_eval.p_true if val_eval is not None else None,
        val_preferred=val_eval.pred if val_eval is not None else None,
        val_given=samples.val.target if val_eval is not None else None,
    )  # fmt: skip


def suspect_rows(samples: Samples, suspects: Suspects) -> list[SuspectRow]:
    rows = []
    for rank, (split, where) in enumerate(zip(suspects.split, suspects.where, strict=True), start=1):
        info = samples.train if split == "train" else samples.val
        assert info is not None
        i = rank - 1
        preferred = int(suspects.preferred[i])
        rows.append(
            SuspectRow(
                rank=rank,
                split=str(split),
                index=int(info.index[where]),
                path=str(info.path[where]),
                given=samples.classes[int(info.target[where])],
                suspected=samples.classes[preferred] if preferred >= 0 else "",
                score=float(suspects.score[i]),
                raw_score=float(suspects.raw[i]),
                p_given=float(suspects.p_given[i]),
                flagged=bool(suspects.flagged[i]),
            )
        )
    return rows


def wanted_images(suspects: Suspects | None, samples: Samples, shown: int = TILES) -> dict[str, list[int]]:
    """Sample indices (per split) whose images the grids show: each split's ``shown`` most suspect."""
    if suspects is None:
        return {}
    out = {}
    for split in ("train", "val"):
        info = samples.train if split == "train" else samples.val
        if info is not None:
            out[split] = [int(info.index[w]) for w in suspects.top(split, shown)]
    return out


def write_suspects(
    out_dir: str | Path,
    samples: Samples,
    suspects: Suspects,
    images: Mapping[str, Mapping[int, torch.Tensor]] | None = None,
    writer: Any = None,
    step: int = 0,
) -> list[SuspectRow]:
    """``suspects.csv`` (every sample, most suspect first), ``suspects.md``, the data map and, for the splits
    ``images`` holds, the grid of the most suspect images, as PNGs under ``figures/`` and, with a ``writer``, in
    TensorBoard (``suspects/<name>``)."""
    out = Path(out_dir)
    rows = suspect_rows(samples, suspects)
    table = [
        [r.rank, r.split, r.index, r.path, r.given, r.suspected, f"{r.score:.6g}", f"{r.raw_score:.6g}",
         f"{r.p_given:.6g}", int(r.flagged)]
        for r in rows
    ]  # fmt: skip
    atomic_write_text(out / SUSPECTS_CSV, csv_text(SUSPECT_COLUMNS, table))
    atomic_write_text(out / SUSPECTS_MD, suspects_markdown(rows))
    figures = {}
    if samples.dynamics_epochs and samples.train is not None:
        confidence, variability = cartography(np.stack(samples.train_p_given))
        flagged = np.zeros(len(samples.train.index), dtype=bool)
        flagged[suspects.where[(suspects.split == "train") & suspects.flagged]] = True
        figures["data_map"] = data_map_figure(confidence, variability, flagged)
    for split in ("train", "val"):
        split_images = (images or {}).get(split, {})
        shown = [r for r in rows if r.split == split and r.index in split_images][:TILES]
        if shown:
            figures[split] = worst_samples_figure(
                torch.stack([split_images[r.index] for r in shown]), [suspect_caption(r) for r in shown],
                columns=WORST_COLUMNS, title=f"most suspect {split} images (likely label errors)",
            )  # fmt: skip
    for name, fig in figures.items():
        write_figure(figure_path(out, FIGURE_NAMES.get(name, name)), fig, writer, f"suspects/{name}", step)
    return rows
