"""Evaluate saved weights and write a run's diagnosis files; shared by training and ``src.evaluate``.

:func:`write_diagnosis` writes, into a run (or evaluation) folder:
``reports/<model>.md`` + ``.csv`` (classification report of each evaluated model on val),
``worst.csv`` (worst val samples with their loss history), ``figures/*.png``, ``samples.npz`` and
``diagnosis.md``, and logs the reports, the verdict and the figures to TensorBoard when a writer is given.
"""

from __future__ import annotations

import copy
import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from src.calibration import reliability_figure
from src.class_report import classification_report, report_csv, report_markdown
from src.data import Split
from src.decomposition import Evaluation, evaluate_logits
from src.diagnostics import worst_indices
from src.errors import UserError
from src.figures import (
    log_figure,
    loss_distribution_figure,
    render,
    save_png,
    worst_caption,
    worst_samples_figure,
)
from src.fileio import atomic_write_text
from src.model import predict_logits
from src.samples import SAMPLES_FILE, Samples, SplitInfo
from src.verdict import Diagnosis, diagnose

DIAGNOSIS_FILE = "diagnosis.md"
WORST_FILE = "worst.csv"


def evaluate_net(net: nn.Module, splits: dict[str, Split]) -> dict[str, Evaluation]:
    """``net``'s per-sample outputs on each split."""
    return {name: evaluate_logits(predict_logits(net, split.x), split.y) for name, split in splits.items()}


def evaluate_state(net: nn.Module, state: dict[str, torch.Tensor], splits: dict[str, Split]) -> dict[str, Evaluation]:
    """Load ``state`` into ``net`` (a scratch copy: its weights are replaced) and evaluate it on each split."""
    net.load_state_dict(state)
    return evaluate_net(net, splits)


def net_state(module_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The network's weights from a LightningModule ``state_dict`` (keys ``net.*``)."""
    return {k[len("net.") :]: v for k, v in module_state.items() if k.startswith("net.")}


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], float, int]:
    """``(network weights, loss cap, epoch)`` from a checkpoint written by training; bad files -> UserError."""
    from src.resume import load_checkpoint

    ckpt = load_checkpoint(path)
    state = ckpt["state_dict"]
    weights = net_state(state)
    if not weights:
        raise UserError(f"ckpt_path={path} holds no ShallowNet weights (no 'net.*' keys): pick a src.train checkpoint")
    cap = float(state.get("loss_cap", torch.tensor(math.nan)))
    return weights, cap, int(ckpt.get("epoch", -1))


def load_weights(net: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Load ``weights`` into ``net``; a shape/key mismatch (other data or model) is a UserError."""
    try:
        net.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise UserError(
            f"{source} does not fit the configured data/model ({first}): "
            "evaluate it with the data and model settings it was trained with (its run's .hydra/config.yaml)"
        ) from None


def worst_rows(samples: Samples, ev: Evaluation, k: int) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of ``worst.csv``: the ``k`` highest-loss val samples of ``ev``, with loss history."""
    target = samples.val.target
    order = worst_indices(ev.loss, k)
    history = samples.history.loss if samples.val_epochs else np.empty((0, len(target)))
    header = ["rank", "index", "path", "true", "predicted", "p_true", "confidence", "loss"]
    header += [f"loss_epoch_{e}" for e in samples.epochs]
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


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def worst_figure(samples: Samples, ev: Evaluation, images: torch.Tensor, k: int):
    """Image grid of the ``k`` highest-loss val samples of ``ev``; ``images`` is the val split's ``x``."""
    order = worst_indices(ev.loss, k)
    captions = [
        worst_caption(
            samples.classes[int(samples.val.target[i])],
            samples.classes[int(ev.pred[i])],
            float(ev.p_true[i]),
            float(ev.loss[i]),
        )
        for i in order
    ]
    return worst_samples_figure(images[torch.as_tensor(samples.val.index[order])], captions)


def write_diagnosis(
    out_dir: str | Path,
    samples: Samples,
    val_images: torch.Tensor,
    worst_k: int = 16,
    writer: Any = None,
    step: int = 0,
    model: str | None = None,
) -> Diagnosis:
    """Write reports, worst samples, figures, ``samples.npz`` and ``diagnosis.md`` into ``out_dir``.

    ``model`` names the evaluated model the verdict is about (``src.evaluate``); by default the verdict
    covers the recorded epochs, and its "final" state is the last epoch.
    """
    out = Path(out_dir)
    samples.save(out / SAMPLES_FILE)
    for name, splits in samples.models.items():
        if "val" not in splits:
            continue
        report = classification_report(splits["val"].pred, samples.val.target, samples.classes)
        epoch = samples.model_epoch.get(name, -1)
        title = f"{name} model ({'before training' if epoch < 0 else f'epoch {epoch}'}), val set"
        md = report_markdown(report, title)
        atomic_write_text(out / "reports" / f"{name}.md", md)
        atomic_write_text(out / "reports" / f"{name}.csv", report_csv(report))
        if writer is not None:
            writer.add_text(f"reports/{name}", md, global_step=step)
    final = samples.models[model]["val"] if model is not None else samples.val_epochs[-1]
    header, rows = worst_rows(samples, final, worst_k)
    atomic_write_text(out / WORST_FILE, _csv(header, rows))
    figures = {
        "reliability": reliability_figure(final.conf, final.correct(samples.val.target), title="final model, val"),
        "worst_samples": worst_figure(samples, final, val_images, worst_k),
    }
    if samples.models:
        figures["loss_distribution"] = loss_distribution_figure(
            {name: s["val"].loss for name, s in samples.models.items() if "val" in s}
        )
    for name, fig in figures.items():
        image = log_figure(writer, f"diagnosis/{name}", fig, step) if writer is not None else render(fig)
        save_png(image, out / "figures" / f"{name}.png")
    diagnosis = diagnose(samples, model=model)
    atomic_write_text(out / DIAGNOSIS_FILE, diagnosis.markdown)
    if writer is not None:
        writer.add_text("diagnosis", diagnosis.markdown, global_step=step)
        writer.flush()
    return diagnosis


RUN_KEYS = ("data", "model", "loss", "seed")


def with_run_config(cfg: Any, ckpt: Path, overrides: Sequence[str] = ()) -> Any:
    """Take ``data``, ``model``, ``loss`` and ``seed`` from the training run the checkpoint belongs to.

    A checkpoint at ``<run>/checkpoints/x.ckpt`` has its config at ``<run>/.hydra/config.yaml``;
    using it means ``src.evaluate`` sees the data the model was trained on without repeating the
    run's overrides. What the user gives on the command line (``overrides``) wins: a whole group
    (``data=folder``, ``seed=3``) replaces the run's, a single key (``data.val_fraction=0.3``) is
    changed on top of the run's group.
    """
    from omegaconf import OmegaConf, open_dict

    from src.resume import CONFIG_FILE, override_key

    run_config = ckpt.parent.parent / CONFIG_FILE
    if not run_config.is_file():
        return cfg
    run_cfg = OmegaConf.load(run_config)
    keys = [override_key(str(o)) for o in overrides]
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        for key in RUN_KEYS:
            if key not in run_cfg or key in keys:
                continue
            node = copy.deepcopy(run_cfg[key])
            for dotted in (k for k in keys if k.startswith(f"{key}.")):
                OmegaConf.update(node, dotted[len(key) + 1 :], OmegaConf.select(cfg, dotted), force_add=True)
            cfg[key] = node
    return cfg


def evaluate_checkpoint(cfg: Any, overrides: Sequence[str] = ()) -> Diagnosis:
    """``src.evaluate``: the reports and diagnosis of ``cfg.ckpt_path`` on the run's (or the configured) data.

    Writes into ``cfg.paths.output_dir`` the same files a training run writes at its end, for one
    model named after the checkpoint file (``best``, ``last``, ``initial``, ...).
    """
    from torch.utils.tensorboard import SummaryWriter

    from src.pipeline import build_datamodule, build_net, prepare

    if not cfg.get("ckpt_path"):
        raise UserError("ckpt_path is not set: python -m src.evaluate ckpt_path=<run>/checkpoints/best.ckpt")
    path = Path(str(cfg.ckpt_path)).expanduser()
    weights, cap, epoch = read_checkpoint(path)
    cfg = with_run_config(cfg, path, overrides)
    prepare(cfg)
    dm = build_datamodule(cfg)
    net = build_net(cfg, dm)
    load_weights(net, weights, f"ckpt_path={path}")
    if math.isnan(cap) and cfg.loss.get("cap") is not None:
        cap = float(cfg.loss.cap)
    name = path.stem
    assert dm.val is not None and dm.train is not None
    evaluations = evaluate_net(net, {"val": dm.val, "train": dm.train})
    samples = Samples(
        classes=list(dm.class_names),
        loss_cap=cap,
        val=SplitInfo.create(range(len(dm.val)), dm.val.y.numpy(), dm.val.paths),
        train=SplitInfo.create(range(len(dm.train)), dm.train.y.numpy(), dm.train.paths),
    )
    samples.add_epoch(epoch, evaluations["val"])
    samples.models[name] = evaluations
    samples.model_epoch[name] = epoch
    out = Path(cfg.paths.output_dir)
    writer = SummaryWriter(str(out))
    try:
        diagnosis = write_diagnosis(out, samples, dm.val.x, int(cfg.worst_k), writer, step=0, model=name)
    finally:
        writer.close()
    print(f"{diagnosis.summary}\nFull diagnosis: {out / DIAGNOSIS_FILE}")
    return diagnosis
