"""Generated, learnable image folders with optional, recorded label noise (nothing is downloaded).

Each class is a patch of oriented stripes (class ``k`` of ``C``: angle ``180 * k / C`` degrees) with a random
position, size, stripe period, phase and colours, on a random background, with pixel noise and a faint
striped distractor of a random orientation. Colour carries no class information, so a model must find the
orientation: the tiny ShallowNet (one 3x3 conv, linear head) learns it over tens of epochs to roughly
0.8-0.95 val accuracy on 600 images, instead of 1.0 after one epoch. ``kind="colours"`` is the easy
counterpart: each class also has its own hue and the patch is bold and clean, so ShallowNet learns it in a
few epochs to about 1.0 (label-error finders are measured on both kinds). ``noise_fraction`` then moves a
seeded, class-balanced set of images into a wrong class folder and records which, so label-error finders
can be scored against the truth.

    python -m lossdiag.data.synthetic /tmp/stripes --classes 3 --per-class 200 --noise 0.08 --seed 0
    python -m lossdiag.data.synthetic /tmp/colours --kind colours --noise 0.08
"""

from __future__ import annotations

import argparse
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

FORMATS = {"png": "PNG", "bmp": "BMP", "jpg": "JPEG", "jpeg": "JPEG"}
KINDS = ("stripes", "colours")  # slow to learn (orientation only), easy (orientation and a class hue)


@dataclass
class GeneratedFolder:
    """What :func:`make_image_folder` wrote: every file with its true and its given (folder) class."""

    root: Path
    class_names: list[str]
    files: list[Path] = field(default_factory=list)
    true_class: dict[Path, str] = field(default_factory=dict)
    given_class: dict[Path, str] = field(default_factory=dict)
    moved: list[Path] = field(default_factory=list)

    @property
    def noise_fraction(self) -> float:
        """Fraction of files whose folder is not their true class."""
        return len(self.moved) / len(self.files) if self.files else 0.0

    def is_moved(self, path: Path | str) -> bool:
        """Whether ``path`` (as written, or as a string) sits in a wrong class folder."""
        path = Path(path)
        return self.true_class[path] != self.given_class[path]

    def summary(self) -> str:
        """One line: where, how many images and classes, how many moved."""
        return (
            f"{self.root}: {len(self.files)} images in {len(self.class_names)} classes "
            f"({', '.join(self.class_names)}), {len(self.moved)} moved to a wrong class "
            f"({self.noise_fraction:.1%})"
        )


def class_names_for(n_classes: int) -> list[str]:
    """``class_a`` ... ``class_z``; over 26 classes ``class_000``, ``class_001``, ... (sorted = index order)."""
    if n_classes <= 26:
        return [f"class_{letter}" for letter in string.ascii_lowercase[:n_classes]]
    return [f"class_{i:0{len(str(n_classes - 1))}d}" for i in range(n_classes)]


def _stripes(size: int, angle: float, period: float, phase: float) -> np.ndarray:
    """``(size, size)`` sinusoidal stripes in ``[0, 1]`` whose crests run at ``angle`` radians."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    # the wave travels perpendicular to the crests
    u = -xx * np.sin(angle) + yy * np.cos(angle)
    return 0.5 + 0.5 * np.sin(2 * np.pi * u / period + phase)


def _disc(size: int, cy: float, cx: float, radius: float) -> np.ndarray:
    """Soft-edged disc mask in ``[0, 1]``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dist = np.hypot(yy - cy, xx - cx)
    return np.clip(radius - dist + 0.5, 0.0, 1.0)


def _class_colour(label: int, n_classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Dark and light stripe colours of class ``label`` (``kind="colours"``): its own hue, jittered a little."""
    import colorsys

    hue = (label / n_classes + rng.normal(0.0, 0.02)) % 1.0
    light = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.7, 0.9), rng.uniform(0.85, 1.0)))
    return light * rng.uniform(0.15, 0.3), light


def render(
    label: int, n_classes: int, size: int, rng: np.random.Generator, kind: str = "stripes"
) -> np.ndarray:
    """One ``uint8`` ``(size, size, 3)`` image of class ``label``; all randomness comes from ``rng``."""
    if kind == "colours":
        dark, light = _class_colour(label, n_classes, rng)
        angle = np.pi * label / n_classes + rng.normal(0.0, np.deg2rad(5))
        waves = _stripes(size, angle, period=rng.uniform(4.0, 6.0), phase=rng.uniform(0, 2 * np.pi))
        img = dark + waves[..., None] * (light - dark) + rng.normal(0.0, 0.05, size=(size, size, 3))
        return (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    background = rng.uniform(0.15, 0.85, size=3)
    img = np.broadcast_to(background, (size, size, 3)).copy()

    def patch(angle: float, radius: float, contrast: float, spread: float = 1.0) -> None:
        """Draw a striped disc; its centre is uniform over ``spread`` of the room the radius leaves."""
        cy, cx = size / 2 + spread * rng.uniform(radius * 0.6 - size / 2, size / 2 - radius * 0.6, size=2)
        waves = _stripes(size, angle, period=rng.uniform(3.0, 6.0), phase=rng.uniform(0, 2 * np.pi))
        dark, light = rng.uniform(0.0, 1.0, size=3), rng.uniform(0.0, 1.0, size=3)
        light = dark + contrast * (light - dark) / max(np.abs(light - dark).max(), 1e-6)
        stripes = dark + waves[..., None] * (light - dark)
        mask = _disc(size, cy, cx, radius)[..., None]
        img[:] = img * (1 - mask) + stripes * mask

    # distractor first, so the class patch is drawn over it where they overlap
    patch(rng.uniform(0, np.pi), radius=rng.uniform(0.10, 0.18) * size, contrast=rng.uniform(0.1, 0.3))
    angle = np.pi * label / n_classes + rng.normal(0.0, np.deg2rad(5))
    # the linear head weighs each position separately: the class patch stays near the middle
    patch(angle, radius=rng.uniform(0.30, 0.45) * size, contrast=rng.uniform(0.5, 0.9), spread=0.5)
    img += rng.normal(0.0, 0.08, size=img.shape)
    return (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def _moved_indices(labels: np.ndarray, n_classes: int, n_moved: int, rng: np.random.Generator) -> np.ndarray:
    """``n_moved`` indices spread as evenly as possible over the true classes (ties broken at random)."""
    per_class = np.full(n_classes, n_moved // n_classes)
    per_class[rng.permutation(n_classes)[: n_moved % n_classes]] += 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[: per_class[c]] for c in range(n_classes)]
    return np.sort(np.concatenate(picked))


def make_image_folder(
    root: Path,
    n_classes: int = 3,
    per_class: int = 200,
    image_size: int = 32,
    noise_fraction: float = 0.0,
    seed: int = 0,
    fmt: str = "png",
    reuse: bool = True,
    kind: str = "stripes",
) -> GeneratedFolder:
    """Write ``root/<class_name>/img_#####.<fmt>``: ``per_class`` RGB images per class, deterministic per seed.

    ``round(noise_fraction * n_classes * per_class)`` images, spread over the true classes, go to a wrong
    class folder chosen uniformly among the others; file names carry no class. ``root`` must be empty or
    absent, so a folder never mixes two generations, except that with ``reuse`` a folder this function
    completed with the same arguments (its hidden ``.synthetic`` marker says so) is returned as it is:
    benchmarks can cache their data.
    """
    root = Path(root)
    if n_classes < 2:
        raise ValueError(f"n_classes={n_classes}: at least 2 are needed")
    if per_class < 1 or image_size < 8:
        raise ValueError(f"per_class={per_class} must be >= 1 and image_size={image_size} >= 8")
    if not 0.0 <= noise_fraction < 1.0:
        raise ValueError(f"noise_fraction={noise_fraction} must be in [0, 1)")
    if fmt.lower() not in FORMATS:
        raise ValueError(f"fmt={fmt!r} is not one of {', '.join(FORMATS)}")
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {', '.join(KINDS)}")
    marker = root / ".synthetic"
    signature = f"{n_classes} {per_class} {image_size} {noise_fraction!r} {seed} {fmt.lower()} v1"
    signature += "" if kind == "stripes" else f" {kind}"
    done = reuse and marker.is_file() and marker.read_text() == signature
    if not done and root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} is not empty: give a new or empty folder")

    names = class_names_for(n_classes)
    n_total = n_classes * per_class
    labels_seed, images_seed = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(labels_seed)
    # shuffled order, so image numbers do not reveal the class either
    labels = np.repeat(np.arange(n_classes), per_class)[rng.permutation(n_total)]
    out = _labelled(root, names, labels, noise_fraction, rng, fmt.lower())
    if done:
        return out
    # one stream per image, independent of the label draws above
    streams = images_seed.spawn(n_total)
    _write(out, lambda i: render(int(labels[i]), n_classes, image_size, np.random.default_rng(streams[i]), kind),
           FORMATS[fmt.lower()])  # fmt: skip
    marker.write_text(signature)
    return out


def _labelled(
    root: Path,
    names: list[str],
    labels: np.ndarray,
    noise_fraction: float,
    rng: np.random.Generator,
    ext: str,
) -> GeneratedFolder:
    """The files of ``labels`` (true classes) with ``round(noise_fraction * N)`` of them moved, spread over the
    true classes, each to a wrong class folder chosen uniformly among the others."""
    n_classes = len(names)
    moved_idx = _moved_indices(labels, n_classes, round(noise_fraction * len(labels)), rng)
    given = labels.copy()
    given[moved_idx] = (labels[moved_idx] + rng.integers(1, n_classes, size=len(moved_idx))) % n_classes
    width = max(5, len(str(len(labels) - 1)))
    out = GeneratedFolder(root=root, class_names=names)
    out.files = [root / names[g] / f"img_{i:0{width}d}.{ext}" for i, g in enumerate(given)]
    out.true_class = {path: names[t] for path, t in zip(out.files, labels, strict=True)}
    out.given_class = {path: names[g] for path, g in zip(out.files, given, strict=True)}
    out.moved = [out.files[i] for i in moved_idx]
    return out


def _write(out: GeneratedFolder, pixels: Callable[[int], np.ndarray], fmt: str) -> None:
    """Save image ``i`` (``pixels(i)``, uint8) as ``out.files[i]``."""
    for name in out.class_names:
        (out.root / name).mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(out.files):
        Image.fromarray(pixels(i)).save(path, format=fmt)


def make_digits_folder(
    root: Path, noise_fraction: float = 0.0, seed: int = 0, reuse: bool = True
) -> GeneratedFolder:
    """scikit-learn's bundled 8x8 digits (1,797 images, classes ``digit_0`` ... ``digit_9``) written as one-channel
    PNGs, ``root/<class>/img_#####.png``, with ``noise_fraction`` of them moved to a wrong class as
    :func:`make_image_folder` does (train on them with ``data=folder data.channels=1 data.image_size=8``)."""
    from sklearn.datasets import load_digits

    root = Path(root)
    if not 0.0 <= noise_fraction < 1.0:
        raise ValueError(f"noise_fraction={noise_fraction} must be in [0, 1)")
    marker = root / ".synthetic"
    signature = f"digits {noise_fraction!r} {seed} v1"
    done = reuse and marker.is_file() and marker.read_text() == signature
    if not done and root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} is not empty: give a new or empty folder")
    digits = load_digits()
    out = _labelled(root, [f"digit_{d}" for d in range(10)], np.asarray(digits.target), noise_fraction,
                    np.random.default_rng(seed), "png")  # fmt: skip
    if not done:
        # the pixel values are 0..16: stretched to 0..255
        images = np.round(np.asarray(digits.images) * (255 / 16)).astype(np.uint8)
        _write(out, lambda i: images[i], "PNG")
        marker.write_text(signature)
    return out


def main(argv: list[str] | None = None) -> GeneratedFolder:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="new or empty folder to write the class folders into")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--size", type=int, default=32, help="image width and height in pixels")
    parser.add_argument("--noise", type=float, default=0.0, help="fraction of images moved to a wrong class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", default="png", choices=sorted(FORMATS))
    parser.add_argument(
        "--kind", default="stripes", choices=KINDS, help="stripes: slow to learn; colours: easy"
    )
    args = parser.parse_args(argv)
    try:
        folder = make_image_folder(
            args.root,
            args.classes,
            args.per_class,
            args.size,
            args.noise,
            args.seed,
            args.format,
            kind=args.kind,
        )
    except ValueError as err:
        parser.error(str(err))
    print(folder.summary())
    return folder


if __name__ == "__main__":
    main()
