"""An image folder (one subfolder per class): which files it holds, how one image is decoded, and what to say
about the files that cannot be used.

The steps are separate so every data mode (:mod:`lossdiag.data.folder_modes`) shares them: :func:`list_images`
lists the files (and stops at, or warns about, files that are not images), the images are decoded (all of
them into memory or the decode cache, or only their headers checked for the lazy mode), and
:func:`check_decoded` skips or stops at the unreadable ones with the same one-line messages in every mode.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from lossdiag.errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
# what PIL raises for a file it cannot open or decode (corrupt, truncated, not an image after all)
DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError)


def find_classes(root: Path) -> list[str]:
    """Sorted class-folder names under ``root`` (hidden folders ignored); at least two are required."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise UserError(
            f"{root} has {len(classes)} class folder(s) {classes}: put each class's images in its own "
            "subfolder, with at least 2 classes"
        )
    return classes


def _files(folder: Path) -> tuple[list[Path], list[Path]]:
    """``(image files, other files)`` under ``folder`` by suffix; hidden files (``.DS_Store``) are ignored."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    return images, [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]


def _shown(paths: list[str]) -> str:
    return ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")


@dataclass
class Listing:
    """Every image file of some class folders, in a fixed order: part by part, class by class, sorted names.

    ``label[i]`` is file ``i``'s class (its index in the ``class_names`` given to :func:`list_images`) and
    ``part[i]`` the position of its folder in the ``folders`` given (e.g. 0 = ``train/``, 1 = ``val/``).
    """

    files: list[Path]
    label: np.ndarray
    part: np.ndarray
    class_dirs: list[tuple[int, int, Path]] = field(default_factory=list)  # (part, label, folder) listed

    def __len__(self) -> int:
        return len(self.files)


def list_images(
    root: Path, folders: Sequence[Path], class_names: Sequence[str], on_bad_image: str = "skip"
) -> Listing:
    """The image files under ``folder/<class>/`` for every folder (under ``root``) and every class name that
    is a folder there.

    Files that are not images (by suffix) stop here with a :class:`UserError` (``on_bad_image="fail"``) or
    are ignored with one warning naming them. A class folder without image files is an error.
    """
    files: list[Path] = []
    labels: list[int] = []
    parts: list[int] = []
    class_dirs: list[tuple[int, int, Path]] = []
    ignored: list[str] = []
    for part, folder in enumerate(folders):
        for label, name in enumerate(class_names):
            if not (folder / name).is_dir():
                continue
            images, others = _files(folder / name)
            if others and on_bad_image == "fail":
                raise UserError(
                    f"{others[0]} is not an image (suffix not one of {', '.join(sorted(IMAGE_SUFFIXES))}): "
                    "move it out of the class folder, or set data.on_bad_image=skip to ignore such files"
                )
            if not images:
                raise UserError(
                    f"class folder {folder / name} has no readable images: add images or remove the folder"
                )
            ignored += [str(p) for p in others]
            class_dirs.append((part, label, folder / name))
            files += images
            labels += [label] * len(images)
            parts += [part] * len(images)
    if ignored:
        log.warning("ignored %d non-image file(s) under %s: %s", len(ignored), root, _shown(ignored))
    return Listing(files, np.asarray(labels, dtype=np.int64), np.asarray(parts, dtype=np.int64), class_dirs)


def load_image(path: Path, image_size: int, channels: int) -> np.ndarray:
    """One image as ``uint8`` ``(channels, image_size, image_size)``; any PIL mode is converted."""
    mode = "L" if channels == 1 else "RGB"
    with Image.open(path) as img:
        img = img.convert("RGBA").convert(mode) if img.mode in ("P", "PA", "LA") else img
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            arr = np.asarray(img, dtype=np.float64)
            span = arr.max() - arr.min()
            arr = (arr - arr.min()) / span * 255 if span > 0 else np.zeros_like(arr)
            img = Image.fromarray(arr.astype(np.uint8))
        img = img.convert(mode).resize((image_size, image_size), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def probe_image(path: Path) -> None:
    """Raise what PIL raises if ``path`` is not an image it can identify (reads the header only)."""
    with Image.open(path) as img:
        img.size  # noqa: B018  # the header is parsed by open; size is there without decoding pixels


def check_decoded(
    listing: Listing, ok: np.ndarray, errors: dict[int, str], on_bad_image: str, root: Path
) -> np.ndarray:
    """Positions of the usable files; the unreadable ones are skipped with one warning naming them, or stop
    the run at the first one (``on_bad_image="fail"``). A class folder left with no image is an error."""
    bad = np.flatnonzero(~ok)
    if len(bad) and on_bad_image == "fail":
        i = int(bad[0])
        raise UserError(
            f"cannot read image {listing.files[i]} ({errors.get(i, 'unreadable')}): remove or replace it, "
            "or set data.on_bad_image=skip"
        )
    for part, label, folder in listing.class_dirs:
        if not ok[(listing.part == part) & (listing.label == label)].any():
            raise UserError(f"class folder {folder} has no readable images: add images or remove the folder")
    if len(bad):
        log.warning(
            "skipped %d unreadable image(s) under %s (set data.on_bad_image=fail to stop instead): %s",
            len(bad),
            root,
            _shown([str(listing.files[i]) for i in bad]),
        )
    return np.flatnonzero(ok)


def decode_folder(
    root: Path, class_names: list[str], image_size: int, channels: int, on_bad_image: str = "skip"
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode every image under ``root/<class>/`` in this process into ``(x as uint8 0..255, labels, paths)``.

    Unreadable (corrupt, truncated) images and files that are not images (by suffix) are skipped
    with one warning naming them and how many (``on_bad_image="skip"``), or raise a
    :class:`UserError` (``"fail"``). Any size and PIL mode is accepted (see :func:`load_image`).
    """
    from lossdiag.data.decode import decode_into

    listing = list_images(root, [root], class_names, on_bad_image)
    out = np.empty((len(listing), channels, image_size, image_size), dtype=np.uint8)
    ok, errors = decode_into(listing.files, image_size, channels, out, workers=0)
    keep = check_decoded(listing, ok, errors, on_bad_image, root)
    x = torch.from_numpy(out[keep] if len(keep) < len(out) else out)
    return x, torch.from_numpy(listing.label[keep]), [str(listing.files[i]) for i in keep]
