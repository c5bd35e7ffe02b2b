"""The write stage: every output file of a run (or an evaluation) from its records and its verdict.

Three steps, no ping-pong: :func:`find` computes everything (:class:`Findings`: the verdict, the classification
reports, the likely label errors, a sweep's remedies), :func:`render` turns each row of :data:`OUTPUTS` into files
(text, bytes or figures, in memory), and :func:`write_diagnosis` writes them atomically and, given a TensorBoard
``SummaryWriter``, logs the texts and figures to it. A new output file is one row of :data:`OUTPUTS`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from matplotlib.figure import Figure
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.util import tensor_util

from lossdiag.diagnosis.judge.suspects import (
    TILES,
    RunSuspects,
    SuspectRow,
    rank_run,
    suspect_rows,
    suspects_record,
)
from lossdiag.diagnosis.judge.verdict import Verdict, judge
from lossdiag.diagnosis.samples import Samples
from lossdiag.functional.breakdown import worst_indices
from lossdiag.functional.class_report import Report, classification_report
from lossdiag.functional.outputs import Evaluation
from lossdiag.functional.remedies import RemedyResult
from lossdiag.functional.suspects import cartography
from lossdiag.render.diagnosis import diagnosis_texts
from lossdiag.render.figures import (
    WORST_COLUMNS,
    WORST_TILES,
    Normalization,
    data_map_figure,
    figure_samples,
    groups_figure,
    loss_distribution_figure,
    png_bytes,
    reliability_figure,
    worst_caption,
    worst_samples_figure,
)
from lossdiag.render.figures import render as render_figure
from lossdiag.render.reasons import Context, advice, reason
from lossdiag.render.remedies import what_you_can_do
from lossdiag.render.suspects import mislabeled_section, suspect_caption, suspects_csv, suspects_markdown
from lossdiag.render.tables import csv_text, report_csv, report_markdown
from lossdiag.rundir.atomic import atomic_write_bytes, atomic_write_text
from lossdiag.rundir.paths import (
    CHECKPOINTS_DIR,
    DIAGNOSIS_FILE,
    DIAGNOSIS_JSON,
    LR_FIND_CSV,
    SAMPLES_FILE,
    SUSPECTS_CSV,
    SUSPECTS_JSON,
    SUSPECTS_MD,
    SWEEP_REPORT_CSV,
    WORST_FILE,
    figure_path,
    report_path,
)
from lossdiag.rundir.remedies import read_remedies_report

Images = Mapping[int, torch.Tensor] | torch.Tensor  # inputs by sample index (a mapping, or a whole split's x)


@dataclass
class Findings:
    """Everything the outputs show, computed before anything is rendered."""

    samples: Samples
    model: str | None  # the evaluated model the verdict is about (src.evaluate), None: the recorded epochs
    final: Evaluation  # the final model's val outputs
    final_epoch: int
    verdict: Verdict
    reports: dict[str, Report]
    suspects: RunSuspects | None
    suspect_rows: list[SuspectRow]
    remedies: list[RemedyResult]
    worst_k: int
    val_images: Images | None = None
    suspect_images: Mapping[str, Mapping[int, torch.Tensor]] | None = None
    tensorboard: bool = False
    logged: frozenset[str] | None = None  # the per-epoch TensorBoard tags the run logged (None: the stock ones)
    norm: Normalization | None = None  # the data's mean/std: drawn images are un-normalised with it
    ctx: Context = field(default_factory=Context)  # what the advice may point to
    extra: dict[str, Any] = field(default_factory=dict)


def find(
    out_dir: str | Path,
    samples: Samples,
    model: str | None = None,
    evaluated_on: str = "val split",
    worst_k: int = 16,
    val_images: Images | None = None,
    suspect_images: Mapping[str, Mapping[int, torch.Tensor]] | None = None,
    tensorboard: bool = False,
    config_keys: bool = True,
    logged: frozenset[str] | None = None,
    norm: Normalization | None = None,
    flag_thresholds: np.ndarray | None = None,
    flags_off: str | None = None,
    lr: float | None = None,
) -> Findings:
    """Compute everything the outputs of ``samples`` show (the verdict covers ``model`` or the recorded epochs).

    ``config_keys``: the advice may name lossdiag config keys (``python -m src.train``; not in a project of your
    own). Checkpoints are named only when ``<out_dir>/checkpoints/<model>.ckpt`` exists for an evaluated model.
    ``flag_thresholds`` / ``flags_off``: the likely label errors' per-class thresholds (default: calibrated on this
    val split) or why there are no flags (:func:`lossdiag.diagnosis.judge.suspects.rank_run`); the verdict's
    ``suspected_label_error`` group is the val samples flagged.
    ``lr``: the learning rate the run trained at (chosen by ``optimizer.lr=auto`` when ``lr_find.csv`` is there)."""
    reports = {
        name: classification_report(splits["val"].pred, samples.val.target, samples.classes)
        for name, splits in samples.models.items()
        if "val" in splits
    }
    verdict = judge(samples, model, evaluated_on, flag_thresholds, flags_off)
    collapsed = verdict.stats.collapsed_classes
    suspects = rank_run(samples, model, verdict.kind, collapsed, flag_thresholds, flags_off)
    checkpoints = {
        f"{CHECKPOINTS_DIR}/{name}.ckpt": epoch
        for name, epoch in samples.model_epoch.items()
        if (Path(out_dir) / CHECKPOINTS_DIR / f"{name}.ckpt").is_file()
    }
    suspects_file = str(SUSPECTS_CSV) if suspects is not None else None
    ctx = Context(checkpoints, config_keys, suspects_file, lr, (Path(out_dir) / LR_FIND_CSV).is_file())
    return Findings(
        samples=samples,
        model=model,
        final=samples.models[model]["val"] if model is not None else samples.val_epochs[-1],
        final_epoch=samples.model_epoch[model] if model is not None else samples.epochs[-1],
        verdict=verdict,
        reports=reports,
        suspects=suspects,
        suspect_rows=suspect_rows(samples, suspects.suspects) if suspects is not None else [],
        remedies=read_remedies_report(Path(out_dir).resolve().parent / SWEEP_REPORT_CSV),
        worst_k=worst_k,
        val_images=val_images,
        suspect_images=suspect_images,
        tensorboard=tensorboard,
        logged=logged,
        norm=norm,
        ctx=ctx,
    )


# -- shared with the mid-run figures of the callback ------------------------------------------------------
def worst_rows(
    samples: Samples, ev: Evaluation, k: int, with_history: bool = True
) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of ``worst.csv``: the ``k`` highest-loss val samples of ``ev``, with their loss at every
    recorded epoch (``with_history``; an evaluation of one model has none)."""
    target = samples.val.target
    epochs = samples.epochs if with_history and samples.val_epochs else []
    history = samples.val_journal.records()["loss"] if epochs else np.empty((0, len(target)))
    header = ["rank", "index", "path", "given", "predicted", "p_given", "p_predicted", "loss"]
    header += [f"loss_epoch_{e}" for e in epochs]
    rows = [
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
        for rank, i in enumerate(worst_indices(ev.loss, k), start=1)
    ]
    return header, rows


def worst_figure(
    samples: Samples,
    ev: Evaluation,
    images: Images,
    k: int,
    epoch: int | None = None,
    norm: Normalization | None = None,
) -> Figure:
    """Image grid of the ``k`` (at most :data:`~lossdiag.render.figures.WORST_TILES`) highest-loss val samples
    of ``ev`` that ``images`` holds (``images[i]``: the input of val sample index ``i``)."""
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
        torch.stack([images[int(samples.val.index[i])] for i in order]), captions, title=title, norm=norm
    )


def epoch_figures(
    samples: Samples,
    ev: Evaluation,
    images: Images | None,
    worst_k: int,
    epoch: int,
    title: str,
    norm: Normalization | None = None,
) -> dict[str, Figure]:
    """The figures of one model state on val: the reliability diagram and, given images, the worst samples."""
    figures = {"reliability": reliability_figure(ev.conf, ev.correct(samples.val.target), title=title)}
    if images is not None and len(images) and worst_k > 0:
        figures["worst_samples"] = worst_figure(samples, ev, images, worst_k, epoch, norm)
    return figures


# -- figures: every image TensorBoard shows is also a PNG under figures/ --------------------------------------
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
    image = render_figure(fig)
    samples = figure_samples(fig, image)
    pngs = [png_bytes(sample) for sample in samples]
    atomic_write_bytes(Path(path), pngs[0] if len(samples) == 1 else png_bytes(image))
    if writer is not None:
        writer.file_writer.add_summary(image_summary(tag, samples, pngs, description), global_step=step)
    return image


# -- the outputs --------------------------------------------------------------------------------------------
class Item(NamedTuple):
    """One rendered output: a file under the run folder (``path``) and/or a TensorBoard ``tag``."""

    path: Path | None
    content: str | bytes | Figure
    tag: str | None = None


Rendered = list[Item]


def _samples_file(f: Findings, done: Rendered) -> Rendered:
    buffer = io.BytesIO()
    np.savez(buffer, **f.samples.to_arrays())
    return [Item(SAMPLES_FILE, buffer.getvalue())]


def _reports(f: Findings, done: Rendered) -> Rendered:
    items = []
    for name, report in f.reports.items():
        epoch = f.samples.model_epoch.get(name, -1)
        md = report_markdown(
            report, f"{name} model ({'before training' if epoch < 0 else f'epoch {epoch}'}), val set"
        )
        items += [Item(report_path("", name, "md"), md, f"reports/{name}")]
        items += [Item(report_path("", name, "csv"), report_csv(report))]
    return items


def _worst(f: Findings, done: Rendered) -> Rendered:
    header, rows = worst_rows(f.samples, f.final, f.worst_k, with_history=f.model is None)
    return [Item(WORST_FILE, csv_text(header, rows))]


def _figures(f: Findings, done: Rendered) -> Rendered:
    figures = epoch_figures(
        f.samples, f.final, f.val_images, f.worst_k, f.final_epoch, "final model, val", f.norm
    )
    if f.verdict.rise_by_group is not None and f.verdict.stats.rise:
        figures["rise_by_group"] = groups_figure(f.verdict.rise_by_group, f.verdict.final_loss_by_group)
    if f.samples.models:
        figures["loss_distribution"] = loss_distribution_figure(
            {name: s["val"].loss for name, s in f.samples.models.items() if "val" in s},
            epochs=f.samples.model_epoch,
        )
    return [Item(figure_path("", name), fig, f"diagnosis/{name}") for name, fig in figures.items()]


def _suspects(f: Findings, done: Rendered) -> Rendered:
    run = f.suspects
    if run is None:
        return []
    items = [
        Item(SUSPECTS_CSV, suspects_csv(f.suspect_rows)),
        Item(SUSPECTS_MD, suspects_markdown(f.suspect_rows, run)),
    ]
    if f.model is None:  # the thresholds src.evaluate flags with
        record = suspects_record(f.samples, run, f.suspect_rows)
        items.append(Item(SUSPECTS_JSON, json.dumps(record, indent=2) + "\n"))
    samples = f.samples
    if samples.dynamics_epochs and samples.train is not None:
        confidence, variability = cartography(np.stack(samples.train_p_given))
        flagged = np.zeros(len(samples.train.index), dtype=bool)
        ranked = run.suspects
        flagged[ranked.where[(ranked.split == "train") & ranked.flagged]] = True
        items.append(
            Item(
                figure_path("", "data_map"),
                data_map_figure(confidence, variability, flagged),
                "suspects/data_map",
            )
        )
    for split, images in (f.suspect_images or {}).items():
        shown = [r for r in f.suspect_rows if r.split == split and r.index in images][:TILES]
        if shown:
            fig = worst_samples_figure(
                torch.stack([images[r.index] for r in shown]), [suspect_caption(r) for r in shown],
                columns=WORST_COLUMNS, title=f"most suspect {split} images (likely label errors)", norm=f.norm,
            )  # fmt: skip
            items.append(Item(figure_path("", f"suspects_{split}"), fig, f"suspects/{split}"))
    return items


def _diagnosis(f: Findings, done: Rendered) -> Rendered:
    paths = {item.path for item in done if item.path is not None}
    reports = [name for name in f.reports if report_path("", name, "md") in paths]
    figures = [i.path.stem for i in done if i.path is not None and i.tag and i.tag.startswith("diagnosis/")]
    markdown, summary = diagnosis_texts(f.verdict, reports, figures, f.tensorboard, f.ctx, f.logged)
    if f.suspects is not None:
        # only what was written: the TensorBoard grids and the data map exist for some runs only
        tags = [i.tag for i in done if f.tensorboard and i.tag and i.tag.startswith("suspects/") and i.path is None]
        data_map = figure_path("", "data_map")
        also = [f"TensorBoard images {' and '.join(f'`{t}`' for t in tags)}"] if tags else []
        also += [f"`{data_map.as_posix()}`"] if data_map in paths else []
        markdown += mislabeled_section(f.suspect_rows, f.suspects, _worst_val_indices(f), also)
    markdown += what_you_can_do(f.verdict, f.ctx, f.remedies)
    f.extra["summary"] = summary
    numbers = f.verdict.to_dict(reason(f.verdict), advice(f.verdict, f.ctx))
    return [
        Item(DIAGNOSIS_FILE, markdown, "diagnosis"),
        Item(DIAGNOSIS_JSON, json.dumps(numbers, indent=2) + "\n"),
    ]


def _worst_val_indices(f: Findings) -> list[int]:
    return [int(f.samples.val.index[i]) for i in worst_indices(f.final.loss, f.worst_k)]


# the outputs, in the order they are rendered (diagnosis.md last: it names the files written before it)
OUTPUTS: tuple[tuple[str, Callable[[Findings, Rendered], Rendered]], ...] = (
    ("samples", _samples_file),
    ("reports", _reports),
    ("worst", _worst),
    ("figures", _figures),
    ("suspects", _suspects),
    ("diagnosis", _diagnosis),
)


def render(findings: Findings) -> Rendered:
    """Every row of :data:`OUTPUTS`, rendered in memory."""
    done: Rendered = []
    for _, build in OUTPUTS:
        done += build(findings, done)
    return done


@dataclass(frozen=True)
class Diagnosis:
    """What was written: the verdict, ``diagnosis.md`` and the console summary."""

    verdict: Verdict
    markdown: str
    summary: str


def write_diagnosis(
    out_dir: str | Path, samples: Samples, writer: Any = None, step: int = 0, **found: Any
) -> Diagnosis:
    """Find (:func:`find`, given its keyword arguments ``found``), render and write every output of
    :data:`OUTPUTS` into ``out_dir`` and, with a ``writer`` (a ``SummaryWriter``), to TensorBoard at ``step``."""
    out = Path(out_dir)
    findings = find(out, samples, tensorboard=writer is not None, **found)
    markdown = ""
    for item in render(findings):
        content = item.content
        if isinstance(content, Figure):  # a PNG under figures/ and, with a writer, the same pixels in TensorBoard
            assert item.path is not None
            write_figure(out / item.path, content, writer if item.tag else None, item.tag or "", step)
            continue
        if item.tag is not None and writer is not None:
            writer.add_text(item.tag, content, global_step=step)
        if item.path == DIAGNOSIS_FILE:
            markdown = str(content)
        if item.path is not None:
            path = out / item.path
            if isinstance(content, bytes):
                atomic_write_bytes(path, content)
            else:
                atomic_write_text(path, content)
    if writer is not None:
        writer.flush()
    return Diagnosis(findings.verdict, markdown, findings.extra["summary"])
