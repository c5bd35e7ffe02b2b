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
  batches: a batch larger than the budget is cut into pieces that fit; smaller batches are used as they come;
  a batch without an index gets its positions in the order seen;
- a float tensor of inputs (no labels): cut into chunks that fit.
"""

from __future__ import annotations

import itertools
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
Forward = Callable[[torch.Tensor], torch.Tensor]


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


def sample_bytes(
    net: nn.Module,
    sample_shape: tuple[int, ...] | torch.Size,
    device: torch.device,
    example: torch.Tensor | None = None,
) -> int:
    """Bytes one sample of ``sample_shape`` takes through ``net`` without gradients: its float32 input plus
    the widest layer's input and output (the largest working set of any leaf module, as forward hooks
    see it on one sample: ``example[:1]`` when given, else zeros). Operations outside modules (functional
    calls) are not seen."""
    widest = [0]

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        tensors = [*args, *(output if isinstance(output, tuple | list) else (output,))]
        widest[0] = max(
            widest[0], sum(t.nelement() * t.element_size() for t in tensors if torch.is_tensor(t))
        )

    leaves = [m for m in net.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook) for m in leaves]
    one = torch.zeros(1, *sample_shape, device=device) if example is None else example[:1].to(device)
    try:
        with torch.no_grad():
            net(one)
    finally:
        for handle in handles:
            handle.remove()
    return 4 * math.prod(sample_shape) + widest[0]


def input_budget(
    net: nn.Module,
    sample_shape: tuple[int, ...] | torch.Size,
    max_bytes: int,
    device: torch.device,
    example: torch.Tensor | None = None,
) -> int:
    """The float32 input bytes per chunk that keep input and activations within ``max_bytes``."""
    per_sample = sample_bytes(net, sample_shape, device, example)
    return max(1, int(max_bytes) * 4 * math.prod(sample_shape) // per_sample)


def rows_within(net: nn.Module, sample_shape: tuple[int, ...] | torch.Size, max_bytes: int) -> int:
    """How many samples ``net`` evaluates within ``max_bytes`` of input and activations (at least one)."""
    device = next(net.parameters()).device
    return input_budget(net, sample_shape, max_bytes, device) // (4 * math.prod(sample_shape)) or 1


def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(x, y, index)`` of a tensor of inputs or a ``(x, y, index)`` / ``(x, y)`` batch (``None`` if absent)."""
    if isinstance(batch, torch.Tensor):
        return batch, None, None
    x, y, *rest = batch
    return x, y, rest[0] if rest else None


def rechunk(batches: Iterable[Any], max_bytes: int) -> Iterator[tuple[torch.Tensor, Any, Any]]:
    """The batches of ``batches`` as ``(x, y, index)``, each one larger than ``max_bytes`` of float32 input cut
    into pieces that fit."""
    for batch in batches:
        x, y, index = _unpack(batch)
        step = rows_per_chunk(x.shape[1:], max_bytes)
        for start in range(0, len(x), step):
            end = start + step
            yield tuple(None if t is None else t[start:end] for t in (x, y, index))  # type: ignore[misc]


def _source(net: nn.Module, data: Data, max_bytes: int, device: torch.device) -> Iterator[Any]:
    """The chunks of ``data``, each one's input cut so that input and activations fit in ``max_bytes``."""
    if isinstance(data, ChunkedSplit):
        yield from data.chunks(input_budget(net, data.sample_shape, max_bytes, device), device)
        return
    batches = iter([data] if isinstance(data, torch.Tensor) else data)
    first = next(batches, None)
    if first is None:
        return
    x = _unpack(first)[0]
    budget = input_budget(net, x.shape[1:], max_bytes, device, example=x)
    yield from rechunk(itertools.chain([first], batches), budget)


def iter_logits(
    net: nn.Module, data: Data, max_bytes: int = DEFAULT_CHUNK_BYTES, forward: Forward | None = None
) -> Iterator[Predicted]:
    """``net``'s logits (float32, on its device) chunk by chunk, in eval mode and without gradients.

    Each chunk's float32 input and the activations of it take at most ``max_bytes`` (see the module
    docstring; one sample if a single one is larger). ``forward(x)`` gives the logits (default ``net(x)``:
    e.g. a check of a foreign module's output). The network's train/eval mode is restored when the iteration
    ends, also when it is abandoned early or fails.
    """
    device = next(net.parameters()).device
    forward = forward or net
    was_training = net.training
    net.eval()
    offset = 0
    try:
        for i, (x, y, index) in enumerate(_source(net, data, max_bytes, device)):
            with torch.no_grad():
                logits = forward(x.to(device, non_blocking=True)).float()
            if index is None:
                index = torch.arange(offset, offset + len(x), device=logits.device)
            offset += len(x)
            yield Predicted(logits, y, index)
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
) -> SampleRecords | None:
    """:func:`iter_logits` over labelled ``data``, recorded by sample index and gathered by ``recorder`` (a
    :class:`SampleRecorder`; across processes under DDP). With ``require_index`` (e.g. a shuffled training
    loader, whose order cannot be told apart) batches without an index give ``None``. Only the logits are kept.
    """
    recorder = recorder if recorder is not None else SampleRecorder()
    if require_index and not isinstance(data, ChunkedSplit):
        data = _indexed(data)
    try:
        for p in iter_logits(net, data, max_bytes, forward):
            assert p.target is not None, "predict_records needs labelled batches (x, y[, index])"
            recorder.update(p.index.to(p.logits.device), p.target.to(p.logits.device), p.logits)
    except _Unindexed:
        return None
    return recorder.compute()


def predict_logits(net: nn.Module, data: Data, max_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """Logits of ``net`` (in eval mode, on its own device) for all of ``data`` in the order given, on the CPU."""
    logits = [p.logits.cpu() for p in iter_logits(net, data, max_bytes)]
    return torch.cat(logits) if logits else torch.empty(0)
