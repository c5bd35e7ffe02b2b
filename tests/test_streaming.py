"""Whole-split evaluation streams in chunks bounded in bytes: the bounded-loss cap over the training split
(``LossDiagModule.on_train_start``) never holds a float32 copy of the split, and gives the same cap."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lossdiag.data.datamodules import ImageFolderDataModule
from lossdiag.functional.losses import loss_cap_from_initial, per_sample_cross_entropy
from lossdiag.models.predict import iter_logits, predict_records, sample_bytes
from lossdiag.models.shallownet import ShallowNet

SIZE = 160  # one 3x160x160 float32 image: 307,200 bytes
SAMPLE_BYTES = 3 * SIZE * SIZE * 4
# ShallowNet's widest layer on it is the ReLU: 32 feature maps in, 32 out
FOOTPRINT = SAMPLE_BYTES + 2 * 32 * SIZE * SIZE * 4


class InputSizes(nn.Module):
    """Wraps a network and records the byte size of every input it is given, and its train/eval mode.

    The first call of an evaluation is the one-sample probe of :func:`sample_bytes`; ``calls`` leaves it out.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.seen = net, []

    @property
    def calls(self) -> list[tuple[int, bool, bool]]:
        return self.seen[1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((x.nelement() * x.element_size(), self.training, torch.is_grad_enabled()))
        return self.net(x)


@pytest.fixture(scope="module")
def large_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("large")
    rng = np.random.default_rng(0)
    for c, name in enumerate(("a", "b")):
        (root / name).mkdir()
        for i in range(14):
            pixels = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
            pixels[..., c] = 255
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _module(dm, budget: int):
    from lossdiag.models.module import LossDiagModule

    torch.manual_seed(0)
    net = InputSizes(ShallowNet(width=dm.width, height=dm.height, depth=dm.depth, classes=dm.num_classes))
    return LossDiagModule(
        net=net, optimizer=torch.optim.SGD, class_names=dm.class_names, eval_chunk_bytes=budget
    )


@pytest.mark.parametrize("mode", ["memory", "lazy"])
def test_cap_streams_in_chunks_within_the_byte_budget(large_images: Path, mode: str) -> None:
    dm = ImageFolderDataModule(str(large_images), image_size=SIZE, mode=mode, workers=0, seed=0)
    dm.setup()
    n = len(dm.train)
    one_chunk = _module(dm, budget=n * FOOTPRINT)
    cap_one = one_chunk.initial_cap(dm.train)
    assert [c[0] for c in one_chunk.net.calls] == [n * SAMPLE_BYTES]

    budget = 3 * FOOTPRINT + FOOTPRINT // 2  # 3.5 images with their activations: chunks of 3
    chunked = _module(dm, budget=budget)
    chunked.net.train()
    cap_chunked = chunked.initial_cap(dm.train)
    sizes = [c[0] for c in chunked.net.calls]
    assert len(sizes) == -(-n // 3) >= 5 and sum(sizes) == n * SAMPLE_BYTES
    assert max(sizes) // SAMPLE_BYTES * FOOTPRINT <= budget  # input and activations within the budget
    assert all(not training and not grad for _, training, grad in chunked.net.calls)  # eval mode, no grad
    assert chunked.net.training  # the mode it had is restored
    assert cap_chunked == pytest.approx(cap_one, rel=1e-6)

    # what the cap was before it streamed: the whole split as float32 through the net at once
    with torch.no_grad():
        old = per_sample_cross_entropy(one_chunk.net.net.eval()(dm.train.inputs()), dm.train.y)
    assert cap_one == pytest.approx(loss_cap_from_initial(old, one_chunk.k), rel=1e-6)


def test_a_samples_footprint_counts_the_widest_layer() -> None:
    net = ShallowNet(width=SIZE, height=SIZE, depth=3, classes=2)
    assert sample_bytes(net, (3, SIZE, SIZE), torch.device("cpu")) == FOOTPRINT


def test_a_sample_larger_than_the_budget_is_evaluated_alone(large_images: Path) -> None:
    dm = ImageFolderDataModule(str(large_images), image_size=SIZE, mode="memory", seed=0)
    dm.setup()
    module = _module(dm, budget=1000)
    module.initial_cap(dm.val)
    assert [c[0] for c in module.net.calls] == [SAMPLE_BYTES] * len(dm.val)


def test_on_train_start_computes_the_cap_in_chunks(make_cfg, large_images: Path) -> None:
    """Through the pipeline (``eval_chunk_mb``): the eval-mode forwards before the first training step are
    the cap's chunks, each within the budget, and the cap equals the one computed in one chunk."""
    import lightning as L

    from lossdiag.app.pipeline import build_datamodule, build_module, build_trainer, prepare

    cfg = make_cfg(
        "data=folder",
        f"data.root={large_images}",
        f"data.image_size={SIZE}",
        "data.train_size=null",
        f"eval_chunk_mb={3.5 * FOOTPRINT / 2**20}",  # 3 images and their activations
        "loss=bounded",
        "callbacks=none",
        "~logger",
        "trainer.max_epochs=1",
    )
    prepare(cfg)
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    assert module.eval_chunk_bytes == int(3.5 * FOOTPRINT)
    reference = copy.deepcopy(module)  # the untrained weights, evaluated in one chunk
    reference.eval_chunk_bytes = 2**30
    cap_one_chunk = reference.initial_cap(dm.train)
    calls: list[tuple[int, bool]] = []

    class FirstStep(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
            calls.append((-1, True))

    module.net.register_forward_pre_hook(lambda m, args: calls.append((args[0].nbytes, m.training)))
    build_trainer(cfg, callbacks=[FirstStep()]).fit(module, datamodule=dm)
    probe, *before = calls[: calls.index((-1, True))]
    assert probe == (SAMPLE_BYTES, False)
    assert len(before) == -(-len(dm.train) // 3) and all(not training for _, training in before)
    assert max(size for size, _ in before) == 3 * SAMPLE_BYTES
    assert float(module.loss_cap) == pytest.approx(cap_one_chunk, rel=1e-6)


def test_iter_logits_cuts_loader_batches_to_the_budget() -> None:
    """A loader's first batch is evaluated as it comes and measured on the way (no extra forward pass); later
    batches larger than the budget are cut to it."""
    torch.manual_seed(0)
    net = InputSizes(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)))
    x, y = torch.randn(10, 3, 2, 2), torch.arange(10) % 3
    loader = [(x[:2], y[:2], torch.arange(2) + 100), (x[2:], y[2:], torch.arange(8) + 102)]
    per_sample = sample_bytes(net, (3, 2, 2), torch.device("cpu"))
    assert per_sample == 48 + 2 * 48  # the input, then Flatten's input and output (a view, counted as a copy)
    net.seen.clear()
    out = predict_records(net, loader, max_bytes=2 * per_sample)  # two samples per chunk
    assert out is not None
    assert [c[0] for c in net.seen] == [96, 96, 96, 96, 96]
    assert torch.equal(out.index, torch.arange(10) + 100) and torch.equal(out.target, y)
    assert torch.allclose(out.logits, net.net(x), atol=1e-6)
    unindexed = [(x[:6], y[:6]), (x[6:], y[6:])]
    assert [p.index.tolist() for p in iter_logits(net, unindexed)] == [list(range(6)), list(range(6, 10))]
    assert predict_records(net, unindexed, require_index=True) is None  # a shuffled order is not told apart


def test_end_of_fit_evaluations_cut_loader_batches_to_the_budget() -> None:
    """``LossDiagnosis``'s evaluations of whole models (initial, best, last) go through the same streaming path:
    a loader batch larger than ``eval_chunk_mb`` is cut, and the records are those of the whole batch."""
    import math
    from types import SimpleNamespace

    from lossdiag.callbacks import LossDiagnosis
    from lossdiag.callbacks.evaluation import evaluate_loader

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = InputSizes(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    torch.manual_seed(0)
    module = Module()
    x, y = torch.randn(11, 3, 2, 2), torch.arange(11) % 3
    loader = [[(x[:1], y[:1]), (x[1:], y[1:])]]  # one loader: a batch of 1, then one of 10, without an index
    callback = LossDiagnosis("unused", eval_chunk_mb=3 * 144 / 2**20)  # 3 samples: 48 bytes in, 96 in Flatten
    callback.contract.bind(module)
    trainer = SimpleNamespace(world_size=1, num_val_batches=[math.inf], num_training_batches=math.inf)
    rec = evaluate_loader(trainer, module, loader, "val", callback.contract, callback.eval_chunk_bytes)  # type: ignore[arg-type]
    assert rec is not None and [c[0] for c in module.net.seen] == [48, 144, 144, 144, 48]
    assert torch.equal(rec.index, torch.arange(11)) and torch.allclose(
        rec.logits, module.net.net(x), atol=1e-6
    )
    module.net.seen.clear()
    assert evaluate_loader(trainer, module, loader, "train", callback.contract) is None  # shuffled, no index
    assert module.net.seen == []  # stopped before any forward pass


VAL_BATCH_SIZES: list[int] = []


class ValBatchSizes(L.Callback):
    """Records the size of every validation batch (in :data:`VAL_BATCH_SIZES`); added through the config."""

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        VAL_BATCH_SIZES.append(len(batch[0]))


@pytest.mark.parametrize(("budget", "expected"), [(3.5, 3), (1.2, 2)])  # 1 image fits, a training batch is 2
def test_auto_val_batches_fit_the_byte_budget(
    make_cfg, large_images: Path, budget: float, expected: int
) -> None:
    """``data.val_batch_size=auto`` (the folder default): validation batches of as many images as the model
    evaluates within ``eval_chunk_mb``, never fewer than a training batch."""
    from lossdiag.app.pipeline import train

    cfg = make_cfg(
        "data=folder",
        f"data.root={large_images}",
        f"data.image_size={SIZE}",
        "data.train_size=null",
        "data.batch_size=2",
        "callbacks=none",
        "~logger",
        "trainer.max_epochs=1",
        f"eval_chunk_mb={budget * FOOTPRINT / 2**20}",
        f"+callbacks.val_batches._target_={__name__}.ValBatchSizes",
    )
    assert cfg.data.val_batch_size == "auto"
    VAL_BATCH_SIZES.clear()
    train(cfg)
    sizes = list(VAL_BATCH_SIZES)
    assert len(sizes) >= 2 and sizes[:-1] == [expected] * (len(sizes) - 1) and 0 < sizes[-1] <= expected
