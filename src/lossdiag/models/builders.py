"""Any classifier ``nn.Module`` from a dotted path: the arguments it accepts filled from the data, then checked.

``model._target_`` names a class or a function returning an ``nn.Module`` (``pkg.mod.Class``,
``torchvision.models.resnet18``, ``lossdiag.models.torchvision_models.torchvision_classifier``). Its signature
says which of the data's sizes it takes (:data:`DATA_ARGUMENTS`); the config's other keys are passed when it
accepts them and named in one line otherwise (:attr:`BuiltNet.not_passed`). A target that cannot be imported,
is not a module, fails to build or does not map a probe batch to ``(batch, num_classes)`` logits is a
:class:`~lossdiag.errors.UserError` of one line.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lossdiag.errors import UserError

# config keys that steer Hydra, never arguments of the model
HYDRA_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})
PROBE_BATCH = 2  # two samples: a BatchNorm in training mode needs more than one value per channel
UNEXPECTED_KEYWORD = re.compile(r"unexpected keyword argument '(\w+)'")


@dataclass(frozen=True)
class DataShape:
    """What the data tells a model: input channels, height, width, and the number of classes."""

    channels: int
    height: int
    width: int
    num_classes: int

    def value(self, meaning: str) -> Any:
        """The value of one :data:`DATA_ARGUMENTS` meaning."""
        side = self.height if self.height == self.width else (self.height, self.width)
        return {
            "classes": self.num_classes,
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "side": side,
            "flat": self.channels * self.height * self.width,
        }[meaning]

    def __str__(self) -> str:
        return f"{self.channels}x{self.height}x{self.width} images, {self.num_classes} classes"


# parameter name -> (what the data fills it with, whether it is unambiguous). An ambiguous name (``depth`` is
# also a layer count, ``width`` a width multiplier) is only filled when the parameter has no default
DATA_ARGUMENTS: dict[str, tuple[str, bool]] = {
    "num_classes": ("classes", True),
    "n_classes": ("classes", True),
    "num_labels": ("classes", True),
    "out_classes": ("classes", True),
    "output_size": ("classes", True),
    "classes": ("classes", False),
    "in_channels": ("channels", True),
    "in_chans": ("channels", True),
    "num_channels": ("channels", True),
    "input_channels": ("channels", True),
    "channels": ("channels", False),
    "depth": ("channels", False),
    "image_size": ("side", True),
    "img_size": ("side", True),
    "height": ("height", False),
    "width": ("width", False),
    "input_size": ("flat", False),
    "in_features": ("flat", False),
    "input_dim": ("flat", False),
}
# what a callable taking only ``**kwargs`` gets tried with (the convention of torchvision and timm builders)
KWARGS_CONVENTION = ("num_classes",)


@dataclass
class BuiltNet:
    """A network built for the data: what was passed to its target, and which config keys were not."""

    net: nn.Module
    target: str
    arguments: dict[str, Any] = field(default_factory=dict)
    not_passed: list[str] = field(default_factory=list)


def not_passed_note(model: str, keys: list[str]) -> str:
    """The one line naming the config keys ``model`` does not take (they were left out)."""
    return f"model: {model} does not take {', '.join(keys)}: not passed (remove them from model.*, or ignore this)"


def locate(target: str, label: str) -> Callable[..., Any]:
    """The object ``pkg.mod.Name`` (``pkg.mod.Class.factory`` too); one-line :class:`UserError` otherwise."""
    parts = str(target).split(".")
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        raise UserError(
            f"{label} is not a dotted path: give pkg.module.Class (importable, e.g. on PYTHONPATH)"
        )
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is not None and (module_name + ".").startswith(err.name + "."):
                continue  # not this prefix: try a shorter one
            raise UserError(
                f"{label}: importing {module_name} failed ({_first_line(err)}): install what it needs"
            ) from None
        except Exception as err:
            raise UserError(f"{label}: importing {module_name} failed ({_first_line(err)})") from None
        for i, name in enumerate(parts[cut:], start=cut):
            if not hasattr(obj, name):
                options = [n for n in dir(obj) if not n.startswith("_")]
                close = difflib.get_close_matches(name, options, n=1)
                hint = f" (did you mean {'.'.join(parts[:i])}.{close[0]}?)" if close else ""
                raise UserError(f"{label}: {'.'.join(parts[:i])} has no {name!r}{hint}")
            obj = getattr(obj, name)
        if not callable(obj):
            raise UserError(f"{label} is a {type(obj).__name__}, not a class or function that builds a model")
        return obj
    raise UserError(
        f"{label} cannot be imported (no module {parts[0]!r}): put its package on PYTHONPATH or pip install it"
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _parameters(fn: Callable[..., Any]) -> tuple[dict[str, inspect.Parameter], bool]:
    """``fn``'s keyword-passable parameters and whether it takes ``**kwargs`` (unknown signature: only kwargs)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return {}, True
    params = {
        name: p
        for name, p in signature.parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    return params, var_kw


def data_arguments(fn: Callable[..., Any], shape: DataShape) -> tuple[dict[str, Any], set[str]]:
    """The arguments ``fn`` takes from the data, and which of them are only tried (``**kwargs``: may be refused)."""
    params, var_kw = _parameters(fn)
    out: dict[str, Any] = {}
    for name, param in params.items():
        if name in DATA_ARGUMENTS:
            meaning, unambiguous = DATA_ARGUMENTS[name]
            if unambiguous or param.default is inspect.Parameter.empty:
                out[name] = shape.value(meaning)
    tried = set()
    if var_kw and not any(DATA_ARGUMENTS[n][0] == "classes" for n in out):
        for name in KWARGS_CONVENTION:
            out.setdefault(name, shape.value(DATA_ARGUMENTS[name][0]))
            tried.add(name)
    return out, tried


def call_dropping_refused(
    fn: Callable[..., Any], kwargs: dict[str, Any], droppable: set[str], label: str
) -> tuple[Any, list[str]]:
    """``fn(**kwargs)``; a keyword in ``droppable`` that ``fn`` refuses ("unexpected keyword argument") is left
    out and the call repeated with the random state it started with, so the weights are those of one clean call.
    Returns ``(result, refused keys)``; any other failure is a one-line :class:`UserError`."""
    kwargs, refused = dict(kwargs), []
    rng = torch.random.get_rng_state()
    while True:
        try:
            return fn(**kwargs), refused
        except TypeError as err:
            match = UNEXPECTED_KEYWORD.search(str(err))
            if match is None or match.group(1) not in kwargs or match.group(1) not in droppable:
                raise UserError(
                    f"{label} cannot be built ({_first_line(err)}): {_argument_hint(fn, kwargs)}"
                ) from None
            refused.append(match.group(1))
            del kwargs[match.group(1)]
            torch.random.set_rng_state(rng)
        except UserError:
            raise
        except Exception as err:
            raise UserError(
                f"{label} failed to build ({_first_line(err)}): {_argument_hint(fn, kwargs)}"
            ) from None


def _argument_hint(fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> str:
    params, _ = _parameters(fn)
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in kwargs]
    if missing:
        return f"give {', '.join(missing)} on the command line (+model.{missing[0]}=...)"
    passed = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "no arguments"
    return f"it was called with {passed}; fix the model.* keys"


def build_net(
    target: str, options: Mapping[str, Any], shape: DataShape, label: str | None = None
) -> BuiltNet:
    """Build ``target`` for data of ``shape`` with the config ``options`` it accepts; probe it; see the module doc.

    ``label`` names the model in errors (default ``model._target_=<target>``).
    """
    label = label or f"model._target_={target}"
    fn = locate(target, label)
    if inspect.isclass(fn) and not issubclass(fn, nn.Module):
        raise UserError(
            f"{label} is the class {fn.__name__}, not a torch.nn.Module: give a model class or factory"
        )
    params, var_kw = _parameters(fn)
    kwargs, tried = data_arguments(fn, shape)
    config = {str(k): v for k, v in options.items() if str(k) not in HYDRA_KEYS}
    not_passed = [k for k in config if k not in params and not var_kw]
    kwargs.update({k: v for k, v in config.items() if k not in not_passed})
    net, refused = call_dropping_refused(fn, kwargs, tried | set(config), label)
    not_passed += [k for k in refused if k in config]
    if not isinstance(net, nn.Module):
        raise UserError(
            f"{label} returned a {type(net).__name__}, not a torch.nn.Module: give a model class or factory"
        )
    probe(net, shape, label)
    arguments = {k: v for k, v in kwargs.items() if k not in refused}
    return BuiltNet(net, target, arguments, not_passed)


def probe(net: nn.Module, shape: DataShape, label: str) -> None:
    """Run ``net`` in training mode on a random batch of ``shape``; it must return ``(batch, num_classes)`` logits.

    Leaves no trace: the global random state (dropout) and every buffer (BatchNorm statistics) are restored.
    """
    x = torch.rand(
        PROBE_BATCH, shape.channels, shape.height, shape.width, generator=torch.Generator().manual_seed(0)
    )
    buffers = {name: b.clone() for name, b in net.named_buffers()}
    was_training = net.training
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            net.train()
            out = net(x)
    except Exception as err:
        raise UserError(
            f"{label} fails on a probe batch of shape {tuple(x.shape)} ({_first_line(err)}): "
            f"give it arguments that fit the data ({shape})"
        ) from None
    finally:
        net.train(was_training)
        with torch.no_grad():
            for name, b in net.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
    expected = (PROBE_BATCH, shape.num_classes)
    if not torch.is_tensor(out) or tuple(out.shape) != expected:
        got = f"shape {tuple(out.shape)}" if torch.is_tensor(out) else f"a {type(out).__name__}"
        raise UserError(
            f"{label} returns {got} for a batch of shape {tuple(x.shape)}, not logits of shape {expected}: "
            f"a classifier must return one logit per class ({shape})"
        )
