"""Build data, model and trainer from a composed config; shared by ``train`` and ``evaluate``."""

from __future__ import annotations

import copy
import logging
import signal
import sys
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from lossdiag.app.console import quiet_warnings
from lossdiag.app.hparams import run_hparams
from lossdiag.app.resume import resume_command
from lossdiag.app.validate import suspects_folds, validate
from lossdiag.callbacks.checkpoint_io import AtomicCheckpointIO
from lossdiag.callbacks.guards import NonFiniteLossGuard
from lossdiag.callbacks.loss_diagnosis import LossDiagnosis
from lossdiag.callbacks.tensorboard import TensorBoardDashboards
from lossdiag.data.datamodules import InMemoryDataModule
from lossdiag.errors import UserError
from lossdiag.functional.learning_rate import (
    AUTO_LR,
    REFERENCE_FAN_IN,
    REFERENCE_LR,
    auto_lr,
    last_linear_fan_in,
)
from lossdiag.functional.objectives import OBJECTIVES
from lossdiag.models.module import LossDiagModule
from lossdiag.rundir.checkpoints import check_checkpoint
from lossdiag.rundir.metrics_csv import last_values, read_history

log = logging.getLogger(__name__)


def prepare(cfg: DictConfig) -> None:
    """Validate the config, seed everything, set the thread count, and silence the warnings of :mod:`lossdiag.app.console`."""
    validate(cfg)
    quiet_warnings()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    L.seed_everything(cfg.seed, workers=True, verbose=False)


def build_datamodule(cfg: DictConfig) -> InMemoryDataModule:
    """Instantiate ``cfg.data`` and load it, so its shapes and class names are known."""
    datamodule: InMemoryDataModule = instantiate(cfg.data)
    datamodule.setup("fit")
    return datamodule


def build_net(cfg: DictConfig, datamodule: InMemoryDataModule) -> torch.nn.Module:
    """``cfg.model`` (ShallowNet) sized by the data."""
    return instantiate(
        cfg.model,
        width=datamodule.width,
        height=datamodule.height,
        depth=datamodule.depth,
        classes=datamodule.num_classes,
    )


def learning_rate(cfg: DictConfig, net: torch.nn.Module) -> float | None:
    """``optimizer.lr``, with ``auto`` resolved for ``net`` (:mod:`lossdiag.functional.learning_rate`)."""
    lr = cfg.optimizer.get("lr")
    return auto_lr(last_linear_fan_in(net)) if lr == AUTO_LR else lr


def loss_parameter(cfg: DictConfig) -> float | None:
    """The parameter of the configured objective (``loss.gamma`` for ``focal``, ...); ``None`` for CE ones."""
    name = cfg.loss.name
    return cfg.loss.get(OBJECTIVES[name].param) if name in OBJECTIVES else None


def build_module(cfg: DictConfig, datamodule: InMemoryDataModule) -> LossDiagModule:
    """ShallowNet sized by the data, wrapped with the configured loss and optimizer."""
    net = build_net(cfg, datamodule)
    lr = learning_rate(cfg, net)
    return LossDiagModule(
        net=net,
        optimizer=instantiate(cfg.optimizer, **({} if lr is None else {"lr": lr})),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        class_names=datamodule.class_names,
        loss=cfg.loss.name,
        k=cfg.loss.k,
        cap=cfg.loss.cap,
        loss_param=loss_parameter(cfg),
    )


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    if not group:
        return []
    return [
        instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node
    ]


def build_trainer(cfg: DictConfig, **overrides: Any) -> L.Trainer:
    callbacks = [*_instantiate_all(cfg.get("callbacks")), NonFiniteLossGuard()]
    loggers = _instantiate_all(cfg.get("logger"))
    has_progress_bar = any(isinstance(c, L.pytorch.callbacks.ProgressBar) for c in callbacks)
    kwargs: dict[str, Any] = {
        "callbacks": callbacks,
        "logger": loggers or False,
        "enable_checkpointing": any(isinstance(c, L.pytorch.callbacks.Checkpoint) for c in callbacks),
        "enable_progress_bar": has_progress_bar,
        "plugins": [AtomicCheckpointIO()],
    }
    kwargs.update(overrides)
    return instantiate(cfg.trainer, **kwargs)


def final_metrics(trainer: L.Trainer, model: L.LightningModule, run_dir: str) -> dict[str, float]:
    """Every metric's value at the end of the run, as plain floats.

    Values sent straight to the loggers are kept by whoever sent them (``epoch_values`` of the module and
    the callbacks); a multi-process run trained in other processes, so they are read back from the last
    rows of ``csv/metrics.csv``. What Lightning itself saw (``self.log``) comes from the trainer.
    """
    try:
        metrics = last_values(read_history(run_dir))
    except FileNotFoundError:  # no CSV logger configured
        metrics = {}
    for owner in (model, *trainer.callbacks):  # type: ignore[attr-defined]
        metrics.update(getattr(owner, "epoch_values", {}))
    metrics.update(
        {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    )
    for key in ("epoch", "step"):
        metrics.pop(key, None)
    return metrics


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the model described by ``cfg``; return the final scalar metrics."""
    prepare(cfg)
    datamodule = build_datamodule(cfg)
    model = build_module(cfg, datamodule)
    trainer = build_trainer(cfg)
    diagnosis = _cross_validated_suspects(cfg, trainer, datamodule)  # before anything is written
    config = OmegaConf.to_container(cfg, resolve=True)
    shown = cfg  # what the HParams tab shows: the config, with the learning rate actually used
    if cfg.optimizer.get("lr") == AUTO_LR:
        lr = learning_rate(cfg, model.net)
        config["optimizer"]["lr"] = lr  # type: ignore[index]  # hparams.yaml and the HParams tab get the number
        shown = copy.deepcopy(cfg)
        with open_dict(shown):
            shown.optimizer.lr = lr
        log.info(
            "optimizer.lr=auto: %.6g (%g x %d / fan-in %d of the last linear layer)",
            lr,
            REFERENCE_LR,
            REFERENCE_FAN_IN,
            last_linear_fan_in(model.net),
        )
    for logger in trainer.loggers:
        logger.log_hyperparams(config)  # type: ignore[arg-type]  # hparams.yaml
    # TensorBoard's HParams tab (what a person compares runs by) and Custom Scalars layout
    trainer.callbacks.append(TensorBoardDashboards(run_hparams(shown, datamodule)))  # type: ignore[arg-type]
    log.info(
        "data: %d train / %d val samples, %d classes, %dx%dx%d; loss=%s; augment=%s",
        len(datamodule.train),  # type: ignore[arg-type]
        len(datamodule.val),  # type: ignore[arg-type]
        datamodule.num_classes,
        datamodule.depth,
        datamodule.height,
        datamodule.width,
        cfg.loss.name,
        cfg.data.get("augment", "none"),
    )
    if cfg.get("ckpt_path"):
        check_checkpoint(cfg.ckpt_path, model)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    except SIGTERMException:
        # Lightning stops cleanly on SIGTERM (pre-emption) and would exit 0 as if the run had finished
        message = (
            f"stopped by SIGTERM in epoch {trainer.current_epoch}: continue it with `{resume_command(cfg)}`"
        )
        log.warning(message)
        print(message, file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM) from None
    if diagnosis is not None:
        from lossdiag.app.folds import cross_validate

        # resumed after its last epoch (killed during the folds): as saved
        samples = diagnosis.restore_samples()
        if samples is None:
            log.warning("suspects.folds: the run recorded no validation epoch to rank: no folds were trained")
        else:
            folds = cross_validate(cfg, datamodule, cfg.paths.output_dir)
            samples.train_oof, samples.oof_folds = folds.oof, folds.folds
            samples.train_folds_aum, samples.val_folds_aum = folds.train_aum, folds.val_aum
            diagnosis.write(trainer)
    return final_metrics(trainer, model, cfg.paths.output_dir)


def _cross_validated_suspects(
    cfg: DictConfig, trainer: L.Trainer, datamodule: InMemoryDataModule
) -> LossDiagnosis | None:
    """With ``suspects.folds=K``, the run's diagnosis callback, told to write after the K extra trainings
    (:mod:`lossdiag.app.folds`); the folds are planned now, so an impossible K fails before any training."""
    if not suspects_folds(cfg):
        return None
    diagnosis = next((c for c in trainer.callbacks if isinstance(c, LossDiagnosis)), None)  # type: ignore[attr-defined]
    if diagnosis is None:
        raise UserError(
            "suspects.folds needs the diagnosis callback (it writes suspects.csv): remove ~callbacks.diagnosis, "
            "or set suspects.folds=0"
        )
    if trainer.world_size > 1:
        raise UserError(
            "suspects.folds trains its folds in the run's own process: use a single-device trainer, or suspects.folds=0"
        )
    from lossdiag.app.folds import plan_folds

    assert datamodule.train is not None
    plan_folds(cfg, datamodule.train.y.numpy(), datamodule.num_classes)
    diagnosis.write_at_fit_end = False
    return diagnosis
