"""``src.evaluate``'s work: the reports and diagnosis of one checkpoint, on its run's data or new data."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf, open_dict

from src.app.pipeline import build_datamodule, build_net, prepare
from src.app.resume import override_key
from src.callbacks.console import announce
from src.errors import UserError
from src.models.predict import evaluate_net
from src.rundir.artifacts import Diagnosis, write_diagnosis
from src.rundir.checkpoints import load_weights, read_checkpoint
from src.rundir.paths import CONFIG_FILE, DIAGNOSIS_FILE
from src.rundir.samples import Samples, SplitInfo

RUN_KEYS = ("data", "model", "loss", "seed")
log = logging.getLogger(__name__)


def with_run_config(cfg: Any, ckpt: Path, overrides: Sequence[str] = ()) -> Any:
    """Take ``data``, ``model``, ``loss`` and ``seed`` from the training run the checkpoint belongs to.

    A checkpoint at ``<run>/checkpoints/x.ckpt`` has its config at ``<run>/.hydra/config.yaml``;
    using it means ``src.evaluate`` sees the data the model was trained on without repeating the
    run's overrides. What the user gives on the command line (``overrides``) wins: a whole group
    (``data=folder``, ``seed=3``) replaces the run's, a single key (``data.val_fraction=0.3``) is
    changed on top of the run's group.
    """
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
        # TensorBoard step = the epoch the weights come from (0 for untrained weights)
        step = max(epoch, 0)
        diagnosis = write_diagnosis(out, samples, dm.val.inputs(), int(cfg.worst_k), writer, step=step, model=name)
    finally:
        writer.close()
    announce(log, f"{diagnosis.summary}\nFull diagnosis: {out / DIAGNOSIS_FILE}")
    return diagnosis
