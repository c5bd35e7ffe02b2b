"""Checkpoints: the one loader (a missing, unreadable or foreign file is a one-line error) and readers.

Training writes checkpoints through :class:`lossdiag.callbacks.checkpoint_io.AtomicCheckpointIO`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lossdiag.errors import UserError


def existing_checkpoint(path: str | Path) -> Path:
    """``path`` as a ``Path``, or :class:`UserError` if there is no such file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"ckpt_path={path} does not exist: give a checkpoint written by src.train "
            "(<run>/checkpoints/last.ckpt or best_val_acc.ckpt; to continue a run: resume=<run dir>)"
        )
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path`` (on the CPU); a missing, unreadable or non-Lightning file -> UserError."""
    path = existing_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise UserError(
            f"ckpt_path={path} cannot be read as a checkpoint ({type(err).__name__}): give a .ckpt file written by src.train"
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise UserError(
            f"ckpt_path={path} is not a Lightning checkpoint (no state_dict): give one written by src.train"
        )
    return ckpt


def net_state(module_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The network's weights from a LightningModule ``state_dict`` (keys ``net.*``)."""
    return {k[len("net.") :]: v for k, v in module_state.items() if k.startswith("net.")}


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], float, int]:
    """``(network weights, loss cap, epoch)`` from a checkpoint written by training; bad files -> UserError."""
    ckpt = load_checkpoint(path)
    state = ckpt["state_dict"]
    weights = net_state(state)
    if not weights:
        raise UserError(
            f"ckpt_path={path} holds no network weights (no 'net.*' keys): pick a src.train checkpoint"
        )
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


def check_checkpoint(path: str | Path, model: nn.Module) -> None:
    """Raise :class:`UserError` unless ``path`` is a checkpoint whose weights fit ``model`` and can be continued."""
    ckpt = load_checkpoint(path)
    state = ckpt["state_dict"]
    expected = model.state_dict()
    problems = [
        f"{key} is {tuple(state[key].shape)} there but {tuple(value.shape)} here"
        if key in state
        else f"{key} is missing"
        for key, value in expected.items()
        if key.startswith("net.") and (key not in state or tuple(state[key].shape) != tuple(value.shape))
    ]
    if problems:
        raise UserError(
            f"ckpt_path={path} belongs to another model shape ({'; '.join(problems[:3])}): resume with the data and "
            f"model settings it was trained with (see its run folder's .hydra/config.yaml)"
        )
    if "optimizer_states" not in ckpt:  # e.g. checkpoints/initial.ckpt: weights only
        raise UserError(
            f"ckpt_path={path} holds weights only, no training state to continue from: "
            f"evaluate it with python -m src.evaluate ckpt_path={path}, or resume from checkpoints/last.ckpt"
        )
