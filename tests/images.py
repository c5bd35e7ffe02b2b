"""A learnable generated RGB image folder for tests: class-specific coloured patterns plus noise.

A few images (``mislabelled``) are filed under another class, so a trained model has confidently-wrong
samples as real data do. Class names are long on purpose (captions and tables must cope with them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("golden_retriever_puppy", "maine_coon_cat", "red_panda", "axolotl")


def pattern(class_id: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``(size, size, 3)`` uint8 image: a class colour, a class stripe direction, noise."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    stripes = [
        np.sin(8 * np.pi * xx),
        np.sin(8 * np.pi * yy),
        np.sin(8 * np.pi * (xx + yy)),
        np.sin(8 * np.pi * (xx - yy)),
    ]
    colour = np.array([[0.9, 0.6, 0.2], [0.4, 0.4, 0.5], [0.8, 0.2, 0.1], [0.9, 0.6, 0.7]])[class_id % 4]
    shade = 0.5 + 0.2 * stripes[class_id % 4] + rng.normal(0, 0.45, (size, size))
    image = shade[..., None] * colour[None, None, :] + rng.normal(0, 0.2, (size, size, 3))
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def make_pattern_folder(
    root: Path, per_class: int = 40, size: int = 32, classes=CLASSES, seed: int = 0, mislabelled: float = 0.08
) -> Path:
    """``root/<class>/<i>.png`` for every class (made once; an existing folder is kept)."""
    rng = np.random.default_rng(seed)
    for class_id, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            drawn = class_id if rng.random() >= mislabelled else (class_id + 1) % len(classes)
            image = pattern(drawn, size, rng)
            path = folder / f"{i:03d}.png"
            if not path.exists():
                Image.fromarray(image).save(path)
    return root
