"""Per-sample flip + padded crop: identity for ``none``, determinism per (seed, epoch, batch), per-sample
randomness, dtype/shape, and that a crop is exactly a shifted window of the zero-padded image."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from lossdiag.functional.augment import AUGMENTATIONS, augment_batch, default_pad, flip_crop

torch.set_num_threads(1)

B, C, H, W = 64, 3, 32, 32


def _ramp(batch: int = B, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Every pixel a distinct positive value ``1 + h * W + w`` (+ a per-channel offset), so zeros are padding
    and a value tells where it came from."""
    plane = 1 + torch.arange(H * W, dtype=torch.float32).reshape(H, W)
    image = torch.stack([plane + 10_000 * ch for ch in range(C)])
    return image.expand(batch, C, H, W).to(dtype).clone()


def test_none_is_identity() -> None:
    x = torch.rand(4, C, H, W)
    assert augment_batch(x, "none", 0, 0, 0) is x
    assert AUGMENTATIONS == ("none", "flip_crop")


def test_shape_dtype_preserved() -> None:
    for dtype in (torch.uint8, torch.float32, torch.float16, torch.float64):
        x = (torch.rand(8, C, H, W) * 255).to(dtype)
        y = augment_batch(x, "flip_crop", 1, 2, 3)
        assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    assert default_pad(32, 32) == 4 and default_pad(8, 8) == 1 and default_pad(28, 28) == 3


def test_deterministic_per_seed_epoch_batch_and_independent_of_global_rng() -> None:
    x = _ramp()
    torch.manual_seed(123)
    first = augment_batch(x, "flip_crop", 7, 3, 5)
    after = torch.rand(3)
    augment_batch(x, "flip_crop", 7, 0, 0)  # another batch in between: no hidden state (resumable)
    torch.manual_seed(123)
    again = augment_batch(x, "flip_crop", 7, 3, 5)
    assert torch.equal(first, again)
    assert torch.equal(torch.rand(3), after)  # the global RNG stream was not consumed
    for other in ((7, 4, 5), (7, 3, 6), (8, 3, 5), (7, 5, 3)):
        assert not torch.equal(first, augment_batch(x, "flip_crop", *other)), other


def test_flips_and_offsets_differ_within_a_batch() -> None:
    x = _ramp()
    y = flip_crop(x, torch.Generator().manual_seed(0), pad=0)  # flips only
    flipped = torch.tensor([torch.equal(y[i], TF.horizontal_flip(x[i])) for i in range(B)])
    kept = torch.tensor([torch.equal(y[i], x[i]) for i in range(B)])
    assert (flipped ^ kept).all()  # each sample is exactly one of the two
    assert 16 < int(flipped.sum()) < 48  # p = 0.5 over 64 samples, both present
    z = augment_batch(x, "flip_crop", 0, 0, 0)
    assert len({z[i].sum().item() for i in range(B)}) > B // 2  # different crops, not one shared offset


def test_crop_is_a_shifted_window_of_the_padded_image() -> None:
    pad = default_pad(H, W)
    x = _ramp()
    y = augment_batch(x, "flip_crop", 3, 1, 2)
    padded = TF.pad(x[0], [pad])
    candidates = {
        (dy, dx, flip): TF.horizontal_flip(window) if flip else window
        for dy in range(2 * pad + 1)
        for dx in range(2 * pad + 1)
        for flip in (False, True)
        for window in [padded[:, dy : dy + H, dx : dx + W]]
    }
    seen = set()
    for i in range(B):
        matches = [key for key, window in candidates.items() if torch.equal(y[i], window)]
        assert len(matches) == 1, i
        seen.add(matches[0])
        # the center pixel came from at most pad rows/columns away (flipped: from the mirrored column)
        source = int(y[i, 0, H // 2, W // 2].item()) - 1
        assert source >= 0  # the center is never padding
        row, col = divmod(source, W)
        center_col = W - 1 - W // 2 if matches[0][2] else W // 2
        assert abs(row - H // 2) <= pad and abs(col - center_col) <= pad
    assert len(seen) > B // 2


def test_uint8_batch_keeps_values() -> None:
    x = torch.randint(1, 256, (B, C, H, W), dtype=torch.uint8)
    y = augment_batch(x, "flip_crop", 0, 0, 0)
    # every output value is an input value of the same sample, or zero padding
    for i in range(4):
        assert set(y[i].unique().tolist()) <= {0, *x[i].unique().tolist()}


def test_bad_input() -> None:
    x = torch.zeros(2, C, H, W)
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment_batch(x, "mixup", 0, 0, 0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        augment_batch(x[0], "flip_crop", 0, 0, 0)
    with pytest.raises(ValueError, match=">= 0"):
        augment_batch(x, "flip_crop", -1, 0, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    x = _ramp(dtype=torch.uint8)
    y = augment_batch(x.cuda(), "flip_crop", 5, 2, 9)
    assert y.is_cuda and torch.equal(y.cpu(), augment_batch(x, "flip_crop", 5, 2, 9))
