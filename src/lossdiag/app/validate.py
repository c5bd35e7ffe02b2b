"""Checks on the composed config, so a bad value fails before any work with one clear line."""

from __future__ import annotations

from omegaconf import DictConfig

from lossdiag.errors import UserError
from lossdiag.functional.augment import AUGMENTATIONS
from lossdiag.functional.learning_rate import AUTO_LR, SKIP_START
from lossdiag.functional.losses import LOSS_NAMES
from lossdiag.functional.objectives import OBJECTIVES, objective_parameter_check
from lossdiag.rundir.checkpoints import existing_checkpoint

MIN_STEPS = 2 * SKIP_START  # fewer range-test steps leave too few smoothed values to choose from


def _number(cfg: DictConfig, key: str) -> float | None:
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, key, default=None)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise UserError(f"{key}={value!r} must be a number")
    return value


def suspects_folds(cfg: DictConfig) -> int:
    """``suspects.folds`` as a count (0: off); one line naming the problem for anything else."""
    from omegaconf import OmegaConf

    folds = OmegaConf.select(cfg, "suspects.folds", default=0)
    if folds is None:
        return 0
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 0 or folds == 1:
        raise UserError(
            f"suspects.folds={folds!r} must be 0 (off) or a whole number >= 2 of extra trainings (e.g. 4)"
        )
    return folds


def validate(cfg: DictConfig) -> None:
    """Raise :class:`UserError` naming the first bad value and what it should be."""
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        examples = {"data.root": "data.root=/path/to/images", "model.name": "model.name=resnet18"}
        example = next((examples[k] for k in missing if k in examples), f"{missing[0]}=...")
        raise UserError(f"{', '.join(missing)} must be given: add it to the command line, e.g. {example}")
    loss = cfg.loss.name
    if loss not in LOSS_NAMES:
        raise UserError(f"loss.name={loss!r} is unknown: use loss=<one of {', '.join(LOSS_NAMES)}>")
    if loss in OBJECTIVES:
        param = OBJECTIVES[loss].param
        problem = objective_parameter_check(loss, OmegaConf.select(cfg, f"loss.{param}", default=None))
        if problem is not None:
            raise UserError(f"{problem}: fix loss.{param} (default {OBJECTIVES[loss].default:g})")
    k = _number(cfg, "loss.k")
    if k is None or k <= 0:
        raise UserError(f"loss.k={k} must be > 0 (the cap is mean + k * std of the initial losses)")
    cap = _number(cfg, "loss.cap")
    if cap is not None and cap <= 0:
        raise UserError(f"loss.cap={cap} must be > 0, or null to compute it from the untrained model")
    val_fraction = _number(cfg, "data.val_fraction")
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise UserError(f"data.val_fraction={val_fraction} must be between 0 and 1 (e.g. 0.25)")
    train_size = _number(cfg, "data.train_size")
    if train_size is not None and (train_size <= 0 or (isinstance(train_size, float) and train_size > 1)):
        raise UserError(
            f"data.train_size={train_size} must be a count >= 1, a fraction in (0, 1], or null for all samples"
        )
    for key in ("data.batch_size", "data.val_batch_size", "data.image_size"):
        if key == "data.val_batch_size" and OmegaConf.select(cfg, key, default=None) == "auto":
            continue
        value = _number(cfg, key)
        if value is not None and (value < 1 or value != int(value)):
            raise UserError(f"{key}={value} must be a whole number >= 1")
    channels = cfg.data.get("channels")
    if channels is not None and channels not in (1, 3):
        raise UserError(f"data.channels={channels} must be 1 (grayscale) or 3 (RGB)")
    on_bad = cfg.data.get("on_bad_image")
    if on_bad is not None and on_bad not in ("skip", "fail"):
        raise UserError(f"data.on_bad_image={on_bad!r} must be 'skip' or 'fail'")
    _validate_data_modes(cfg)
    epochs = _number(cfg, "trainer.max_epochs")
    if epochs is not None and epochs < 1:
        raise UserError(f"trainer.max_epochs={epochs} must be >= 1")
    lr = OmegaConf.select(cfg, "optimizer.lr", default=None)
    if lr != AUTO_LR:
        lr = _number(cfg, "optimizer.lr")
        if lr is not None and lr <= 0:
            raise UserError(f"optimizer.lr={lr} must be > 0")
    else:
        _check_lr_find(cfg)
    momentum = _number(cfg, "optimizer.momentum")
    if momentum is not None and not 0 <= momentum < 1:
        raise UserError(f"optimizer.momentum={momentum} must be in [0, 1) (e.g. 0.9; 1 and above diverge)")
    decay = _number(cfg, "optimizer.weight_decay")
    if decay is not None and decay < 0:
        raise UserError(f"optimizer.weight_decay={decay} must be >= 0 (e.g. 5e-4, or 0 for none)")
    augment = OmegaConf.select(cfg, "data.augment", default=None)
    if augment is not None and augment not in AUGMENTATIONS:
        raise UserError(f"data.augment={augment!r} is unknown: use one of {', '.join(AUGMENTATIONS)}")
    if cfg.get("ckpt_path"):
        existing_checkpoint(cfg.ckpt_path)
    chunk = _number(cfg, "eval_chunk_mb")
    if chunk is not None and chunk <= 0:
        raise UserError(
            f"eval_chunk_mb={chunk} must be > 0 (MiB of input and activations per evaluation chunk, e.g. 64)"
        )
    suspects_folds(cfg)
    threads = _number(cfg, "threads")
    if threads is not None and threads < 1:
        raise UserError(f"threads={threads} must be >= 1, or null for torch's default")


def _validate_data_modes(cfg: DictConfig) -> None:
    """``data.mode``, ``data.workers``, ``data.max_memory_mb`` and ``data.cache_dir`` of an image folder."""
    from omegaconf import OmegaConf

    from lossdiag.data.folder_modes import MODES

    mode = OmegaConf.select(cfg, "data.mode", default=None)
    if mode is not None and mode not in MODES:
        raise UserError(f"data.mode={mode!r} is unknown: use one of {', '.join(MODES)}")
    workers = OmegaConf.select(cfg, "data.workers", default=None)
    if (
        workers is not None
        and workers != "auto"
        and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0)
    ):
        raise UserError(
            f"data.workers={workers!r} must be a count >= 0 (0: decode in the training process) or auto"
        )
    limit = _number(cfg, "data.max_memory_mb")
    if limit is not None and limit < 0:
        raise UserError(f"data.max_memory_mb={limit} must be >= 0 (0: never in memory with data.mode=auto)")
    if "cache_dir" in cfg.data:
        cache_dir = OmegaConf.select(cfg, "data.cache_dir", default=None)
        if cache_dir is not None and (not isinstance(cache_dir, str) or not cache_dir.strip()):
            raise UserError(
                f"data.cache_dir={cache_dir!r} must be a folder path, or null for no decode cache"
            )
        if cache_dir is None and mode == "cached":
            raise UserError(
                "data.mode=cached needs a decode cache folder: set data.cache_dir=<folder>, or use data.mode=lazy"
            )


def _check_lr_find(cfg: DictConfig) -> None:
    """The range test's settings (``lr_find.*``), when ``optimizer.lr=auto`` uses them."""
    if cfg.get("lr_find") is None:
        raise UserError(
            "optimizer.lr=auto needs the lr_find settings (conf/train.yaml): give optimizer.lr=<number>"
        )
    low, high, steps = (_number(cfg, f"lr_find.{k}") for k in ("min_lr", "max_lr", "steps"))
    if low is None or high is None or not 0 < low < high:
        raise UserError(f"lr_find.min_lr={low} and lr_find.max_lr={high} must satisfy 0 < min_lr < max_lr")
    if steps is None or steps != int(steps) or steps < MIN_STEPS:
        raise UserError(f"lr_find.steps={steps} must be a whole number >= {MIN_STEPS} (default 100)")
