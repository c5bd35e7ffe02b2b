"""The artifact writer: a run's (or an evaluation's) diagnosis files, from its per-sample records.

:func:`write_diagnosis` writes, into a run (or evaluation) folder:
``reports/<model>.md`` + ``.csv`` (classification report of each evaluated model on val),
``worst.csv`` (worst val samples with their loss history), ``figures/*.png``, ``samples.npz``,
``diagnosis.md`` and ``diagnosis.json``, and logs the reports, the verdict and the figures to
TensorBoard when a writer is given.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lossdiag.functional.breakdown import worst_indices
from lossdiag.functional.class_report import classification_report
from lossdiag.functional.outputs import Evaluation
from lossdiag.functional.verdict import VerdictNumbers, verdict_numbers
from lossdiag.render.diagnosis import diagnosis_texts
from lossdiag.render.figures import (
    WORST_TILES,
    loss_distribution_figure,
    reliability_figure,
    worst_caption,
    worst_samples_figure,
)
from lossdiag.render.suspects import mislabeled_section
from lossdiag.render.tables import csv_text, report_csv, report_markdown
from lossdiag.rundir.atomic import atomic_write_text
from lossdiag.rundir.figures import write_figure
from lossdiag.rundir.paths import (
    DIAGNOSIS_FILE,
    DIAGNOSIS_JSON,
    SAMPLES_FILE,
    SUSPECTS_CSV,
    WORST_FILE,
    figure_path,
    report_path,
)
from lossdiag.rundir.remedies import what_you_can_do_section
from lossdiag.rundir.samples import Samples
from lossdiag.rundir.suspects import rank_run, write_suspects


@dataclass(frozen=True)
class Diagnosis:
    """The verdict's numbers and its two texts."""

    numbers: VerdictNumbers
    markdown: str
    summary: str


def diagnose(
    samples: Samples,
    model: str | None = None,
    evaluated_on: str = "val split",
    reports: Sequence[str] = (),
    figures: Sequence[str] = (),
    tensorboard: bool = False,
) -> Diagnosis:
    """The verdict over the recorded epochs of ``samples`` (or, ``model=<name>``, one evaluated model).

    The untrained model's val loss (``models["initial"]``) decides whether val loss ever fell; the final
    model's train losses how many training samples sit above the cap. ``evaluated_on`` says what the
    samples are; ``reports``/``figures``/``tensorboard`` name what was written next to the text.
    """
    if model is not None:
        evals, epochs = [samples.models[model]["val"]], [samples.model_epoch[model]]
        final_model = model
    else:
        evals, epochs = samples.val_epochs, samples.epochs
        final_model = "last"
    initial = samples.models.get("initial", {}).get("val") if model is None else None
    train = samples.models.get(final_model, {}).get("train")
    numbers = verdict_numbers(
        evals,
        epochs,
        samples.val.target,
        samples.classes,
        samples.val.index,
        samples.val.path,
        samples.loss_cap,
        initial_loss=float(np.mean(initial.loss, dtype=np.float64)) if initial is not None else None,
        train_loss=train.loss if train is not None else None,
        objective=samples.objective or None,
        evaluated_on=evaluated_on,
    )
    markdown, summary = diagnosis_texts(numbers, reports, figures, tensorboard)
    return Diagnosis(numbers, markdown, summary)


def worst_rows(
    samples: Samples, ev: Evaluation, k: int, with_history: bool = True
) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of ``worst.csv``: the ``k`` highest-loss val samples of ``ev``, with their loss at every
    recorded epoch (``with_history``; an evaluation of one model has none)."""
    target = samples.val.target
    order = worst_indices(ev.loss, k)
    epochs = samples.epochs if with_history and samples.val_epochs else []
    history = samples.history.loss if epochs else np.empty((0, len(target)))
    header = ["rank", "index", "path", "true", "predicted", "p_true", "confidence", "loss"]
    header += [f"loss_epoch_{e}" for e in epochs]
    rows = []
    for rank, i in enumerate(order, start=1):
        rows.append(
            [
                rank,
                int(samples.val.index[i]),
                str(samples.val.path[i]),
                samples.classes[int(target[i])],
                samples.classes[int(ev.pred[i])],
                f"{float(ev.p_true[i]):.6g}",
                f"{float(ev.conf[i]):.6g}",
                f"{float(ev.loss[i]):.6g}",
                *(f"{float(v):.6g}" for v in history[:, i]),
            ]
        )
    return header, rows


def worst_figure(
    samples: Samples,
    ev: Evaluation,
    images: Mapping[int, torch.Tensor] | torch.Tensor,
    k: int,
    epoch: int | None = None,
):
    """Image grid of the ``k`` (at most :data:`~lossdiag.render.figures.WORST_TILES`) highest-loss val samples
    of ``ev`` that ``images`` holds (``worst.csv`` lists all ``k``).

    ``images[i]`` is the input of val sample index ``i``: the whole split's ``x``, or a mapping that holds
    only some samples (those it lacks are left out of the grid).
    """
    order = [
        i
        for i in worst_indices(ev.loss, k)
        if isinstance(images, torch.Tensor) or int(samples.val.index[i]) in images
    ][:WORST_TILES]
    captions = [
        worst_caption(
            samples.classes[int(samples.val.target[i])],
            samples.classes[int(ev.pred[i])],
            float(ev.p_true[i]),
            float(ev.loss[i]),
        )
        for i in order
    ]
    title = f"highest-loss val samples (of {len(ev.loss)})" + ("" if epoch is None else f", epoch {epoch}")
    return worst_samples_figure(
        torch.stack([images[int(samples.val.index[i])] for i in order]), captions, title=title
    )


def write_diagnosis(
    out_dir: str | Path,
    samples: Samples,
    val_images: Mapping[int, torch.Tensor] | torch.Tensor | None,
    worst_k: int = 16,
    writer: Any = None,
    step: int = 0,
    model: str | None = None,
    evaluated_on: str = "val split",
    suspect_images: Mapping[str, Mapping[int, torch.Tensor]] | None = None,
) -> Diagnosis:
    """Write reports, worst samples, figures, ``samples.npz`` and ``diagnosis.md``/``.json`` into ``out_dir``.

    ``val_images`` (the val split's ``x``, rows by sample index) draws the worst-samples grid; ``None``
    (or data that are not ``(N, C, H, W)`` images) leaves it out.

    ``model`` names the evaluated model the verdict is about (``src.evaluate``); by default the verdict
    covers the recorded epochs, and its "final" state is the last epoch. ``evaluated_on`` says what the
    val samples are (``"val split"``, or ``"every image of <folder> (N images)"``). ``suspect_images``
    (split -> sample index -> input) draws the TensorBoard grids of the likely label errors.
    """
    out = Path(out_dir)
    samples.save(out / SAMPLES_FILE)
    reports = []
    for name, splits in samples.models.items():
        if "val" not in splits:
            continue
        report = classification_report(splits["val"].pred, samples.val.target, samples.classes)
        epoch = samples.model_epoch.get(name, -1)
        title = f"{name} model ({'before training' if epoch < 0 else f'epoch {epoch}'}), val set"
        md = report_markdown(report, title)
        atomic_write_text(report_path(out, name, "md"), md)
        atomic_write_text(report_path(out, name, "csv"), report_csv(report))
        reports.append(name)
        if writer is not None:
            writer.add_text(f"reports/{name}", md, global_step=step)
    final = samples.models[model]["val"] if model is not None else samples.val_epochs[-1]
    header, rows = worst_rows(samples, final, worst_k, with_history=model is None)
    atomic_write_text(out / WORST_FILE, csv_text(header, rows))
    figures = {
        "reliability": reliability_figure(
            final.conf, final.correct(samples.val.target), title="final model, val"
        ),
    }
    if val_images is not None and len(val_images) and worst_k > 0:
        final_epoch = samples.model_epoch.get(model) if model is not None else samples.epochs[-1]
        figures["worst_samples"] = worst_figure(samples, final, val_images, worst_k, final_epoch)
    if samples.models:
        figures["loss_distribution"] = loss_distribution_figure(
            {name: s["val"].loss for name, s in samples.models.items() if "val" in s},
            epochs=samples.model_epoch,
        )
    for name, fig in figures.items():
        write_figure(figure_path(out, name), fig, writer, f"diagnosis/{name}", step)
    diagnosis = diagnose(samples, model, evaluated_on, reports, list(figures), writer is not None)
    # likely label errors (src/lossdiag/rundir/suspects.py): suspects.csv/.md, the data map, and a section of their own
    suspects = rank_run(samples, model)
    extra = ""
    if suspects is not None:
        suspect_list = write_suspects(out, samples, suspects, suspect_images, writer, step)
        extra = mislabeled_section(suspect_list, [int(row[1]) for row in rows])
    # the "What you can do" section (src/lossdiag/rundir/remedies.py), appended when the run shows the phenomenon
    todo = what_you_can_do_section(diagnosis.numbers, out, suspects_file=str(SUSPECTS_CSV) if extra else None)
    diagnosis = replace(diagnosis, markdown=diagnosis.markdown + extra + todo)
    atomic_write_text(out / DIAGNOSIS_FILE, diagnosis.markdown)
    atomic_write_text(out / DIAGNOSIS_JSON, json.dumps(diagnosis.numbers.to_dict(), indent=2) + "\n")
    if writer is not None:
        writer.add_text("diagnosis", diagnosis.markdown, global_step=step)
        writer.flush()
    return diagnosis
