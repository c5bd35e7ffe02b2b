"""``src.evaluate``'s work: the reports and diagnosis of one checkpoint, on its run's data or new data.

On the run's own data the checkpoint is evaluated on the run's val (and train) split, rebuilt with the
run's seed. On a folder other than the run's own (``data.root=<folder>``), every image of that folder is
evaluated (no split: none of it was trained on), labelled by the run's classes.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from lossdiag.app.pipeline import build_datamodule, build_net, eval_chunk_bytes, prepare
from lossdiag.app.resume import override_key
from lossdiag.app.run_config import RUN_GROUPS, other_folder, run_cfg, run_choices, run_dir_of
from lossdiag.callbacks.console import announce
from lossdiag.data.datamodules import ImageFolderDataModule, InMemoryDataModule
from lossdiag.diagnosis.judge.suspects import NO_THRESHOLDS
from lossdiag.diagnosis.samples import Samples, SplitInfo, read_classes
from lossdiag.diagnosis.write import Diagnosis, write_diagnosis
from lossdiag.errors import UserError
from lossdiag.functional.breakdown import worst_indices
from lossdiag.functional.outputs import evaluate_logits
from lossdiag.models.predict import predict_records
from lossdiag.rundir.checkpoints import load_weights, read_checkpoint
from lossdiag.rundir.paths import DIAGNOSIS_FILE, display_path
from lossdiag.rundir.suspects import read_thresholds

RUN_KEYS = (*RUN_GROUPS, "seed")
log = logging.getLogger(__name__)


def with_run_config(cfg: Any, ckpt: Path, overrides: Sequence[str] = ()) -> Any:
    """Take ``data``, ``model``, ``loss`` and ``seed`` from the training run the checkpoint belongs to.

    A checkpoint at ``<run>/checkpoints/x.ckpt`` has its config at ``<run>/.hydra/config.yaml``;
    using it means ``src.evaluate`` sees the data the model was trained on without repeating the
    run's overrides. What the user gives on the command line (``overrides``) wins: a whole group
    (``data=digits``, ``seed=3``) replaces the run's, a single key (``data.root=<folder>``) is changed
    on top of the run's group. Naming the run's own option (``data=folder`` for a folder run) is not a
    replacement: the run's values stay and the single keys go on top.
    """
    run = run_cfg(ckpt)
    if run is None:
        return cfg
    same = {
        g
        for g, choice in run_choices(ckpt).items()
        if f"{g}={choice}" in [str(o).lstrip("+") for o in overrides]
    }
    keys = [override_key(str(o)) for o in overrides]
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        for key in RUN_KEYS:
            if key not in run or (key in keys and key not in same):
                continue
            node = copy.deepcopy(run[key])
            for dotted in (k for k in keys if k.startswith(f"{key}.")):
                OmegaConf.update(node, dotted[len(key) + 1 :], OmegaConf.select(cfg, dotted), force_add=True)
            cfg[key] = node
    return cfg


def _data(cfg: Any, ckpt: Path) -> tuple[InMemoryDataModule, str, bool]:
    """The data module, what its val split is (``evaluated_on``), and whether it has a training split."""
    folder = other_folder(ckpt, OmegaConf.select(cfg, "data.root", default=None))
    if folder is None:
        return build_datamodule(cfg), "val split", True
    dm = instantiate(cfg.data)
    if not isinstance(dm, ImageFolderDataModule):
        raise UserError(f"data.root={folder} is set but the data is not an image folder: add data=folder")
    dm.setup_every_image(read_classes(run_dir_of(ckpt)))
    assert dm.val is not None
    return dm, f"every image of {folder} ({len(dm.val)} images)", False


def evaluate_checkpoint(cfg: Any, overrides: Sequence[str] = ()) -> Diagnosis:
    """``src.evaluate``: the reports and diagnosis of ``cfg.ckpt_path`` on the run's (or the configured) data.

    Writes into ``cfg.paths.output_dir`` the files a training run writes at its end, for one model named
    after the checkpoint file (``best``, ``last``, ``initial``, ...), with a text written for one model.
    """
    from torch.utils.tensorboard import SummaryWriter

    if not cfg.get("ckpt_path"):
        raise UserError(
            "ckpt_path is not set: python -m src.evaluate ckpt_path=<run>/checkpoints/best_val_acc.ckpt"
        )
    path = Path(str(cfg.ckpt_path)).expanduser()
    weights, cap, epoch = read_checkpoint(path)
    cfg = with_run_config(cfg, path, overrides)
    prepare(cfg)
    dm, evaluated_on, has_train = _data(cfg, path)
    net = build_net(cfg, dm)
    load_weights(net, weights, f"ckpt_path={path}")
    if math.isnan(cap) and cfg.loss.get("cap") is not None:
        cap = float(cfg.loss.cap)
    name = path.stem
    assert dm.val is not None and dm.train is not None
    splits = {"val": dm.val, "train": dm.train} if has_train else {"val": dm.val}
    evaluations = {  # each split streamed in chunks of at most eval_chunk_mb (input and activations)
        stage: evaluate_logits(records.logits, records.target, crossfit=stage == "val")
        for stage, split in splits.items()
        if (records := predict_records(net, split, eval_chunk_bytes(cfg))) is not None
    }
    samples = Samples(
        classes=list(dm.class_names),
        loss_cap=cap,
        val=SplitInfo.create(range(len(dm.val)), dm.val.y.numpy(), dm.val.paths),
        train=SplitInfo.create(range(len(dm.train)), dm.train.y.numpy(), dm.train.paths)
        if has_train
        else None,
        objective=str(cfg.loss.get("name", "")),
    )
    samples.add_epoch(epoch, evaluations["val"])
    samples.add_models({name: (epoch, evaluations)})
    # only the images the worst-samples figure draws are read (never a float32 copy of the split)
    worst = worst_indices(evaluations["val"].loss, int(cfg.worst_k))
    images = (
        dict(zip(worst.tolist(), dm.val.inputs(worst), strict=True))
        if len(dm.val.sample_shape) == 3
        else None
    )
    # flags of likely label errors with the per-class thresholds the training run calibrated on its own val split
    thresholds = read_thresholds(run_dir_of(path), name, samples.classes)
    flags_off = NO_THRESHOLDS if thresholds is None and not has_train else None
    out = Path(cfg.paths.output_dir)
    writer = SummaryWriter(str(out))
    try:
        # TensorBoard step = the epoch the weights come from (0 for untrained weights)
        diagnosis = write_diagnosis(
            out, samples, writer, step=max(epoch, 0), val_images=images, worst_k=int(cfg.worst_k), model=name,
            evaluated_on=evaluated_on, flag_thresholds=thresholds, flags_off=flags_off,
        )  # fmt: skip
    finally:
        writer.close()
    announce(log, f"{diagnosis.summary}\nFull diagnosis: {display_path(out / DIAGNOSIS_FILE)}")
    return diagnosis
