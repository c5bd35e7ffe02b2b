"""Any torchvision classification model, untrained, fitted to the data: ``model=torchvision model.name=<builder>``.

``weights`` stays ``None`` (nothing is downloaded at run time). The first convolution takes the data's channel
count (grayscale digits included) and, for small images, the stem is the CIFAR one (:func:`adapt_stem`).
"""

from __future__ import annotations

import difflib
import logging
from typing import Any

from torch import nn

from lossdiag.errors import UserError
from lossdiag.models.builders import call_dropping_refused, not_passed_note

# ``small_stem: auto`` uses the small-image stem below this shorter image side (8x8 digits, 28x28, 32x32 CIFAR-size)
SMALL_IMAGE = 64
SMALL_STEM_CHOICES = ("auto", True, False)
log = logging.getLogger(__name__)


def classification_models() -> list[str]:
    """The names of torchvision's classification builders (``resnet18``, ``vit_b_16``, ...)."""
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def resolve_small_stem(small_stem: bool | str, image_size: int | tuple[int, int]) -> bool:
    """``auto`` -> whether the shorter image side is under :data:`SMALL_IMAGE`; ``True``/``False`` as given."""
    if small_stem not in SMALL_STEM_CHOICES:
        raise UserError(f"model.small_stem={small_stem!r} must be auto, true or false")
    if small_stem == "auto":
        side = min(image_size) if isinstance(image_size, tuple | list) else int(image_size)
        return side < SMALL_IMAGE
    return bool(small_stem)


def torchvision_classifier(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int | tuple[int, int] = 224,
    small_stem: bool | str = "auto",
    weights: Any = None,
    **kwargs: Any,
) -> nn.Module:
    """``torchvision.models.<name>(weights=None, num_classes=..., **kwargs)`` with its stem fitted to the data.

    ``image_size`` goes to builders that take it (``vit_*``); ``kwargs`` (``+model.<key>=...``) to the builder,
    those it refuses are named in one log line.
    """
    import torchvision

    label = f"model.name={name}"
    if weights is not None:
        raise UserError(
            f"model.weights={weights!r}: pretrained weights would be downloaded, which lossdiag never does; keep "
            "model.weights=null (to continue from your own weights: ckpt_path=<checkpoint>)"
        )
    names = classification_models()
    if name not in names:
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(
            f"{label} is not a torchvision classification model{hint}: choose one of "
            "torchvision.models.list_models(module=torchvision.models), e.g. resnet18"
        )
    small = resolve_small_stem(small_stem, image_size)
    builder = torchvision.models.get_model_builder(name)
    arguments = {"weights": None, "num_classes": num_classes, "image_size": image_size, **kwargs}
    net, refused = call_dropping_refused(builder, arguments, {"image_size", *kwargs}, label)
    not_passed = [k for k in refused if k in kwargs]
    if not_passed:
        log.warning(not_passed_note(f"torchvision.models.{name}", not_passed))
    adapt_stem(net, in_channels, small, label)
    return net


def _set_module(net: nn.Module, dotted: str, module: nn.Module) -> None:
    """Replace the submodule at ``dotted`` (``conv1``, ``features.0.0``) by ``module``."""
    parent, _, child = dotted.rpartition(".")
    (net.get_submodule(parent) if parent else net).add_module(child, module)


def adapt_stem(net: nn.Module, in_channels: int, small: bool, label: str) -> None:
    """Fit ``net``'s first convolution to ``in_channels``; ``small``: make the stem the CIFAR-size one.

    The small stem (He et al. 2016, section 4.2; the usual CIFAR ResNet) turns a strided first convolution into
    a 3x3/stride-1 one and drops the max-pool that follows it (before the second convolution), so a 32x32
    image keeps its resolution into the first stage. A patch embedding (kernel == stride, ViT, Swin) is left
    as it is. A replaced convolution is initialised as torchvision initialises ResNet convolutions.
    """
    named = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    if not named:
        if in_channels != 3:
            raise UserError(
                f"{label} has no Conv2d to take {in_channels}-channel images: use data.channels=3"
            )
        return
    name, first = named[0]
    patchify = first.kernel_size == first.stride
    strided = first.stride[0] > 1 or first.stride[1] > 1
    shrink = small and strided and not patchify
    if small and not shrink:
        log.info("%s: model.small_stem has nothing to change (its first conv is not a strided stem)", label)
    if first.in_channels == in_channels and not shrink:
        return
    if first.groups != 1:
        raise UserError(f"{label}: its first conv is grouped ({first.groups} groups); use data.channels=3")
    conv = nn.Conv2d(
        in_channels,
        first.out_channels,
        kernel_size=3 if shrink else first.kernel_size,  # type: ignore[arg-type]
        stride=1 if shrink else first.stride,  # type: ignore[arg-type]
        padding=1 if shrink else first.padding,  # type: ignore[arg-type]
        dilation=1 if shrink else first.dilation,  # type: ignore[arg-type]
        bias=first.bias is not None,
    )
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    _set_module(net, name, conv)
    if shrink:
        second = named[1][0] if len(named) > 1 else None
        for pool_name, module in net.named_modules():
            if pool_name == second:
                break
            if isinstance(module, nn.MaxPool2d):
                _set_module(net, pool_name, nn.Identity())
                break
