"""What a project's datamodule and datasets say about its data: class names, file paths, how images were normalised.

Looked up on the datamodule first (``class_names`` / ``classes``, ``val_paths`` / ``train_paths``, ``mean`` and
``std`` or a ``Normalize`` in its ``transform(s)``), then on the loader's dataset and the datasets it wraps
(``Subset``, ``ConcatDataset``): ``ImageFolder``'s ``classes`` and ``samples`` (the files), a ``Normalize`` in its
``transform``. Nothing is guessed: what is not found is left out (classes named by id, no paths, images shown by
per-channel min-max when they are outside [0, 1]).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import ConcatDataset, Subset

from lossdiag.diagnosis.samples import SplitInfo
from lossdiag.models.recorder import SampleRecords
from lossdiag.render.figures import Normalization

_TRANSFORM_ATTRS = ("val_transform", "val_transforms", "transform", "transforms")


def first_loader(loader: Any) -> Any:
    """The (first) loader of ``trainer.val_dataloaders`` / ``train_dataloader``, or ``None``."""
    if isinstance(loader, Mapping):
        loader = list(loader.values())
    if isinstance(loader, list | tuple):
        return loader[0] if loader else None
    return loader


def _loader_dataset(trainer: L.Trainer, stage: str) -> Any:
    loader = trainer.val_dataloaders if stage == "val" else trainer.train_dataloader
    return getattr(first_loader(loader), "dataset", None)


def _wrapped(dataset: Any) -> Iterator[Any]:
    """``dataset`` and every dataset it wraps (``Subset``: its dataset; ``ConcatDataset``: its parts)."""
    if dataset is None:
        return
    yield dataset
    if isinstance(dataset, Subset):
        yield from _wrapped(dataset.dataset)
    elif isinstance(dataset, ConcatDataset):
        for part in dataset.datasets:
            yield from _wrapped(part)


def _names(value: Any) -> list[str] | None:
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0:
        return [str(v) for v in value]
    return None


def _dataset_classes(dataset: Any) -> list[str] | None:
    if isinstance(dataset, Subset):
        return _dataset_classes(dataset.dataset)
    if isinstance(dataset, ConcatDataset):  # the parts' classes, when they agree
        parts = {tuple(c) for d in dataset.datasets if (c := _dataset_classes(d)) is not None}
        return list(parts.pop()) if len(parts) == 1 else None
    for attr in ("class_names", "classes"):
        names = _names(getattr(dataset, attr, None))
        if names is not None:
            return names
    return None


def class_names(trainer: L.Trainer, rec: SampleRecords) -> list[str]:
    """The class names (``class_names`` / ``classes`` of the datamodule, else of the val dataset) when there is one
    per logit, else the class ids."""
    n_classes = rec.logits.shape[1]
    datamodule = getattr(trainer, "datamodule", None)
    for names in (
        *(_names(getattr(datamodule, attr, None)) for attr in ("class_names", "classes")),
        _dataset_classes(_loader_dataset(trainer, "val")),
    ):
        if names is not None and len(names) == n_classes:
            return names
    return [str(c) for c in range(n_classes)]


def _dataset_paths(dataset: Any) -> list[str] | None:
    """The file of each sample by position (``ImageFolder``'s ``samples``), through ``Subset`` / ``ConcatDataset``."""
    if isinstance(dataset, Subset):
        base = _dataset_paths(dataset.dataset)
        return None if base is None else [base[int(i)] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        parts = [_dataset_paths(d) for d in dataset.datasets]
        return None if any(p is None for p in parts) else [p for part in parts for p in part or ()]
    samples = getattr(dataset, "samples", None)
    if (
        isinstance(samples, list)
        and samples
        and isinstance(samples[0], tuple)
        and isinstance(samples[0][0], str)
    ):
        return [s[0] for s in samples]
    return None


def split_info(trainer: L.Trainer, rec: SampleRecords, stage: str) -> SplitInfo:
    """Index, labels and file paths of a split's records (paths from ``<stage>_paths`` of the datamodule, else from
    the loader's dataset; none when they do not cover every index)."""
    paths = getattr(getattr(trainer, "datamodule", None), f"{stage}_paths", None)
    if paths is None:
        paths = _dataset_paths(_loader_dataset(trainer, stage))
    index = rec.index.cpu().numpy()
    if paths is not None and len(paths) <= int(index.max(initial=-1)):
        paths = None  # paths that do not cover every index name nothing
    return SplitInfo.create(index, rec.target.cpu().numpy(), list(paths) if paths else None)


def _values(value: Any) -> list[float] | None:
    try:
        values = torch.as_tensor(value, dtype=torch.float64).flatten().tolist()
    except (TypeError, ValueError, RuntimeError):
        return None
    return values or None


def _find_normalize(transform: Any, depth: int = 0) -> Normalization | None:
    """The mean and std of the first ``Normalize`` in ``transform`` (torchvision v1/v2, albumentations: anything
    named so with ``mean`` and ``std``), looking into ``Compose``-like ``transforms`` lists and ``nn.Sequential``."""
    if transform is None or depth > 6:
        return None
    if type(transform).__name__ == "Normalize":
        mean, std = _values(getattr(transform, "mean", None)), _values(getattr(transform, "std", None))
        return (mean, std) if mean and std and len(mean) == len(std) else None
    inner = getattr(transform, "transforms", None) or getattr(transform, "transform", None)
    if isinstance(transform, torch.nn.Sequential):
        inner = list(transform)
    if inner is None or inner is transform:
        return None
    for part in inner if isinstance(inner, list | tuple) else (inner,):
        found = _find_normalize(part, depth + 1)
        if found is not None:
            return found
    return None


def image_normalization(trainer: L.Trainer) -> Normalization | None:
    """How the val images were normalised, when the project says: ``mean`` and ``std`` on the datamodule, else a
    ``Normalize`` in the datamodule's or the val dataset's transform. Drawn images are un-normalised with it."""
    datamodule = getattr(trainer, "datamodule", None)
    mean, std = _values(getattr(datamodule, "mean", None)), _values(getattr(datamodule, "std", None))
    if mean and std and len(mean) == len(std):
        return mean, std
    owners = [datamodule, *_wrapped(_loader_dataset(trainer, "val"))]
    for owner in owners:
        for attr in _TRANSFORM_ATTRS:
            found = _find_normalize(getattr(owner, attr, None))
            if found is not None:
                return found
    return None
