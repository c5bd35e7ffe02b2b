"""Same seed and config on CPU: identical metrics, per-sample losses and checkpoints; other seeds differ."""

from __future__ import annotations

from pathlib import Path

import torch

from lossdiag.rundir.metrics_csv import read_history


def _run(make_cfg, out: Path, seed: int) -> tuple[dict, torch.Tensor, dict]:
    from lossdiag.app.pipeline import build_datamodule, build_module, build_trainer, prepare

    cfg = make_cfg(f"seed={seed}")
    cfg.paths.output_dir = str(out)  # make_cfg points every run at tmp_path
    prepare(cfg)
    datamodule = build_datamodule(cfg)
    model = build_module(cfg, datamodule)
    trainer = build_trainer(cfg)
    trainer.fit(model, datamodule=datamodule)
    per_sample = model.epoch_records("val").cross_entropy
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)[
        "state_dict"
    ]
    return read_history(out), per_sample, state


def test_same_seed_same_everything_other_seed_differs(make_cfg, tmp_path: Path) -> None:
    history_a, losses_a, state_a = _run(make_cfg, tmp_path / "a", seed=3)
    history_b, losses_b, state_b = _run(make_cfg, tmp_path / "b", seed=3)
    history_c, losses_c, state_c = _run(make_cfg, tmp_path / "c", seed=4)

    assert history_a == history_b
    assert torch.equal(losses_a, losses_b)
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)

    assert history_a["val/loss"] != history_c["val/loss"]
    assert not torch.equal(state_a["net.fc1.weight"], state_c["net.fc1.weight"])
    assert len(losses_c) == len(losses_a) and not torch.equal(losses_a, losses_c)
