"""One way to run a model over data for per-sample records: batches in, ``SampleRecords`` out (no Lightning)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from lossdiag.models.recorder import SampleRecorder, SampleRecords

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # (x, y, sample index or None)


@torch.no_grad()
def predict_records(
    logits_of: Callable[[torch.Tensor, int], torch.Tensor],
    batches: Iterable[Batch],
    recorder: SampleRecorder | None = None,
    require_index: bool = False,
) -> SampleRecords | None:
    """``logits_of(x, n)`` over every batch, recorded by sample index (a batch without one gets its positions in
    the order seen; with ``require_index``, e.g. a shuffled training loader, the answer is ``None``) and gathered
    by ``recorder`` (a :class:`SampleRecorder`; across processes under DDP).

    The caller puts the model in eval mode and the batches on its device; nothing is kept but the logits.
    """
    recorder = recorder if recorder is not None else SampleRecorder()
    offset = 0
    for x, y, index in batches:
        if index is None:
            if require_index:
                return None
            index = torch.arange(offset, offset + len(y), device=y.device)
        offset += len(y)
        recorder.update(index, y, logits_of(x, len(y)))
    return recorder.compute()


@torch.no_grad()
def predict_logits(net: torch.nn.Module, x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Logits of ``net`` (in eval mode, on its own device) for all of ``x``, returned on the CPU."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    out = [net(x[i : i + chunk].to(device)).float().cpu() for i in range(0, len(x), chunk)]
    net.train(was_training)
    return torch.cat(out) if out else torch.empty(0)
