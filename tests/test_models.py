"""Any model from the command line: model=resnet18 / model=torchvision model.name=..., a user's own nn.Module class
through model._target_ (the arguments it accepts filled from the data), one-line errors for a bad target, src.evaluate
on such checkpoints, and data.root without data=folder."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from lossdiag.app import pipeline
from lossdiag.app.cli import describe, with_folder_data
from lossdiag.errors import UserError
from lossdiag.models.builders import DataShape, build_net
from tests.conftest import child_env, run_module
from tests.image_folders import write_image_folder
from tests.test_bad_input import assert_one_line_error

USER_MODULE = '''
import torch
from torch import nn


class TinyCNN(nn.Module):
    """A user's model: its own argument names, one of them (width) a config key."""

    def __init__(self, num_classes: int, in_channels: int, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.head = nn.Linear(width * 4, num_classes)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        return self.head(nn.functional.adaptive_avg_pool2d(x, 2).flatten(1))


def make_tiny(classes, channels, hidden=4):
    """A factory: ``classes`` and ``channels`` are only filled because they have no default."""
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.Linear(hidden, classes))


def wrong_shape(num_classes):
    return nn.Conv2d(1, num_classes, 3)


def broken(num_classes):
    raise ValueError("this model cannot be built")


class NotAModule:
    def __init__(self, num_classes):
        self.num_classes = num_classes
'''


@pytest.fixture
def user_models(tmp_path: Path) -> Path:
    """A folder holding ``usermodels.py``, for PYTHONPATH (as a user's own package would be)."""
    folder = tmp_path / "userpkg"
    folder.mkdir()
    (folder / "usermodels.py").write_text(textwrap.dedent(USER_MODULE))
    return folder


def with_user_models(folder: Path) -> dict[str, str]:
    """The environment for a subprocess that can import ``usermodels`` (and everything it could before)."""
    return {"PYTHONPATH": os.pathsep.join((str(folder), child_env()["PYTHONPATH"]))}


@pytest.fixture
def on_path(user_models: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(user_models))
    return user_models


DIGITS = DataShape(channels=1, height=8, width=8, num_classes=10)


# -- the builder, in-process -------------------------------------------------------------------
def test_user_class_gets_the_data_arguments_it_takes_and_the_config_keys_it_accepts(on_path: Path) -> None:
    built = build_net("usermodels.TinyCNN", {"width": 6, "filters": 32}, DIGITS)
    assert built.arguments == {"num_classes": 10, "in_channels": 1, "width": 6}
    assert built.not_passed == ["filters"]  # ShallowNet's key, left over after model._target_=...
    assert built.net.conv.weight.shape == (6, 1, 3, 3) and built.net.head.out_features == 10
    factory = build_net("usermodels.make_tiny", {}, DIGITS)  # ambiguous names, no default: filled
    assert factory.arguments == {"classes": 10, "channels": 1}


def test_torchvision_models_fit_the_data(make_cfg) -> None:
    """Grayscale 8x8 digits with resnet18: 1-channel 3x3/stride-1 stem, no max-pool; another builder adapted too."""
    cfg = make_cfg("model=resnet18")
    dm = pipeline.build_datamodule(cfg)
    net = pipeline.build_net(cfg, dm)
    assert net.conv1.in_channels == 1 and net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, torch.nn.Identity) and net.fc.out_features == 10
    big = pipeline.build_net(make_cfg("model=resnet18", "model.small_stem=false"), dm)
    assert big.conv1.kernel_size == (7, 7) and big.conv1.in_channels == 1
    assert isinstance(big.maxpool, torch.nn.MaxPool2d)
    mobile = pipeline.build_net(make_cfg("model=torchvision", "model.name=mobilenet_v3_small"), dm)
    first = mobile.features[0][0]
    assert first.in_channels == 1 and first.stride == (1, 1)
    assert mobile(torch.rand(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["model._target_=nosuch.Net"], "cannot be imported (no module 'nosuch')"),
        (["model._target_=usermodels.TinyCN"], "did you mean usermodels.TinyCNN?"),
        (["model._target_=usermodels.NotAModule"], "not a torch.nn.Module"),
        (["model._target_=usermodels.broken"], "failed to build (ValueError: this model cannot be built)"),
        (
            ["model._target_=usermodels.wrong_shape"],
            "returns shape (2, 10, 6, 6) for a batch of shape (2, 1, 8, 8)",
        ),
        (
            ["model._target_=torch.nn.Linear"],
            "give out_features on the command line (+model.out_features=...)",
        ),
        (["model._target_=torchvision.models.resnet18"], "use model=torchvision model.name=resnet18"),
        (
            ["model=torchvision", "model.name=resnt18"],
            "model.name=resnt18 is not a torchvision classification",
        ),
        (["model=resnet18", "model.weights=DEFAULT"], "pretrained weights would be downloaded"),
        (
            ["model=resnet18", "model.small_stem=maybe"],
            "model.small_stem='maybe' must be auto, true or false",
        ),
    ],
)
def test_bad_models_are_one_line_errors(make_cfg, on_path: Path, overrides: list[str], needle: str) -> None:
    cfg = make_cfg(*overrides)
    dm = pipeline.build_datamodule(cfg)
    with pytest.raises(UserError) as err:
        pipeline.build_net(cfg, dm)
    assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_data_root_alone_selects_folder_data() -> None:
    assert with_folder_data(["data.root=/imgs", "seed=1"]) == ["data=folder", "data.root=/imgs", "seed=1"]
    assert with_folder_data(["+data.root=/imgs"]) == ["data=folder", "data.root=/imgs"]
    assert with_folder_data(["data=folder", "data.root=/imgs"]) == ["data=folder", "data.root=/imgs"]
    assert with_folder_data(["seed=1"]) == ["seed=1"]


# -- through the command line ------------------------------------------------------------------
@pytest.mark.slow
def test_resnet18_from_the_command_line_and_src_evaluate_on_its_checkpoint(tmp_path: Path) -> None:
    """data.root alone (no data=folder), model=resnet18; then src.evaluate rebuilds it from the run's config."""
    root = tmp_path / "images"
    write_image_folder(root, {"cat": 8, "dog": 8, "panda": 8}, size=12)
    run = tmp_path / "run"
    proc = run_module(
        "src.train", "model=resnet18", f"data.root={root}", "data.image_size=12", "trainer.max_epochs=1",
        "optimizer.lr=0.01", "~callbacks.progress_bar", f"hydra.run.dir={run}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "note: data.root is set without data=: using data=folder" in proc.stderr
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert config["model"]["name"] == "resnet18" and config["data"]["root"] == str(root)
    state = torch.load(run / "checkpoints" / "best_val_acc.ckpt", map_location="cpu", weights_only=False)[
        "state_dict"
    ]
    assert state["net.conv1.weight"].shape == (64, 3, 3, 3)  # the small-image stem, RGB
    assert state["net.fc.weight"].shape == (3, 512)
    evaluation = tmp_path / "evaluation"
    proc = run_module(
        "src.evaluate",
        f"ckpt_path={run / 'checkpoints' / 'best_val_acc.ckpt'}",
        f"hydra.run.dir={evaluation}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = (run / "reports" / "best_val_acc.md").read_text().split("\n## ")[0]
    evaluated = (evaluation / "reports" / "best_val_acc.md").read_text().split("\n## ")[0]
    assert "accuracy" in evaluated and evaluated == trained  # the same network, the same numbers


@pytest.mark.slow
def test_user_class_through_model_target(tmp_path: Path, user_models: Path) -> None:
    run = tmp_path / "run"
    proc = run_module(
        "src.train", "model._target_=usermodels.TinyCNN", "+model.width=4", "debug=fast", "optimizer.lr=0.1",
        "~callbacks.diagnosis", "~callbacks.progress_bar", f"hydra.run.dir={run}", env=with_user_models(user_models),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    notes = [line for line in proc.stdout.splitlines() if "does not take" in line]
    assert notes == ["warning: model: usermodels.TinyCNN does not take filters: not passed "
                     "(remove them from model.*, or ignore this)"]  # fmt: skip
    hparams = yaml.safe_load((run / "hparams.yaml").read_text())
    assert hparams["model"] == {"_target_": "usermodels.TinyCNN", "filters": 32, "width": 4}
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["state_dict"]["net.conv.weight"].shape == (4, 1, 3, 3)  # in_channels=1 and width=4 passed
    assert ckpt["state_dict"]["net.head.weight"].shape == (10, 16)  # num_classes=10 from the digits


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("model._target_=nosuch.Net", "model._target_=nosuch.Net cannot be imported"),
        ("model._target_=usermodels.wrong_shape", "not logits of shape (2, 10)"),
        ("+data.root=/somewhere", "data.root is not a setting of lossdiag.data.datamodules.DigitsDataModule"),
    ],
)
def test_bad_targets_from_the_command_line_leave_no_run(
    tmp_path: Path, user_models: Path, override: str, needle: str
) -> None:
    extra = ["data=digits"] if "data.root" in override else []
    proc = run_module("lossdiag.train", *extra, override, cwd=tmp_path, env=with_user_models(user_models))
    assert_one_line_error(proc, needle)
    assert not list(tmp_path.glob("outputs/runs/*/*")), "a rejected run left its folder"


def test_data_root_with_other_data_says_to_use_data_folder() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    from tests.conftest import CONF_DIR

    with (
        initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"),
        pytest.raises(ConfigCompositionException) as err,
    ):
        compose("train", overrides=["data=digits", "data.root=/x"])
    assert (
        describe(err.value)
        == "data.root is a key of data=folder only: use data=folder data.root=<folder> for your images"
    )
