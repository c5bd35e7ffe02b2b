"""Per-sample batch augmentation: the standard remedy for over-fitting, applied on the batch's device.

``torchvision.transforms.v2`` transforms draw ONE random parameter for a whole batched tensor, so every image in
the batch would get the same flip and the same crop. Here the parameters are drawn per sample and applied
vectorised: the batch is padded once with ``torchvision.transforms.v2.functional.pad`` and every sample's
window is gathered with its own offsets, its columns read in reverse when the sample is flipped (a per-sample
``torch.where`` on the column index).

The random parameters come from a CPU ``torch.Generator`` seeded by ``(seed, epoch, batch_index)`` only, never
from the global RNG: the same run, epoch and batch always get the same augmentation (a resumed run reproduces
it), the global RNG stream is untouched, and the parameters are identical on CPU and CUDA.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

AUGMENTATIONS: tuple[str, ...] = ("none", "flip_crop")


def batch_generator(seed: int, epoch: int, batch_index: int) -> torch.Generator:
    """A CPU generator for one batch; ``SeedSequence`` mixes the three numbers so that nearby
    ``(seed, epoch, batch)`` triples give unrelated streams (``seed + epoch`` would collide)."""
    if min(seed, epoch, batch_index) < 0:
        raise ValueError(f"seed, epoch and batch_index must be >= 0, got {seed}, {epoch}, {batch_index}")
    state = np.random.SeedSequence([seed, epoch, batch_index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def default_pad(height: int, width: int) -> int:
    """Crop padding: 4 pixels for 32 px images, as in the usual CIFAR recipe, and at least 1."""
    return max(1, min(height, width) // 8)


def flip_crop(x: torch.Tensor, generator: torch.Generator, pad: int | None = None) -> torch.Tensor:
    """Random horizontal flip (p = 0.5) and random ``H x W`` crop of the zero-padded image, per sample.

    Zero padding (not reflect) because it is the standard recipe (He et al. 2016; torchvision's
    ``RandomCrop(32, padding=4)``): a shifted image shows a black border instead of inventing mirrored content.
    Flipping the cropped window is the same as flipping before the crop since the padding is symmetric.
    ``pad=0`` flips only. Keeps ``x``'s dtype (uint8 or float) and device.
    """
    if x.ndim != 4:
        raise ValueError(f"expected a batch (B, C, H, W), got shape {tuple(x.shape)}")
    batch, channels, height, width = x.shape
    pad = default_pad(height, width) if pad is None else pad
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    flip = (torch.rand(batch, generator=generator) < 0.5).to(x.device)
    offsets = torch.randint(0, 2 * pad + 1, (2, batch), generator=generator).to(x.device)

    rows = offsets[0, :, None] + torch.arange(height, device=x.device)  # (B, H) rows of the padded image
    cols = offsets[1, :, None] + torch.arange(width, device=x.device)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    padded = TF.pad(x, [pad], fill=0) if pad else x
    # one gather over the flattened padded plane (3-4x faster than 4-tensor advanced indexing on CPU)
    index = (rows[:, :, None] * padded.shape[-1] + cols[:, None, :]).reshape(batch, 1, height * width)
    windows = padded.reshape(batch, channels, -1).gather(2, index.expand(batch, channels, -1))
    return windows.reshape(batch, channels, height, width)


def augment_batch(
    x: torch.Tensor, name: str, seed: int, epoch: int, batch_index: int, *, pad: int | None = None
) -> torch.Tensor:
    """Augment a training batch ``(B, C, H, W)``: ``none`` returns ``x`` itself, ``flip_crop`` see
    :func:`flip_crop`. Deterministic in ``(seed, epoch, batch_index)``."""
    if name == "none":
        return x
    if name == "flip_crop":
        return flip_crop(x, batch_generator(seed, epoch, batch_index), pad)
    raise ValueError(f"unknown augmentation {name!r}: choose one of {', '.join(AUGMENTATIONS)}")
