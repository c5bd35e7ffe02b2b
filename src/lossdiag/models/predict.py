"""A network's per-sample outputs over whole splits or loaders, streamed in chunks bounded in bytes (no Lightning).

:func:`iter_logits` is the one place that runs a network over data outside a training step: the bounded-loss
cap (:meth:`lossdiag.models.module.LossDiagModule.on_train_start`), the end-of-fit evaluations of
:class:`lossdiag.callbacks.LossDiagnosis` and ``src.evaluate`` (both through :func:`predict_records`), and the
notebook helpers (:func:`predict_logits`). Nothing here holds a float32 copy of a split: one chunk at a time
exists, on the network's device, and a chunk's float32 input *and* the activations the network makes of it
stay within ``max_bytes``: the bytes one sample takes (:func:`sample_bytes`, measured once on one sample) set
the chunk's sample count. A network's activations usually dwarf its input (ShallowNet's 32 feature maps are
21x a 3-channel image), so a budget on the input alone would not bound the memory.

It takes either

- a split that knows how to cut itself into chunks (:class:`ChunkedSplit`, e.g.
  :class:`lossdiag.data.splits.Split`, whose images may be in memory, memory-mapped or decoded on the fly by
  loader workers): ``split.chunks(max_bytes, device)`` yields ``(x, y, index)`` float batches of at most
  ``max_bytes`` each;
- any DataLoader-like iterable of ``(x, y, index)`` (or ``(x, y)``; an index of ``None`` means "none")
  batches: the first batch is evaluated as it comes (the loader's batches already went through the network in
  validation) and measured on the way; a later batch larger than the budget is cut into pieces that fit (inputs
  that are not one tensor, e.g. a dict given to a foreign module's ``logits_fn``, are used as they come); a
  batch without an index gets its positions in the order seen;
- a float tensor of inputs (no labels): cut into chunks that fit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn

from lossdiag.functional.chunking import rows_per_chunk
from lossdiag.memory import release_free_heap
from lossdiag.models.recorder import SampleRecorder, SampleRecords

DEFAULT_CHUNK_BYTES = 64 * 2**20
"""Input and activations per evaluation chunk (64 MiB: ``eval_chunk_mb``'s default)."""

TRIM_EVERY_N_CHUNKS = (
    4  # freed activations go back to the OS (lossdiag.memory) at most this many chunks apart
)

Data = Any  # a ChunkedSplit, an iterable of (x, y[, index]) batches, or a tensor of inputs
Forward = Callable[[Any, int], torch.Tensor]  # (inputs, number of samples) -> logits


class Predicted(NamedTuple):
    """One chunk's logits, labels and sample indices; ``target`` is ``None`` for bare inputs."""

    logits: torch.Tensor
    target: torch.Tensor | None
    index: torch.Tensor


@runtime_checkable
class ChunkedSplit(Protocol):
    """A labelled split that yields its own model inputs in chunks of at most ``max_bytes`` of float32."""

    y: torch.Tensor

    @property
    def sample_shape(self) -> tuple[int, ...]: ...

    def chunks(self, max_bytes: int, device: torch.device) -> Iterable[Any]: ...


def _footprint(net: nn.Module, forward: Forward, x: Any, n: int) -> tuple[torch.Tensor, int]:
    """``forward(x, n)`` without gradients, and the bytes one of its ``n`` samples takes: its float32 input plus
    its share of the widest layer's input and output (the largest working set of any leaf module, as forward
    hooks see it). Operations outside modules (functional calls) are not seen."""
    widest = [0]

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        tensors = [*args, *(output if isinstance(output, tuple | list) else (output,))]
        widest[0] = max(
            widest[0], sum(t.nelement() * t.element_size() for t in tensors if torch.is_tensor(t))
        )

    leaves = [m for m in net.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            logits = forward(x, n)
    finally:
        for handle in handles:
            handle.remove()
    inputs = 4 * x[0].nelement() if torch.is_tensor(x) else 0
    return logits, inputs + -(-widest[0] // max(n, 1))


def sample_bytes(net: nn.Module, sample_shape: tuple[int, ...] | torch.Size, device: torch.device) -> int:
    """Bytes one sample of ``sample_shape`` takes through ``net`` without gradients, in eval mode (measured on one
    zero sample, see :func:`_footprint`; batch norms' statistics are left as they were)."""
    was_training = net.training
    net.eval()
    try:
        return _footprint(net, lambda x, n: net(x), torch.zeros(1, *sample_shape, device=device), 1)[1]
    finally:
        net.train(was_training)


def input_budget(
    net: nn.Module, sample_shape: tuple[int, ...] | torch.Size, max_bytes: int, device: torch.device
) -> int:
    """The float32 input bytes per chunk that keep input and activations within ``max_bytes``."""
    return _budget(sample_shape, max_bytes, sample_bytes(net, sample_shape, device))


def _budget(sample_shape: tuple[int, ...] | torch.Size, max_bytes: int, per_sample: int) -> int:
    return max(1, int(max_bytes) * 4 * math.prod(sample_shape) // max(per_sample, 1))


def rows_within(net: nn.Module, sample_shape: tuple[int, ...] | torch.Size, max_bytes: int) -> int:
    """How many samples ``net`` evaluates within ``max_bytes`` of input and activations (at least one)."""
    device = next(net.parameters()).device
    return input_budget(net, sample_shape, max_bytes, device) // (4 * math.prod(sample_shape)) or 1


def _unpack(batch: Any) -> tuple[Any, torch.Tensor | None, torch.Tensor | None]:
    """``(x, y, index)`` of a tensor of inputs or a ``(x, y, index)`` / ``(x, y)`` batch (``None`` if absent)."""
    if isinstance(batch, torch.Tensor):
        return batch, None, None
    x, y, *rest = batch
    return x, y, rest[0] if rest else None


def rechunk(batches: Iterable[Any], max_bytes: int) -> Iterator[tuple[Any, Any, Any]]:
    """The batches of ``batches`` as ``(x, y, index)``, each one larger than ``max_bytes`` of float32 input cut
    into pieces that fit (an ``x`` that is not a tensor is left whole)."""
    for batch in batches:
        x, y, index = _unpack(batch)
        if not torch.is_tensor(x):
            yield x, y, index
            continue
        step = rows_per_chunk(x.shape[1:], max_bytes)
        for start in range(0, len(x), step):
            end = start + step
            yield tuple(None if t is None else t[start:end] for t in (x, y, index))  # type: ignore[misc]


def _size(x: Any, y: torch.Tensor | None) -> int:
    return len(y) if y is not None else len(x)


def _to(x: Any, device: torch.device) -> Any:
    return x.to(device, non_blocking=True) if torch.is_tensor(x) else x


def _logits(
    net: nn.Module, forward: Forward, data: Data, max_bytes: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]:
    """``(logits, y, index)`` per chunk of ``data``, each chunk's input cut so that input and activations fit in
    ``max_bytes`` (see the module docstring)."""
    if isinstance(data, ChunkedSplit | torch.Tensor):
        shape = data.sample_shape if isinstance(data, ChunkedSplit) else data.shape[1:]
        budget = input_budget(net, shape, max_bytes, device)
        chunks = data.chunks(budget, device) if isinstance(data, ChunkedSplit) else rechunk([data], budget)
        for x, y, index in chunks:
            yield forward(_to(x, device), _size(x, y)), y, index
        return
    batches = iter(data)
    first = next(batches, None)
    if first is None:
        return
    x, y, index = _unpack(first)
    logits, per_sample = _footprint(net, forward, _to(x, device), _size(x, y))
    yield logits, y, index
    budget = _budget(x.shape[1:], max_bytes, per_sample) if torch.is_tensor(x) else 0
    for x, y, index in rechunk(batches, budget):
        yield forward(_to(x, device), _size(x, y)), y, index


def iter_logits(
    net: nn.Module, data: Data, max_bytes: int = DEFAULT_CHUNK_BYTES, forward: Forward | None = None
) -> Iterator[Predicted]:
    """``net``'s logits (float32, on its device) chunk by chunk, in eval mode and without gradients.

    Each chunk's float32 input and the activations of it take at most ``max_bytes`` (see the module
    docstring; one sample if a single one is larger). ``forward(x, n)`` gives the ``n`` samples' logits
    (default ``net(x)``: e.g. a foreign module's own hooks and checks). The network's train/eval mode is
    restored when the iteration ends, also when it is abandoned early or fails.
    """
    device = next(net.parameters()).device
    forward = forward or (lambda x, n: net(x))
    was_training = net.training
    net.eval()
    offset = 0
    try:
        with torch.no_grad():
            for i, (logits, y, index) in enumerate(_logits(net, forward, data, max_bytes, device)):
                if index is None:
                    index = torch.arange(offset, offset + len(logits), device=logits.device)
                offset += len(logits)
                yield Predicted(logits.float(), y, index)
                if i % TRIM_EVERY_N_CHUNKS == TRIM_EVERY_N_CHUNKS - 1:
                    release_free_heap()
    finally:
        net.train(was_training)


class _Unindexed(Exception):
    """A batch without sample indices where :func:`predict_records` requires them."""


def _indexed(batches: Iterable[Any]) -> Iterator[Any]:
    for batch in batches:
        if _unpack(batch)[2] is None:
            raise _Unindexed
        yield batch


def predict_records(
    net: nn.Module,
    data: Data,
    max_bytes: int = DEFAULT_CHUNK_BYTES,
    forward: Forward | None = None,
    recorder: SampleRecorder | None = None,
    require_index: bool = False,
    target: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> SampleRecords | None:
    """:func:`iter_logits` over labelled ``data``, recorded by sample index and gathered by ``recorder`` (a
    :class:`SampleRecorder`; across processes under DDP). With ``require_index`` (e.g. a shuffled training
    loader, whose order cannot be told apart) batches without an index give ``None``. ``target(y, logits)``
    turns a chunk's labels into class indices (default: as given). Only the logits are kept.
    """
    recorder = recorder if recorder is not None else SampleRecorder()
    if require_index and not isinstance(data, ChunkedSplit):
        data = _indexed(data)
    try:
        for p in iter_logits(net, data, max_bytes, forward):
            assert p.target is not None, "predict_records needs labelled batches (x, y[, index])"
            y = p.target if target is None else target(p.target, p.logits)
            recorder.update(p.index.to(p.logits.device), y.to(p.logits.device), p.logits)
    except _Unindexed:
        return None
    return recorder.compute()


def predict_logits(net: nn.Module, data: Data, max_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """Logits of ``net`` (in eval mode, on its own device) for all of ``data`` in the order given, on the CPU."""
    logits = [p.logits.cpu() for p in iter_logits(net, data, max_bytes)]
    return torch.cat(logits) if logits else torch.empty(0)
