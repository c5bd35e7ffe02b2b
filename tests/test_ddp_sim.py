"""trainer=ddp_sim (2 CPU processes, ddp_spawn + gloo) gives the single-process numbers; only rank 0 writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lossdiag.diagnosis.samples import load_samples
from lossdiag.rundir.metrics_csv import read_history
from tests.conftest import run_spawned

# 60 training samples: batches of 15 on each of 2 ranks see the same samples per step as batches of 30
# on one process (TensorBatches deals the shuffled order out round-robin), so the runs must agree.
COMMON = ["debug=fast", "~callbacks.progress_bar"]


@pytest.mark.slow
def test_ddp_sim_matches_single_process(make_cfg, tmp_path: Path) -> None:
    from lossdiag.app.pipeline import train

    probe = tmp_path / "probe.json"
    run = tmp_path / "ddp"
    proc = run_spawned(
        "src.train", *COMMON, "trainer=ddp_sim", "data.batch_size=15",
        "+callbacks.probe._target_=tests.probes.DistributedProbe", f"+callbacks.probe.path={probe}",
        f"hydra.run.dir={run}", output=run,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    result = json.loads(probe.read_text())
    assert result["world_size"] == 2
    assert result["exactly_once_on_every_rank"] and result["n_records"] == result["n_val"] == 449
    assert result["seen_per_rank"] == [225, 225]  # 450 = 449 + 1 padded repeat, dropped by index
    assert len(set(result["caps"])) == 1  # the bounded-loss cap is the same on both ranks

    # only rank 0 wrote: one TensorBoard file, one CSV, one pair of checkpoints
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and ".hydra" not in p.parts)
    assert len([f for f in files if f.startswith("events.out.tfevents")]) == 1, files
    assert {"csv/metrics.csv", "checkpoints/best_val_acc.ckpt", "checkpoints/min_val_loss.ckpt", "checkpoints/last.ckpt"} <= set(files)
    assert not [f for f in files if "rank" in f or f.endswith(".tmp")], files

    train(make_cfg(*COMMON, "data.batch_size=30"))
    ddp, single = read_history(run), read_history(tmp_path)
    assert ddp["epoch"] == single["epoch"] == [0.0, 1.0]
    for key in (
        "train/loss",
        "train/acc",
        "val/loss",
        "val/acc",
        "val/f1_macro",
        "train/loss_cap",
        "val/loss_bounded",
    ):
        assert ddp[key] == pytest.approx(single[key], rel=1e-4, abs=1e-6), key
    # training dynamics: every training sample once per epoch (the padded repeat dropped), as one process
    got, want = load_samples(run), load_samples(tmp_path)
    assert got.dynamics_epochs == want.dynamics_epochs == [0, 1]
    np.testing.assert_array_equal(got.train.index, want.train.index)
    for name in ("train_p_given", "train_margin"):
        np.testing.assert_allclose(
            np.stack(getattr(got, name)), np.stack(getattr(want, name)), rtol=1e-3, atol=2e-3
        )
