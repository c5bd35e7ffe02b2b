"""Bad input: one line naming the problem and the fix, exit code 2, no traceback."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lossdiag.errors import UserError
from tests.conftest import run_module

RNG = np.random.default_rng(0)


def write_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (16, 16)) -> Path:
    """A random image of ``mode``, including 16-bit (``I;16``) and palette (``P``) ones."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    if mode == "I;16":
        img = Image.fromarray(RNG.integers(0, 65535, (h, w)).astype(np.uint16))
    elif mode == "L":
        img = Image.fromarray(RNG.integers(0, 255, (h, w), dtype=np.uint8))
    elif mode == "RGBA":
        img = Image.fromarray(RNG.integers(0, 255, (h, w, 4), dtype=np.uint8), "RGBA")
    else:
        img = Image.fromarray(RNG.integers(0, 255, (h, w, 3), dtype=np.uint8))
        img = img.convert("P") if mode == "P" else img
    img.save(path)
    return path


def image_folder(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            write_image(root / name / f"{i}.png")
    return root


def assert_one_line_error(proc, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0]
    return errors[0]


# -- through the command line ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "needles"),
    [
        (
            "loss=bouned",
            [
                "loss=bouned is not an option",
                "bounded, focal, gce, label_smoothing, phuber, standard",
                "did you mean loss=bounded",
            ],
        ),
        ("loss.kk=1", ["unknown config key 'loss.kk' (did you mean loss.k?)", "+loss.kk="]),
        ("trainer.max_epoch=3", ["unknown config key 'trainer.max_epoch' (did you mean trainer.max_epochs?)"]),
        ("seed=[", ["cannot parse the command-line override"]),
    ],
)
def test_hydra_config_errors_are_one_line(override: str, needles: list[str], tmp_path: Path) -> None:
    proc = run_module("src.train", override, f"hydra.run.dir={tmp_path}")
    assert_one_line_error(proc, *needles)


def test_user_errors_from_the_command_line_are_one_line(tmp_path: Path) -> None:
    proc = run_module("src.train", "data=folder", f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(proc, "data.root must be given", "data.root=/path/to/images")
    proc = run_module("src.train", f"resume={tmp_path}")
    assert_one_line_error(proc, "has no .hydra/overrides.yaml")
    # data.root alone on a folder that is not there: the error is the only line (no data=folder note before it)
    proc = run_module("src.train", f"data.root={tmp_path / 'nope'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(proc, "is not a folder: point data.root at a folder of class subfolders")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("callbacks.checkpoint.mode=avg", "callbacks.checkpoint.mode=avg is not one of max, min"),
        ("callbacks.last_checkpoint.every_s=-1", "callbacks.last_checkpoint.every_s=-1 must be >= 0"),
        ("callbacks.diagnosis.flush_every_n_epochs=0", "flush_every_n_epochs >= 1"),
        # found once the data is loaded (debug=fast: 60 training digits, 3 to 9 per class), still before any work
        ("suspects.folds=10", "suspects.folds=10 needs at least 10 training images of every class"),
        # what the frameworks refuse (Trainer / torch.optim), as one line naming the config group
        ("+trainer.max_epoch=3", "trainer: Trainer.__init__() got an unexpected keyword argument 'max_epoch'"),
        ("+optimizer.foo=1", "optimizer: SGD.__init__() got an unexpected keyword argument 'foo'"),
        ("optimizer.momentum=2", "optimizer.momentum=2 must be in [0, 1)"),
        ("optimizer.weight_decay=-1", "optimizer.weight_decay=-1 must be >= 0"),
        pytest.param(
            "trainer.accelerator=gpu", "trainer: No supported gpu backend found!",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there"),
        ),
    ],
)
def test_bad_callback_values_are_one_line_and_leave_no_run(
    override: str, needle: str, tmp_path: Path
) -> None:
    """Raised inside hydra.utils.instantiate (which wraps them): still one line, exit 2, no run folder left."""
    proc = run_module("lossdiag.train", override, "debug=fast", cwd=tmp_path)  # the spelling for any folder
    assert_one_line_error(proc, needle)
    assert not list(tmp_path.glob("outputs/runs/*/*")), "a rejected run left its folder"


def test_full_error_env_gives_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    proc = run_module("src.train", "loss=bouned", f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "MissingConfigException" in proc.stderr


# -- in-process -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("ckpt_path=/no/such/last.ckpt", r"ckpt_path=/no/such/last.ckpt does not exist: give a checkpoint"),
        ("loss.k=-1", r"loss.k=-1 must be > 0"),
        ("data.val_fraction=1.5", r"data.val_fraction=1.5 must be between 0 and 1"),
        ("trainer.max_epochs=0", r"trainer.max_epochs=0 must be >= 1"),
        ("suspects.folds=1", r"suspects.folds=1 must be 0 \(off\) or a whole number >= 2"),
        ("suspects.folds=-4", r"suspects.folds=-4 must be 0 \(off\) or a whole number >= 2"),
    ],
)
def test_bad_values(make_cfg, override: str, match: str) -> None:
    from lossdiag.app.pipeline import train

    with pytest.raises(UserError, match=match):
        train(make_cfg(override))


def folder_cfg(make_cfg, root: Path, *overrides: str):
    return make_cfg(
        "data=folder", f"data.root={root}", "data.train_size=null", "data.image_size=8", *overrides
    )


@pytest.mark.parametrize(
    ("layout", "match"),
    [
        ("empty", r"has 0 class folder\(s\) \[\]: put each class's images in its own subfolder"),
        ("missing", r"is not a folder: point data.root at a folder of class subfolders"),
        ("one_class", r"has 1 class folder\(s\) \['a'\].*at least 2 classes"),
        ("empty_class", r"class folder .*/b has no readable images: add images or remove the folder"),
        ("tiny_class", r"class b has fewer than 2 images, so it cannot appear in both train and val"),
    ],
)
def test_bad_folders(make_cfg, tmp_path: Path, layout: str, match: str) -> None:
    from lossdiag.app.pipeline import build_datamodule

    root = tmp_path / "data"
    if layout == "empty":
        root.mkdir()
    elif layout == "one_class":
        image_folder(root, {"a": 4})
    elif layout == "empty_class":
        image_folder(root, {"a": 4, "b": 0})
    elif layout == "tiny_class":
        image_folder(root, {"a": 6, "b": 1})
    with pytest.raises(UserError, match=match):
        build_datamodule(folder_cfg(make_cfg, root))


@pytest.mark.parametrize("mode", ["memory", "cached"])
def test_corrupt_truncated_and_non_image_files_are_skipped_and_counted(
    make_cfg, tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    """Every image is decoded before training (in memory, or into the decode cache): the same skips and errors."""
    from lossdiag.app.pipeline import build_datamodule

    root = image_folder(tmp_path / "data", {"a": 4, "b": 4})
    (root / "a" / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    good = (root / "b" / "0.png").read_bytes()
    (root / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "b" / "notes.txt").write_text("not an image")
    (root / "b" / ".DS_Store").write_bytes(b"\0")
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    for _ in range(2):  # the second time from the cache (cached mode): the same warnings
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lossdiag.data.images"):
            dm = build_datamodule(folder_cfg(make_cfg, root, f"data.mode={mode}", cache))
        assert len(dm.train) + len(dm.val) == 8
        messages = [r.getMessage() for r in caplog.records]
        assert any(
            "skipped 2 unreadable image(s)" in m and "corrupt.jpg" in m and "truncated.png" in m
            for m in messages
        )
        assert any("ignored 1 non-image file(s)" in m and "notes.txt" in m for m in messages)

    fail = (f"data.mode={mode}", cache, "data.on_bad_image=fail")
    # files that are not images stop the run before anything is decoded
    with pytest.raises(UserError, match=r"notes.txt is not an image.*data.on_bad_image=skip"):
        build_datamodule(folder_cfg(make_cfg, root, *fail))
    (root / "b" / "notes.txt").unlink()
    with pytest.raises(UserError, match=r"cannot read image .*corrupt.jpg.*set data.on_bad_image=skip"):
        build_datamodule(folder_cfg(make_cfg, root, *fail))
    (root / "a" / "corrupt.jpg").unlink()
    with pytest.raises(UserError, match=r"cannot read image .*truncated.png.*set data.on_bad_image=skip"):
        build_datamodule(folder_cfg(make_cfg, root, *fail))


@pytest.mark.parametrize("channels", [1, 3])
def test_mixed_sizes_and_modes_load(make_cfg, tmp_path: Path, channels: int) -> None:
    from lossdiag.app.pipeline import build_datamodule

    root = tmp_path / "data"
    modes = ["RGB", "RGBA", "P", "I;16", "L"]
    for cls in ("a", "b"):
        for i, mode in enumerate(modes * 2):
            write_image(root / cls / f"{i}.png", mode, size=(7 + 3 * i, 9 + i))
    dm = build_datamodule(folder_cfg(make_cfg, root, f"data.channels={channels}"))
    x = torch.cat([dm.train.inputs(), dm.val.inputs()])
    assert x.shape == (20, channels, 8, 8)
    assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1 and x.std() > 0


def test_checkpoint_of_another_model_shape(make_cfg, tmp_path: Path) -> None:
    from lossdiag.app.pipeline import build_datamodule, build_module, train

    cfg = make_cfg("model.filters=4")
    model = build_module(cfg, build_datamodule(cfg))
    ckpt = tmp_path / "other.ckpt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    with pytest.raises(
        UserError, match=r"belongs to another model shape \(net.conv1.weight is \(4, 1, 3, 3\) there"
    ):
        train(make_cfg(f"ckpt_path={ckpt}"))
    not_a_ckpt = write_image(tmp_path / "img.png")
    with pytest.raises(UserError, match=r"cannot be read as a checkpoint"):
        train(make_cfg(f"ckpt_path={not_a_ckpt}"))


def test_weights_only_checkpoint_cannot_be_resumed(make_cfg, tmp_path: Path) -> None:
    from lossdiag.app.pipeline import build_datamodule, build_module, train

    cfg = make_cfg()
    model = build_module(cfg, build_datamodule(cfg))
    initial = tmp_path / "initial.ckpt"  # what the diagnosis saves before training: weights, no optimizer
    torch.save({"state_dict": model.state_dict(), "epoch": -1, "global_step": 0}, initial)
    with pytest.raises(UserError, match=r"holds weights only.*python -m src.evaluate ckpt_path="):
        train(make_cfg(f"ckpt_path={initial}"))


def test_a_config_group_set_to_null_is_removed_not_a_traceback() -> None:
    """``logger=null`` (what the lightning-hydra-template writes for "no logger") means ``~logger``; Hydra itself
    refuses null as a group choice with a traceback. Keys that are not groups keep their null."""
    from lossdiag.app.cli import null_groups_removed

    assert null_groups_removed(["logger=null", "+scheduler=None", "loss.cap=null", "seed=0"]) == [
        "~logger", "~scheduler", "loss.cap=null", "seed=0",
    ]  # fmt: skip
