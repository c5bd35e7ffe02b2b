"""The training options of the remedies, wired end to end: each objective optimised with its config parameter
(while ``val/loss`` stays the cross-entropy), ``data.augment`` on training batches only, ``optimizer.lr=auto``
and the defaults learning on a generated RGB folder, and one-line errors for bad values."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmarks.train_speed import make_image_folder
from lossdiag.app import pipeline
from lossdiag.data.datamodules import DigitsDataModule
from lossdiag.errors import UserError
from lossdiag.functional.augment import augment_batch
from lossdiag.functional.losses import LOSS_NAMES, training_loss
from lossdiag.functional.objectives import OBJECTIVES
from lossdiag.rundir.metrics_csv import read_history
from tests.conftest import run_module
from tests.test_bad_input import assert_one_line_error

# a parameter value other than each objective's default, so a module that ignored the config would differ
PARAMS = {"label_smoothing": 0.3, "focal": 3.0, "phuber": 4.0, "gce": 0.4}


# -- objectives ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_module_optimises_the_configured_objective_with_its_parameter(make_cfg, name: str) -> None:
    param = OBJECTIVES[name].param
    cfg = make_cfg(f"loss={name}", f"loss.{param}={PARAMS[name]}")
    dm = pipeline.build_datamodule(cfg)
    module = pipeline.build_module(cfg, dm)
    x, y, index = next(iter(dm.train_dataloader()))
    out = module.training_step((x, y, index), 0)
    expected = OBJECTIVES[name].fn(module(x), y, PARAMS[name]).mean()
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    default = OBJECTIVES[name].fn(module(x), y, OBJECTIVES[name].default).mean()
    assert out["loss"].item() != pytest.approx(default.item(), rel=1e-6)


def test_standard_and_bounded_are_unchanged() -> None:
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)
    target = torch.tensor([2, 1])
    ce = F.cross_entropy(logits, target, reduction="none")
    assert torch.equal(training_loss(logits, target, "standard", 1.0), ce.mean())
    assert torch.equal(
        training_loss(logits, target, "bounded", 2.0), torch.minimum(ce, torch.tensor(2.0)).mean()
    )
    training_loss(logits, target, "bounded", 2.0).backward()
    assert torch.equal(logits.grad[0], torch.zeros(3))  # capped: exactly no gradient, as before
    assert set(LOSS_NAMES) == {"standard", "bounded", *OBJECTIVES}
    with pytest.raises(ValueError, match="unknown loss"):
        training_loss(logits, target, "hinge", 1.0)


def test_an_objective_run_logs_cross_entropy_and_the_bounded_view(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("loss=gce", "loss.q=0.5", "callbacks=none")
    pipeline.prepare(cfg)
    dm = pipeline.build_datamodule(cfg)
    module = pipeline.build_module(cfg, dm)
    trainer = pipeline.build_trainer(cfg)
    trainer.fit(module, datamodule=dm)
    history = read_history(tmp_path)
    for key in ("val/loss", "val/loss_bounded", "train/loss", "train/loss_bounded"):
        assert len([v for v in history[key] if math.isfinite(v)]) == 2, key
    # val/loss is the final model's mean cross-entropy (not the GCE it optimised); loss_bounded its capped mean
    with torch.no_grad():
        logits = module(dm.val.inputs())
    ce = F.cross_entropy(logits, dm.val.y, reduction="none")
    assert module.epoch_values["val/loss"] == pytest.approx(ce.mean().item(), rel=1e-5)
    assert module.epoch_values["val/loss"] != pytest.approx(
        OBJECTIVES["gce"].fn(logits, dm.val.y, 0.5).mean().item()
    )
    capped = torch.minimum(ce, module.loss_cap).mean().item()
    assert module.epoch_values["val/loss_bounded"] == pytest.approx(capped, rel=1e-5)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (
            ("loss=focal", "loss.gamma=-1"),
            "loss.gamma for focal must be >= 0, got -1: fix loss.gamma (default 2)",
        ),
        (("loss=gce", "loss.q=0"), "loss.q for gce must be in (0, 1], got 0"),
        (("loss=phuber", "loss.tau=1"), "loss.tau for phuber must be > 1"),
        (("loss=label_smoothing", "loss.epsilon=1"), "loss.epsilon for label_smoothing must be in [0, 1)"),
        (
            ("loss.name=hinge",),
            "loss.name='hinge' is unknown: use loss=<one of standard, bounded, label_smoothing",
        ),
        (("data.augment=rotate",), "data.augment='rotate' is unknown: use one of none, flip_crop"),
        (("optimizer.lr=fast",), "optimizer.lr='fast' must be a number"),
    ],
)
def test_bad_remedy_values_fail_before_any_work(make_cfg, overrides: tuple[str, ...], needle: str) -> None:
    with pytest.raises(UserError) as err:
        pipeline.prepare(make_cfg(*overrides))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_bad_objective_parameter_is_one_line_from_the_command_line(tmp_path: Path) -> None:
    proc = run_module("src.train", "loss=gce", "loss.q=2", f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(proc, "loss.q for gce must be in (0, 1], got 2", "fix loss.q")
    assert not (tmp_path / "run" / "checkpoints").exists()


# -- augmentation through the data module ----------------------------------------------------
def _train_batches(dm: DigitsDataModule, epoch: int) -> list[torch.Tensor]:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)  # what Lightning calls each epoch (and after a resume)
    return [x for x, _, _ in loader]


def test_augmentation_is_seeded_per_epoch_and_never_on_val() -> None:
    plain = DigitsDataModule(train_size=60, batch_size=16, seed=3)
    augmented = DigitsDataModule(train_size=60, batch_size=16, seed=3, augment="flip_crop")
    for dm in (plain, augmented):
        dm.setup()
    # val: identical to the un-augmented inputs, batch for batch
    val_plain = torch.cat([x for x, _, _ in plain.val_dataloader()])
    val_aug = torch.cat([x for x, _, _ in augmented.val_dataloader()])
    assert torch.equal(val_aug, val_plain) and torch.equal(val_aug, augmented.val.inputs())
    # train: the same batches as augment_batch of the plain batches, seeded by (seed, epoch, batch)
    epoch2 = _train_batches(augmented, 2)
    for i, (raw, aug) in enumerate(zip(_train_batches(plain, 2), epoch2, strict=True)):
        assert torch.equal(aug, augment_batch(raw, "flip_crop", 3, 2, i))
        assert not torch.equal(aug, raw)
    # deterministic: a fresh loader (a resumed run) at the same epoch gives the same batches, another epoch not
    assert all(torch.equal(a, b) for a, b in zip(_train_batches(augmented, 2), epoch2, strict=True))
    assert not torch.equal(_train_batches(augmented, 3)[0], epoch2[0])
    with pytest.raises(ValueError, match="unknown augmentation"):
        DigitsDataModule(augment="rotate")


def test_augment_changes_training_but_not_the_cap(make_cfg, tmp_path: Path) -> None:
    plain = pipeline.train(make_cfg("callbacks=none", "~logger"))
    augmented = pipeline.train(make_cfg("callbacks=none", "~logger", "data.augment=flip_crop"))
    assert augmented["train/loss_cap"] == pytest.approx(plain["train/loss_cap"])  # the cap uses the raw training images
    assert augmented["train/loss"] != pytest.approx(plain["train/loss"])


# -- optimizer.lr=auto and the defaults on an RGB folder -------------------------------------
def test_auto_lr_is_measured_and_a_number_is_used_as_given(make_cfg) -> None:
    cfg = make_cfg(fast=False)  # the default run's data: 150 training digits
    dm = pipeline.build_datamodule(cfg)
    assert cfg.optimizer.lr == "auto"
    module = pipeline.build_module(cfg, dm)
    assert module.configure_optimizers().param_groups[0]["lr"] == 0.1  # the digits keep the forum's lr
    module = pipeline.build_module(make_cfg("optimizer.lr=0.03"), dm)
    assert module.configure_optimizers().param_groups[0]["lr"] == 0.03  # a number is used as given


@pytest.mark.slow
def test_default_settings_learn_on_a_generated_rgb_folder(tmp_path: Path) -> None:
    """No optimiser flags: a 3-class 32x32 RGB folder must learn in 10 epochs (lr 0.1 stays at chance)."""
    root = make_image_folder(tmp_path / "images", 150, noise=0.6)
    run = tmp_path / "run"
    proc = run_module(
        "src.train",
        "data=folder",
        f"data.root={root}",
        "trainer.max_epochs=10",
        "callbacks=none",
        f"hydra.run.dir={run}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    acc = [v for v in read_history(run)["val/acc"] if math.isfinite(v)]
    assert len(acc) == 10 and acc[-1] >= 0.7, acc
    assert re.search(r"optimizer.lr=auto: [\d.e-]+ \(learning-rate range test", (run / "train.log").read_text())
