"""A network's per-sample outputs over whole splits, streamed in chunks bounded in bytes (no Lightning).

:func:`iter_logits` is the one place that evaluates a network over data: the bounded-loss cap
(:meth:`lossdiag.models.module.LossDiagModule.on_train_start`), ``src.evaluate`` and the notebook helpers
use it. Nothing here holds a float32 copy of a split: one chunk at a time exists, on the network's device,
and a chunk's float32 input *and* the activations the network makes of it stay within ``max_bytes``: the
bytes one sample takes (:func:`sample_bytes`, measured once on one sample) set the chunk's sample count.
A network's activations usually dwarf its input (ShallowNet's 32 feature maps are 21x a 3-channel image),
so a budget on the input alone would not bound the memory.

It takes either

- a split that knows how to cut itself into chunks (:class:`ChunkedSplit`, e.g.
  :class:`lossdiag.data.splits.Split`, whose images may be in memory, memory-mapped or decoded on the fly by
  loader workers): ``split.chunks(max_bytes, device)`` yields ``(x, y, index)`` float batches of at most
  ``max_bytes`` each;
- any DataLoader-like iterable of ``(x, y, index)`` (or ``(x, y)``) batches: a batch larger than
  ``max_bytes`` is cut into pieces that fit; smaller batches are used as they come;
- a float tensor of inputs (no labels): cut into chunks of at most ``max_bytes``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn

from lossdiag.functional.chunking import rows_per_chunk
from lossdiag.functional.outputs import Evaluation, evaluate_logits
from lossdiag.memory import release_free_heap

DEFAULT_CHUNK_BYTES = 64 * 2**20
"""Float32 input per evaluation chunk (64 MiB: 16 images of 3x1024x1024, 1,365 of 3x64x64, 262,144 digits)."""


TRIM_EVERY_N_CHUNKS = (
    4  # freed activations go back to the OS (lossdiag.memory) at most this many chunks apart
)


class Predicted(NamedTuple):
    """One chunk's (or a whole split's) logits, labels and sample indices; ``target`` is ``None`` for bare inputs."""

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


def sample_bytes(net: nn.Module, sample_shape: tuple[int, ...] | torch.Size, device: torch.device) -> int:
    """Bytes one sample of ``sample_shape`` takes through ``net`` without gradients: its float32 input plus
    the widest layer's input and output (the largest working set of any leaf module, as forward hooks
    see it on one zero sample). Operations outside modules (functional calls) are not seen."""
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
            net(torch.zeros(1, *sample_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return 4 * math.prod(sample_shape) + widest[0]


def input_budget(
    net: nn.Module, sample_shape: tuple[int, ...] | torch.Size, max_bytes: int, device: torch.device
) -> int:
    """The float32 input bytes per chunk that keep input and activations within ``max_bytes``."""
    per_sample = sample_bytes(net, sample_shape, device)
    return max(1, int(max_bytes) * 4 * math.prod(sample_shape) // per_sample)


def rows_within(net: nn.Module, sample_shape: tuple[int, ...] | torch.Size, max_bytes: int) -> int:
    """How many samples ``net`` evaluates within ``max_bytes`` of input and activations (at least one)."""
    return (
        input_budget(net, sample_shape, max_bytes, next(net.parameters()).device)
        // (4 * math.prod(sample_shape))
        or 1
    )


def _unpack(batch: Any, offset: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``(x, y, index)`` of a ``(x, y, index)`` / ``(x, y)`` batch; without an index, positions from ``offset``."""
    if isinstance(batch, torch.Tensor):
        x, y, index = batch, None, None
    else:
        x, y, *rest = batch
        index = rest[0] if rest else None
    if index is None:
        index = torch.arange(offset, offset + len(x))
    return x, y, index


def rechunk(batches: Iterable[Any], max_bytes: int) -> Iterator[tuple[torch.Tensor, Any, torch.Tensor]]:
    """The batches of ``batches``, each one larger than ``max_bytes`` of float32 cut into pieces that fit."""
    offset = 0
    for batch in batches:
        x, y, index = _unpack(batch, offset)
        offset += len(x)
        step = rows_per_chunk(x.shape[1:], max_bytes)
        for start in range(0, len(x), step):
            end = start + step
            yield x[start:end], None if y is None else y[start:end], index[start:end]


def _source(
    net: nn.Module, data: ChunkedSplit | Iterable[Any] | torch.Tensor, max_bytes: int, device: torch.device
) -> Iterator[Any]:
    """The chunks of ``data``, each one's input cut so that input and activations fit in ``max_bytes``."""
    if isinstance(data, ChunkedSplit):
        yield from data.chunks(input_budget(net, data.sample_shape, max_bytes, device), device)
        return
    batches = iter([data] if isinstance(data, torch.Tensor) else data)
    first = next(batches, None)
    if first is None:
        return
    x = first if isinstance(first, torch.Tensor) else first[0]
    yield from rechunk(itertools.chain([first], batches), input_budget(net, x.shape[1:], max_bytes, device))


def iter_logits(
    net: nn.Module, data: ChunkedSplit | Iterable[Any] | torch.Tensor, max_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[Predicted]:
    """``net``'s logits (float32, on its device) chunk by chunk, in eval mode and without gradients.

    Each chunk's float32 input and the activations of it take at most ``max_bytes`` (see the module
    docstring; one sample if a single one is larger). The network's train/eval mode is restored when the
    iteration ends, also when it is abandoned early.
    """
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    try:
        for i, (x, y, index) in enumerate(_source(net, data, max_bytes, device)):
            with torch.no_grad():
                logits = net(x.to(device, non_blocking=True)).float()
            yield Predicted(logits, y, index)
            if i % TRIM_EVERY_N_CHUNKS == TRIM_EVERY_N_CHUNKS - 1:
                release_free_heap()
    finally:
        net.train(was_training)


def predict(
    net: nn.Module, data: ChunkedSplit | Iterable[Any] | torch.Tensor, max_bytes: int = DEFAULT_CHUNK_BYTES
) -> Predicted:
    """All of :func:`iter_logits` concatenated, on the CPU (``target`` ``None`` when the data have no labels)."""
    chunks = [Predicted(p.logits.cpu(), p.target, p.index) for p in iter_logits(net, data, max_bytes)]
    if not chunks:
        return Predicted(torch.empty(0), None, torch.empty(0, dtype=torch.long))
    target = None if chunks[0].target is None else torch.cat([p.target.cpu() for p in chunks])  # type: ignore[union-attr]
    return Predicted(
        torch.cat([p.logits for p in chunks]), target, torch.cat([p.index.cpu() for p in chunks])
    )


def predict_logits(
    net: nn.Module, data: ChunkedSplit | Iterable[Any] | torch.Tensor, max_bytes: int = DEFAULT_CHUNK_BYTES
) -> torch.Tensor:
    """Logits of ``net`` (in eval mode, on its own device) for all of ``data``, returned on the CPU."""
    return predict(net, data, max_bytes).logits


def evaluate_net(
    net: nn.Module, splits: dict[str, ChunkedSplit], max_bytes: int = DEFAULT_CHUNK_BYTES
) -> dict[str, Evaluation]:
    """``net``'s per-sample outputs on each split (streamed: see :func:`iter_logits`)."""
    out = {}
    for name, split in splits.items():
        logits = predict_logits(net, split, max_bytes)
        out[name] = evaluate_logits(logits, split.y)
    return out


def evaluate_state(
    net: nn.Module,
    state: dict[str, torch.Tensor],
    splits: dict[str, ChunkedSplit],
    max_bytes: int = DEFAULT_CHUNK_BYTES,
) -> dict[str, Evaluation]:
    """Load ``state`` into ``net`` (a scratch copy: its weights are replaced) and evaluate it on each split."""
    net.load_state_dict(state)
    return evaluate_net(net, splits, max_bytes)
