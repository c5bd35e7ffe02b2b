"""Small generated RGB image folders (one subfolder per class) that a ShallowNet learns in a few epochs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# one colour per class (RGB); images are that colour in one half, its complement in the other, plus noise
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 220), (210, 200, 40), (170, 50, 190)]


def write_image_folder(
    root: Path, counts: dict[str, int], size: int = 12, seed: int = 0, noise: float = 40.0
) -> int:
    """Write ``counts[name]`` PNG images into ``root/<name>/`` for each class; returns how many were written.

    Class ``c`` is colour ``COLOURS[c]`` in the top half (its complement below) with Gaussian noise, so the
    classes are easy but not trivially separable at the pixel level; ``seed`` gives another folder of the
    same classes.
    """
    rng = np.random.default_rng(seed)
    total = 0
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        colour = np.array(COLOURS[c % len(COLOURS)], dtype=np.float64)
        for i in range(n):
            img = np.empty((size, size, 3))
            img[: size // 2] = colour
            img[size // 2 :] = 255 - colour
            img += rng.normal(0, noise, img.shape)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                root / name / f"{name}_{seed}_{i}.png"
            )
            total += 1
    return total
