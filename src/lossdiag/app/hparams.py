"""The hyperparameters TensorBoard's HParams tab shows for a run: what a person compares runs by.

The command-line overrides come first (they are what differs between runs), then a curated set:
data, image size, training samples, model, optimizer and its learning rate and weight decay, loss and
its parameters, seed and epochs. Never ``_target_`` plumbing, folders or files, at most
:data:`MAX_HPARAMS` keys. Keys are written as on the command line (``optimizer.lr``, ``loss``), so an
override and the curated entry for the same setting are one column.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from lossdiag.app.resolvers import LAUNCH_KEYS
from lossdiag.app.resume import override_key

MAX_HPARAMS = 25
# overrides about where files go or how Hydra runs, not about what the run computes
HIDDEN_ROOTS = frozenset({"hydra", "paths", "ckpt_path", *LAUNCH_KEYS})
# key fragments that name folders or files
PATH_WORDS = ("root", "dir", "path", "file")


def _shown(key: str, value: Any) -> bool:
    parts = key.split(".")
    if parts[0] in HIDDEN_ROOTS or parts[-1].startswith("_"):  # _target_, _partial_
        return False
    if any(word in part.lower() for part in parts for word in PATH_WORDS):
        return False
    return not (isinstance(value, str) and ("/" in value or "\\" in value))


def _scalar(value: Any) -> bool | int | float | str:
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, ListConfig | DictConfig):
        return str(OmegaConf.to_container(value, resolve=True))
    return "null" if value is None else str(value)


def override_hparams(cfg: DictConfig, overrides: Iterable[str]) -> dict[str, Any]:
    """``["loss=bounded", "optimizer.lr=0.01", "~callbacks.diagnosis"]`` -> ``{"loss": "bounded", "optimizer.lr": 0.01, ...}``.

    A key that is a value in the config shows that value (typed); a config group shows the option chosen;
    ``model._target_=pkg.mod.MyNet`` shows as ``model: MyNet``.
    """
    out: dict[str, Any] = {}
    for override in overrides:
        override = str(override)
        key = override_key(override)
        raw = override.split("=", 1)[1] if "=" in override else ""
        if key == "model._target_" and not override.startswith("~"):
            out["model"] = raw.strip("'\"").rsplit(".", 1)[-1]  # the user's model class names the model column
            continue
        if override.startswith("~"):
            value: Any = "removed"
        else:
            node = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
            value = raw if isinstance(node, DictConfig) or node is None else node
        if _shown(key, value):
            out[key] = _scalar(value)
    return out


def _option(cfg: DictConfig, group: str, choices: Mapping[str, Any]) -> str:
    """The option chosen for config group ``group`` (e.g. ``sgd``); outside Hydra, the class it builds."""
    choice = choices.get(group)
    if choice:
        return str(choice)
    target = OmegaConf.select(cfg, f"{group}._target_", default="") or ""
    return str(target).rsplit(".", 1)[-1] or "?"


def curated_hparams(cfg: DictConfig, datamodule: Any, choices: Mapping[str, Any]) -> dict[str, Any]:
    """Data, image size, training samples, model, optimizer, lr, weight decay, loss and parameters, seed, epochs."""
    data = _option(cfg, "data", choices)
    root = OmegaConf.select(cfg, "data.root", default=None, throw_on_missing=False)
    if root:
        data = f"{data}:{Path(str(root)).name}"  # which folder, without the path to it
    out: dict[str, Any] = {
        "data": data,
        "image_size": f"{datamodule.depth}x{datamodule.height}x{datamodule.width}",
        "train_samples": len(datamodule.train),
        "model": _option(cfg, "model", choices),
    }
    for key, value in (cfg.get("model") or {}).items():
        if not str(key).startswith("_"):
            out[f"model.{key}"] = value
    out["optimizer"] = _option(cfg, "optimizer", choices)
    for key in ("lr", "weight_decay"):
        value = OmegaConf.select(cfg, f"optimizer.{key}", default=None)
        if value is not None:
            out[f"optimizer.{key}"] = value
    out["loss"] = cfg.loss.name
    for key, value in cfg.loss.items():
        if key != "name" and not str(key).startswith("_"):
            out[f"loss.{key}"] = value
    out["seed"] = cfg.get("seed")
    out["trainer.max_epochs"] = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    return {k: _scalar(v) for k, v in out.items() if _shown(k, v)}


def hydra_overrides_and_choices() -> tuple[list[str], dict[str, Any]]:
    """The job's command-line overrides and config-group choices (empty outside a Hydra job)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return [], {}
    hydra_cfg = HydraConfig.get()
    choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not str(k).startswith("hydra/")}
    return [str(o) for o in hydra_cfg.overrides.task], choices


def run_hparams(
    cfg: DictConfig,
    datamodule: Any,
    overrides: Iterable[str] | None = None,
    choices: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The run's HParams: its overrides, then :func:`curated_hparams`, at most :data:`MAX_HPARAMS` keys.

    ``overrides`` and ``choices`` default to the Hydra job's.
    """
    if overrides is None or choices is None:
        hydra_overrides, hydra_choices = hydra_overrides_and_choices()
        overrides = hydra_overrides if overrides is None else overrides
        choices = hydra_choices if choices is None else choices
    merged = override_hparams(cfg, overrides)
    for key, value in curated_hparams(cfg, datamodule, choices).items():
        merged.setdefault(key, value)
    return dict(list(merged.items())[:MAX_HPARAMS])
