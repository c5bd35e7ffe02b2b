"""``src.evaluate``'s choice of data: the run's config groups, another folder read whole, and the cleanup of a
failed evaluation's folder (no Lightning, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lossdiag.app.evaluate import with_run_config
from lossdiag.app.run_config import other_folder, with_run_groups
from lossdiag.data.datamodules import ImageFolderDataModule
from lossdiag.errors import UserError
from lossdiag.rundir.find import remove_unfinished
from tests.image_folders import write_image_folder


def _fake_run(tmp_path: Path, data: dict, choices: dict) -> Path:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"data": data, "seed": 3}), run / ".hydra" / "config.yaml")
    OmegaConf.save(
        OmegaConf.create({"hydra": {"runtime": {"choices": choices}}}), run / ".hydra" / "hydra.yaml"
    )
    return run / "checkpoints" / "last.ckpt"


def test_the_run_groups_are_added_to_the_command_line(tmp_path: Path) -> None:
    ckpt = _fake_run(
        tmp_path, {"root": "/animals"}, {"data": "folder", "model": "shallownet", "loss": "bounded"}
    )
    argv, added = with_run_groups([f"ckpt_path={ckpt}", "data.root=/other"])
    assert added == ["data=folder", "model=shallownet", "loss=bounded"] and argv[-3:] == added
    argv, added = with_run_groups([f"ckpt_path={ckpt}", "data=digits", "+loss.k=2"])
    assert added == ["model=shallownet", "loss=bounded"]  # data given: not added; loss.k is only a key
    assert with_run_groups(["data.root=/x"]) == (["data.root=/x"], [])  # no checkpoint: nothing to read
    missing = _fake_run(tmp_path / "b", {}, {"data": "no_such_option"})
    assert with_run_groups([f"ckpt_path={missing}"])[1] == []


def test_naming_the_runs_own_group_keeps_its_values(tmp_path: Path) -> None:
    ckpt = _fake_run(tmp_path, {"root": "/animals", "image_size": 16}, {"data": "folder"})
    here = OmegaConf.create({"data": {"root": "/other", "image_size": 32}, "seed": 0})
    same = with_run_config(here, ckpt, ["data=folder", "data.root=/other"])
    assert OmegaConf.to_container(same.data) == {"root": "/other", "image_size": 16}
    assert other_folder(ckpt, same.data.root) == Path("/other").resolve()
    assert other_folder(ckpt, with_run_config(here, ckpt, []).data.root) is None  # the run's own folder


def test_every_image_of_another_folder_with_the_runs_labels(tmp_path: Path) -> None:
    root = tmp_path / "new"
    write_image_folder(root / "train", {"cats": 3, "owls": 2}, size=6, seed=0)
    write_image_folder(root / "val", {"cats": 1, "owls": 2}, size=6, seed=1)
    dm = ImageFolderDataModule(root=str(root), image_size=6)
    dm.setup_every_image(["cats", "dogs", "owls"])  # the model's classes: dogs absent here
    assert dm.class_names == ["cats", "dogs", "owls"] and len(dm.val) == 8 and len(dm.train) == 0
    assert (dm.depth, dm.height, dm.width, dm.num_classes) == (3, 6, 6, 3)
    names = [dm.class_names[int(y)] for y in dm.val.y]
    assert names == [Path(p).parent.name for p in dm.val.paths]  # labels follow the model's order
    assert torch.equal(torch.bincount(dm.val.y, minlength=3), torch.tensor([4, 0, 4]))
    with pytest.raises(UserError, match="has class folder\\(s\\) owls that the model was not trained on"):
        ImageFolderDataModule(root=str(root), image_size=6).setup_every_image(["cats", "dogs"])


def test_a_failed_jobs_folder_goes_only_when_hydra_wrote_all_of_it(tmp_path: Path) -> None:
    def hydra_job(folder: Path) -> Path:
        (folder / ".hydra").mkdir(parents=True)
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            (folder / ".hydra" / name).write_text("x")
        (folder / "evaluate.log").write_text("")
        return folder

    assert remove_unfinished(hydra_job(tmp_path / "a"), "evaluate.log") and not (tmp_path / "a").exists()
    kept = hydra_job(tmp_path / "b")
    (kept / "diagnosis.md").write_text("an earlier evaluation")
    assert not remove_unfinished(kept, "evaluate.log")
    assert sorted(p.name for p in kept.iterdir()) == [".hydra", "diagnosis.md", "evaluate.log"]
    assert not remove_unfinished(tmp_path / "missing", "evaluate.log")
