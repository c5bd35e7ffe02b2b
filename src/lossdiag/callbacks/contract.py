"""What a foreign Lightning project gives the diagnosis, read and checked, each problem one line naming the fix.

- **Batches**: ``(x, y)`` or ``(x, y, index)`` tuples, or anything ``batch_fn(batch) -> (x, y[, index])`` (or the
  module's ``lossdiag_batch(batch)``) reads, dict batches included; ``x`` may be anything the logits hook takes.
- **Logits**: ``outputs["logits"]`` of the step, else ``logits_fn(module, x)`` (or the module's
  ``lossdiag_logits(x)``), else ``module(x)``; of a tuple the first item, of a mapping ``"logits"``, of an object
  (Hugging Face style) ``.logits``. One logit per sample is a binary model, read as two classes with logits
  ``[0, z]``: ``softmax([0, z])[1] = sigmoid(z)``, so the per-sample loss is the module's BCE-with-logits.
- **Targets**: class indices; ``(N, 1)`` columns, integral floats and one-hot rows are converted. Soft or
  multi-label rows and labels out of range for the logits are refused, checked once per epoch on the gathered
  records (:meth:`Contract.check`): no device sync per step.
- **The val order** (:class:`ValOrder`): records without an index are matched by position, so every pass over the
  val loader (before training, each epoch, the end-of-fit evaluations) must give the same samples in one order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch

from lossdiag.errors import UserError
from lossdiag.models.recorder import SampleRecords

Unpacked = tuple[Any, torch.Tensor, torch.Tensor | None]  # (x, y, index or None)
BatchFn = Callable[[Any], Sequence[Any]]
LogitsFn = Callable[[L.LightningModule, Any], Any]
BATCH_METHOD, LOGITS_METHOD = "lossdiag_batch", "lossdiag_logits"  # the module's own hooks, when it has them
_INPUT_KEYS = ("x", "input", "inputs", "image", "images", "img", "pixel_values", "input_ids", "data")
_LABEL_KEYS = ("y", "label", "labels", "target", "targets", "class", "cls")


def step_logits(outputs: Any) -> Any:
    """``outputs["logits"]`` of a training/validation step (or ``outputs.logits``), when it returned them."""
    if isinstance(outputs, Mapping):
        return outputs.get("logits")
    return getattr(outputs, "logits", None) if not torch.is_tensor(outputs) else None


def _describe(value: Any) -> str:
    if torch.is_tensor(value):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, Mapping):
        return f"a {type(value).__name__} with keys {', '.join(map(repr, list(value)[:6]))}"
    if isinstance(value, list | tuple):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def as_logits(out: Any, n: int, source: str) -> torch.Tensor:
    """The ``(n, classes)`` logits in ``out`` (detached; one logit per sample -> ``[0, z]``), else a one-line error."""
    z = out
    if isinstance(z, Mapping) and "logits" in z:
        z = z["logits"]
    elif not torch.is_tensor(z) and torch.is_tensor(getattr(z, "logits", None)):
        z = z.logits
    elif isinstance(z, list | tuple) and z and torch.is_tensor(z[0]):
        z = z[0]  # (logits, features, ...)
    if torch.is_tensor(z) and z.ndim in (1, 2) and len(z) == n and (z.ndim == 1 or z.shape[1] == 1):
        z = z.reshape(n)
        z = torch.stack([torch.zeros_like(z), z], dim=1)  # binary: p(1) = sigmoid(z)
    if not torch.is_tensor(z) or z.ndim != 2 or len(z) != n or not z.is_floating_point():
        raise UserError(
            f"LossDiagnosis needs logits of shape (batch, classes) from {source}, got {_describe(out)} for a batch "
            f"of {n}: return them as a tensor, first in a tuple or as 'logits' in a dict, or pass "
            "LossDiagnosis(logits_fn=lambda module, x: ...)"
        )
    return z.detach()


def _dict_hint(batch: Mapping) -> str:
    keys = [str(k) for k in batch]
    x = next((k for k in keys if k.lower() in _INPUT_KEYS), keys[0] if keys else "x")
    y = next((k for k in keys if k.lower() in _LABEL_KEYS), keys[1] if len(keys) > 1 else "y")
    return f"LossDiagnosis(batch_fn=lambda batch: (batch[{x!r}], batch[{y!r}]))"


class Contract:
    """The project's batches, logits and targets as the diagnosis reads them (see the module docstring)."""

    def __init__(self, batch_fn: BatchFn | None = None, logits_fn: LogitsFn | None = None) -> None:
        for name, fn in (("batch_fn", batch_fn), ("logits_fn", logits_fn)):
            if fn is not None and not callable(fn):
                raise UserError(f"LossDiagnosis({name}=...) must be callable, got {type(fn).__name__}")
        self.batch_fn, self.logits_fn = batch_fn, logits_fn
        self._batch: BatchFn | None = batch_fn
        self._logits: LogitsFn | None = logits_fn
        self.owner = "the module"
        self.indexed = {"train": True, "val": True}  # whether the stage's last batch carried an index
        # per stage, this epoch's (device flag: some targets were soft, what they were): checked in check()
        self._soft: dict[str, list[tuple[torch.Tensor, str]]] = {"train": [], "val": []}

    def bind(self, pl_module: L.LightningModule) -> None:
        """Take the module's ``lossdiag_batch`` / ``lossdiag_logits`` where no callable was given; without a logits
        hook, ``forward`` must exist (the passes outside the loop, before training and at the end, call it)."""
        self.owner = type(pl_module).__name__
        method = getattr(pl_module, BATCH_METHOD, None)
        self._batch = self.batch_fn or (method if callable(method) else None)
        method = getattr(pl_module, LOGITS_METHOD, None)
        self._logits = self.logits_fn or ((lambda module, x: method(x)) if callable(method) else None)
        if self._logits is None and type(pl_module).forward is L.LightningModule.forward:
            raise UserError(
                f"LossDiagnosis needs logits before training and at the end: define {self.owner}.forward(x) "
                "returning them, or pass LossDiagnosis(logits_fn=lambda module, x: ...)"
            )

    def split(self, batch: Any, stage: str, world_size: int = 1) -> Unpacked:
        """``(x, y, index or None)`` of a batch, by ``batch_fn`` when given; a one-line error says what is wrong."""
        parts = self._batch(batch) if self._batch is not None else batch
        via = "batch_fn" if self._batch is not None else f"{stage} batches"
        if isinstance(parts, Mapping) and self._batch is None:
            raise UserError(
                f"LossDiagnosis reads {stage} batches as (x, y) or (x, y, index), got {_describe(parts)}: say how to "
                f"read them, e.g. {_dict_hint(parts)}"
            )
        if not isinstance(parts, list | tuple) or len(parts) not in (2, 3) or not torch.is_tensor(parts[1]):
            raise UserError(
                f"LossDiagnosis needs (x, y) or (x, y, index) from {via} with y a tensor of labels, got "
                f"{_describe(parts)}: make the dataset return (input, label) pairs or pass "
                "LossDiagnosis(batch_fn=lambda batch: (x, y))"
            )
        y, index = parts[1], parts[2] if len(parts) == 3 else None
        if y.ndim == 0 or (
            index is not None
            and (not torch.is_tensor(index) or index.shape != (len(y),) or index.is_floating_point())
        ):
            raise UserError(
                f"LossDiagnosis needs (x, y[, index]) from {via} with y (batch, ...) labels and index the (batch,) "
                f"integer sample positions, got y {_describe(y)} and index {_describe(index)}: return (x, y) if the "
                "third item is not the sample index"
            )
        if index is None and world_size > 1 and stage == "val":
            raise UserError(
                "LossDiagnosis under DDP needs val batches (x, y, index): padded repeats can only be dropped by index"
            )
        self.indexed[stage] = index is not None
        return parts[0], y, index

    def logits(self, pl_module: L.LightningModule, outputs: Any, x: Any, n: int) -> torch.Tensor:
        """The batch's logits: the step's ``outputs["logits"]``, else the logits hook's or ``forward``'s."""
        z = step_logits(outputs)
        if z is not None:
            return as_logits(z, n, "the step's outputs['logits']")
        return self.predict(pl_module, x, n)

    @torch.no_grad()
    def predict(self, pl_module: L.LightningModule, x: Any, n: int) -> torch.Tensor:
        """``logits_fn(module, x)`` (or ``lossdiag_logits``), else ``module(x)``, as ``(n, classes)`` logits."""
        if self._logits is not None:
            return as_logits(self._logits(pl_module, x), n, "logits_fn")
        return as_logits(pl_module(x), n, f"{self.owner}.forward(x)")

    def target(self, y: torch.Tensor, n_classes: int, stage: str) -> torch.Tensor:
        """``y`` as ``(N,)`` class indices; what cannot be is flagged here and refused in :meth:`check`."""
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim == 2:
            if y.shape[1] != n_classes:
                raise UserError(
                    f"LossDiagnosis: {stage} targets have {y.shape[1]} columns but the model gives {n_classes} "
                    "logits: give one class index per sample (or one-hot rows of the logits' width)"
                )
            soft = ((y != 0) & (y != 1)).any() | (y.sum(1) != 1).any()
            self._soft[stage].append((soft, f"rows of shape (batch, {n_classes}) that are not one-hot"))
            return y.argmax(1)
        if y.ndim != 1:
            raise UserError(f"LossDiagnosis needs one class index per {stage} sample, got targets of shape "
                            f"{tuple(y.shape)}: return (x, y) with y of shape (batch,) from batch_fn")  # fmt: skip
        if y.is_floating_point():
            self._soft[stage].append(((y != y.round()).any(), "float values that are not class indices"))
        return y.long()

    def check(
        self, rec: SampleRecords, stage: str, pl_module: L.LightningModule | None = None, world_size: int = 1
    ) -> SampleRecords:
        """``rec`` (gathered records of ``stage``) when its targets are class indices in range, else a one-line
        error; a device sync or two per call (and a gather under DDP, so every rank raises alike)."""
        flags, self._soft[stage] = self._soft[stage], []
        device = rec.target.device
        local = (
            torch.stack([f for f, _ in flags]) if flags else torch.zeros(1, dtype=torch.bool, device=device)
        )
        bad = bool(local.any())
        if world_size > 1 and pl_module is not None:
            bad = bool(pl_module.all_gather(local.any().int()).any())
        if bad:
            hit = local.cpu().tolist()
            what = next(
                (d for (_, d), b in zip(flags, hit, strict=False) if b), "soft targets (on another process)"
            )
            raise UserError(
                f"LossDiagnosis needs one class per {stage} sample, got {what} (soft labels, mixup or multi-label): "
                "return class indices, e.g. LossDiagnosis(batch_fn=lambda batch: (batch[0], batch[1].argmax(1)))"
            )
        n_classes = rec.logits.shape[1]
        if len(rec.target):
            low, high = (int(v) for v in rec.target.aminmax())
            if low < 0 or high >= n_classes:
                label = low if low < 0 else high
                raise UserError(
                    f"LossDiagnosis: {stage} label {label} is out of range for {n_classes} logits (classes 0.."
                    f"{n_classes - 1}): give the model as many outputs as there are classes, or fix the labels"
                    + (" (-100, cross_entropy's ignore_index, cannot be diagnosed)" if label == -100 else "")
                )
        return rec


class ValOrder:
    """The val samples and their labels, by record row, as first seen: every later pass must match them.

    Records of batches without an index are matched by position: a shuffled val loader would silently compare
    different samples across epochs. Records keyed by an index are right in any order, but must cover the same
    samples. :attr:`reference` travels in the callback's state, so a resumed run is checked against the first.
    """

    def __init__(self) -> None:
        self.reference: tuple[torch.Tensor, torch.Tensor] | None = None  # (index, target), CPU

    def check(self, rec: SampleRecords, indexed: bool, when: str) -> None:
        index, target = rec.index.detach().cpu(), rec.target.detach().cpu()
        if self.reference is None:
            self.reference = (index, target)
            return
        ref_index, ref_target = self.reference
        if torch.equal(index, ref_index) and torch.equal(target, ref_target):
            return
        if not torch.equal(index, ref_index):
            raise UserError(
                f"LossDiagnosis: the val loader gave other samples {when} than before ({len(index)} instead of "
                f"{len(ref_index)}, or other indices): give it the same val set every epoch (no random subset)"
            )
        if not indexed:
            raise UserError(
                f"LossDiagnosis: the val loader gave its samples in another order {when} than before (the labels in "
                "loader order differ), so per-sample losses would be compared across different samples: use "
                "DataLoader(val_set, shuffle=False) for the val loader (or yield (x, y, index) batches)"
            )
        raise UserError(
            f"LossDiagnosis: the labels of the same val samples changed {when}: give every val sample one fixed "
            "label (no random target transform on the val set)"
        )

    def state(self) -> dict[str, torch.Tensor] | None:
        return None if self.reference is None else {"index": self.reference[0], "target": self.reference[1]}

    def load(self, state: Mapping[str, torch.Tensor] | None) -> None:
        if state is not None:
            self.reference = (state["index"], state["target"])


def objective(pl_module: L.LightningModule) -> str:
    """The training loss's name, when the module saved it as hyperparameter ``loss`` (else ``""``)."""
    name = getattr(pl_module, "hparams", {}).get("loss", "")
    return name if isinstance(name, str) else ""
