"""Notebook helpers: pick a training run folder and read back what it wrote: config, data, checkpoints.

Used by ``notebooks/loss_analysis.ipynb`` (and anyone analysing a finished run): the notebook holds no
logic of its own, it calls these functions and the ones of :mod:`lossdiag.diagnosis.samples`, :mod:`lossdiag.rundir.metrics_csv`,
:mod:`lossdiag.functional.outputs`, :mod:`lossdiag.functional.calibration` and :mod:`lossdiag.render.figures`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from lossdiag.app.pipeline import build_datamodule, build_net
from lossdiag.data.datamodules import InMemoryDataModule
from lossdiag.diagnosis.samples import Samples
from lossdiag.errors import UserError
from lossdiag.functional.breakdown import recompute_mean_ce
from lossdiag.models.predict import predict_logits
from lossdiag.rundir.checkpoints import load_weights, read_checkpoint
from lossdiag.rundir.find import RUN_DIR_ENV, RUN_FILES, is_run, latest_run
from lossdiag.rundir.paths import CONFIG_FILE, checkpoint_path


def resolve_run_dir(run_dir: str | Path | None = None, root: str | Path = "outputs") -> Path:
    """``run_dir`` if given, else ``$LOSSDIAG_RUN_DIR`` if set, else :func:`latest_run` under ``root``."""
    chosen = run_dir if run_dir not in (None, "") else os.environ.get(RUN_DIR_ENV) or None
    if chosen is None:
        return latest_run(root)
    path = Path(chosen).expanduser()
    if not is_run(path):
        raise UserError(
            f"{path} is not a training run folder (it needs {', '.join(map(str, RUN_FILES))}): "
            "point it at outputs/runs/<date>/<time>, or leave it unset for the newest run"
        )
    return path


def run_config(run_dir: str | Path) -> DictConfig:
    """The config the run was trained with (``.hydra/config.yaml``, as Hydra saved it)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise UserError(
            f"{path} does not exist: only runs started with `python -m src.train` save their config"
        )
    cfg = OmegaConf.load(path)
    assert isinstance(cfg, DictConfig)
    return cfg


def run_datamodule(run_dir: str | Path, cfg: DictConfig | None = None) -> InMemoryDataModule:
    """The run's data, rebuilt from its config (same seed: same split and sample order as in training)."""
    return build_datamodule(cfg if cfg is not None else run_config(run_dir))


def load_net(
    run_dir: str | Path, name: str, datamodule: InMemoryDataModule, cfg: DictConfig | None = None
) -> tuple[torch.nn.Module, int]:
    """The network of ``checkpoints/<name>.ckpt`` (``initial``, ``best``, ``last``) in eval mode, and its epoch."""
    path = checkpoint_path(run_dir, name)
    weights, _, epoch = read_checkpoint(path)
    net = build_net(cfg if cfg is not None else run_config(run_dir), datamodule)
    load_weights(net, weights, str(path))
    return net.eval(), epoch


def val_probabilities(net: torch.nn.Module, datamodule: InMemoryDataModule, index: np.ndarray) -> np.ndarray:
    """Softmax probabilities ``(len(index), C)`` (float64) of ``net`` on the val samples ``index``."""
    assert datamodule.val is not None
    x = datamodule.val.inputs(np.asarray(index, dtype=np.int64))
    return predict_logits(net, x).double().softmax(1).numpy()


def value_at_epoch(history: dict[str, list[float]], key: str, epoch: int) -> float:
    """``history[key]`` at ``epoch`` (as :func:`lossdiag.rundir.metrics_csv.read_history` returns it); nan if absent."""
    epochs = history.get("epoch", [])
    if key not in history or float(epoch) not in epochs:
        return math.nan
    return history[key][epochs.index(float(epoch))]


def cross_entropy_check(
    run_dir: str | Path,
    samples: Samples,
    history: dict[str, list[float]],
    datamodule: InMemoryDataModule,
    cfg: DictConfig | None = None,
) -> list[dict[str, Any]]:
    """The seed's check that the logged loss is ``-mean(log p_true)``, per evaluated model.

    Each row: ``logged`` (``val/loss`` of the model's epoch in ``csv/metrics.csv``, nan for the initial
    model), ``recorded`` (mean of the per-sample losses in ``samples.npz``), ``from_p_true`` (the
    formula on the recorded ``p_true``), and ``manual`` (the seed's numpy formula on the full probabilities
    of ``checkpoints/<model>.ckpt``, with ``probs`` in ``samples.val`` order). ``manual`` and ``probs``
    are nan/None when that checkpoint is missing or holds another epoch (``checkpoint_epoch`` says which).
    """
    cfg = cfg if cfg is not None else run_config(run_dir)
    rows = []
    for name, splits in samples.models.items():
        epoch = samples.model_epoch[name]
        ev = splits["val"]
        row: dict[str, Any] = {
            "model": name,
            "epoch": epoch,
            "logged": value_at_epoch(history, "val/loss", epoch),
            "recorded": float(np.mean(ev.loss, dtype=np.float64)),
            "from_p_true": _mean_neg_log(ev.p_true),
            "checkpoint_epoch": None,
            "manual": math.nan,
            "probs": None,
        }
        if checkpoint_path(run_dir, name).is_file():
            net, row["checkpoint_epoch"] = load_net(run_dir, name, datamodule, cfg)
            if row["checkpoint_epoch"] == epoch:
                row["probs"] = val_probabilities(net, datamodule, samples.val.index)
                row["manual"] = float(recompute_mean_ce(row["probs"], samples.val.target))
        rows.append(row)
    return rows


def _mean_neg_log(p: np.ndarray) -> float:
    """``-mean(log p)`` in float64 (inf if a probability underflowed to 0)."""
    with np.errstate(divide="ignore"):
        return float(np.mean(-np.log(np.asarray(p, dtype=np.float64))))
