"""Build data, model and trainer from a composed config; shared by ``train`` and ``evaluate``."""

from __future__ import annotations

import copy
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from lossdiag.app.console import quiet_warnings
from lossdiag.app.hparams import run_hparams
from lossdiag.app.lr_find import FoundLR, find_learning_rate, record_learning_rate
from lossdiag.app.resume import resume_command
from lossdiag.app.validate import suspects_folds, validate
from lossdiag.callbacks.checkpoint_io import AtomicCheckpointIO
from lossdiag.callbacks.guards import NonFiniteLossGuard
from lossdiag.callbacks.loss_diagnosis import LossDiagnosis
from lossdiag.callbacks.tensorboard import TensorBoardDashboards
from lossdiag.data.datamodules import InMemoryDataModule
from lossdiag.errors import UserError, user_error_cause
from lossdiag.functional.learning_rate import AUTO_LR
from lossdiag.functional.objectives import OBJECTIVES
from lossdiag.models.builders import UNEXPECTED_KEYWORD, DataShape, not_passed_note
from lossdiag.models.builders import build_net as build_classifier
from lossdiag.models.module import LossDiagModule
from lossdiag.models.predict import DEFAULT_CHUNK_BYTES, rows_within
from lossdiag.rundir.checkpoints import check_checkpoint
from lossdiag.rundir.metrics_csv import last_values, read_history

T = TypeVar("T")
log = logging.getLogger(__name__)
TORCHVISION_TARGET = "lossdiag.models.torchvision_models.torchvision_classifier"


def prepare(cfg: DictConfig) -> None:
    """Validate the config, seed everything, set the thread count, and silence the warnings of :mod:`lossdiag.app.console`."""
    validate(cfg)
    quiet_warnings()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    L.seed_everything(cfg.seed, workers=True, verbose=False)


def build_datamodule(cfg: DictConfig) -> InMemoryDataModule:
    """Instantiate ``cfg.data`` and load it, so its shapes and class names are known.

    A key the data module does not take (``+data.root=`` on the digits) is one line, not Hydra's traceback.
    """
    try:
        datamodule: InMemoryDataModule = instantiate(cfg.data)
    except InstantiationException as err:
        refused = UNEXPECTED_KEYWORD.search(str(err))
        if refused is None or user_error_cause(err) is not None:
            raise
        key = refused.group(1)
        hint = " (your images: data=folder data.root=<folder>)" if key == "root" else ""
        raise UserError(f"data.{key} is not a setting of {cfg.data._target_}: remove it{hint}") from None
    datamodule.setup("fit")
    return datamodule


def data_shape(datamodule: InMemoryDataModule) -> DataShape:
    """What the loaded data tells a model: channels, height, width, classes."""
    return DataShape(datamodule.depth, datamodule.height, datamodule.width, datamodule.num_classes)


def model_label(cfg: DictConfig) -> str:
    """How the model is named in messages: as the user chose it (``model.name=resnet18``, ``model._target_=...``)."""
    target = OmegaConf.select(cfg, "model._target_", default=None)
    name = OmegaConf.select(cfg, "model.name", default=None)
    if target == TORCHVISION_TARGET and name is not None:
        return f"model.name={name}"
    return f"model._target_={target}"


def build_net(cfg: DictConfig, datamodule: InMemoryDataModule) -> torch.nn.Module:
    """``cfg.model`` built for the data (:func:`lossdiag.models.builders.build_net`); a bad one is one line."""
    options = OmegaConf.to_container(cfg.model, resolve=True) if cfg.get("model") else {}
    assert isinstance(options, dict)
    target = options.get("_target_")
    if not target:
        raise UserError("model._target_ is not set: choose model=<option> or model._target_=pkg.module.Class")
    try:
        built = build_classifier(str(target), options, data_shape(datamodule), model_label(cfg))
    except UserError as err:
        name = str(target).removeprefix("torchvision.models.")
        if name == str(target) or "." in name:
            raise
        # a torchvision builder named directly keeps its 3-channel, ImageNet-size stem
        raise UserError(f"{err} (or use model=torchvision model.name={name}: fitted to the data)") from None
    if built.not_passed:
        log.warning(not_passed_note(str(target), built.not_passed))
    return built.net


def learning_rate(
    cfg: DictConfig, net: torch.nn.Module, datamodule: InMemoryDataModule, trainer: L.Trainer | None = None
) -> FoundLR | float | None:
    """``optimizer.lr``: a number as given, ``auto`` measured by a range test (:mod:`lossdiag.app.lr_find`) on
    ``trainer``'s device and global batch (without a trainer: on the CPU, one process)."""
    lr = cfg.optimizer.get("lr")
    if lr != AUTO_LR:
        return lr
    if trainer is None:
        return find_learning_rate(cfg, net, datamodule)
    return find_learning_rate(cfg, net, datamodule, trainer.strategy.root_device, trainer.world_size)


def loss_parameter(cfg: DictConfig) -> float | None:
    """The parameter of the configured objective (``loss.gamma`` for ``focal``, ...); ``None`` for CE ones."""
    name = cfg.loss.name
    return cfg.loss.get(OBJECTIVES[name].param) if name in OBJECTIVES else None


def eval_chunk_bytes(cfg: DictConfig) -> int:
    """``eval_chunk_mb`` in bytes (the default of :mod:`lossdiag.models.predict` for configs without it)."""
    mb = cfg.get("eval_chunk_mb")
    return DEFAULT_CHUNK_BYTES if mb is None else int(float(mb) * 2**20)


def build_module(
    cfg: DictConfig,
    datamodule: InMemoryDataModule,
    net: torch.nn.Module | None = None,
    lr: FoundLR | float | None = None,
) -> LossDiagModule:
    """The configured model (``net``, else built for the data) with the configured loss and optimizer.

    ``lr``: the learning rate already resolved (:func:`learning_rate`), else resolved here.
    """
    net = build_net(cfg, datamodule) if net is None else net
    if lr is None:
        lr = learning_rate(cfg, net, datamodule)
    if isinstance(lr, FoundLR):
        lr = lr.lr
    return LossDiagModule(
        net=net,
        optimizer=instantiate(cfg.optimizer, **({} if lr is None else {"lr": lr})),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        class_names=datamodule.class_names,
        loss=cfg.loss.name,
        k=cfg.loss.k,
        cap=cfg.loss.cap,
        loss_param=loss_parameter(cfg),
        eval_chunk_bytes=eval_chunk_bytes(cfg),
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
    return _built("trainer", lambda: instantiate(cfg.trainer, **kwargs))


def _built(group: str, make: Callable[[], T]) -> T:
    """``make()``, with what the framework refuses about the ``group.*`` keys (an unknown argument, a bad value, a
    device that is not there) as one line instead of a traceback."""
    try:
        return make()
    except (TypeError, ValueError, InstantiationException, MisconfigurationException) as err:
        if user_error_cause(err) is not None:
            raise
        cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ is not None else err
        text = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
        raise UserError(
            f"{group}: {text}: fix the {group}.* keys (python -m src.train --cfg job lists them)"
        ) from None


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
    net = build_net(cfg, datamodule)  # a bad model fails here, before any file is written
    # data.val_batch_size=auto: as many samples as the model evaluates within eval_chunk_mb
    datamodule.size_val_batches(rows_within(net, datamodule.train.sample_shape, eval_chunk_bytes(cfg)))  # type: ignore[union-attr]
    trainer = build_trainer(cfg)
    diagnosis = _cross_validated_suspects(cfg, trainer, datamodule)  # before anything is written
    # a bad optimizer value fails here, before the range test and the fit (the lr is a stand-in for auto)
    given = {"lr": 1e-3} if cfg.optimizer.get("lr") == AUTO_LR else {}
    _built("optimizer", lambda: instantiate(cfg.optimizer, **given)(net.parameters()))
    lr = learning_rate(cfg, net, datamodule, trainer)
    model = build_module(cfg, datamodule, net, lr)
    if cfg.get("scheduler"):
        _built("scheduler", model.configure_optimizers)  # a bad scheduler value fails here, not in the fit
    config = OmegaConf.to_container(cfg, resolve=True)
    shown = cfg  # what the HParams tab shows: the config, with the learning rate actually used
    if isinstance(lr, FoundLR):
        config["optimizer"]["lr"] = lr.lr  # type: ignore[index]  # hparams.yaml and the HParams tab get the number
        shown = copy.deepcopy(cfg)
        with open_dict(shown):
            shown.optimizer.lr = lr.lr
        trainer.callbacks.append(record_learning_rate(lr, cfg.paths.output_dir))  # type: ignore[arg-type]
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
            folds = cross_validate(shown, datamodule, cfg.paths.output_dir)  # the folds train at the run's lr
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
