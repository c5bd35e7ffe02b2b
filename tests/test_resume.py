"""Interrupted runs: kill, resume in the same folder, same numbers as a clean run; unique run folders."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lossdiag.app.resolvers import _claimed, claim_unique_dir
from lossdiag.callbacks.csv_logger import ResumableCSVLogger
from lossdiag.diagnosis.samples import load_samples
from lossdiag.rundir.metrics_csv import read_history
from lossdiag.rundir.status import read_summary
from tests.conftest import ROOT, child_env, run_module

EPOCHS = 6
# last.ckpt after every epoch, and the diagnosis logged every third epoch: a checkpoint the kill leaves
# behind may hold epochs the diagnosis had not logged yet (they travel in the checkpoint)
OVERRIDES = [
    "debug=fast",
    f"trainer.max_epochs={EPOCHS}",
    "~callbacks.progress_bar",
    "callbacks.last_checkpoint.every_s=0",
    "callbacks.diagnosis.flush_every_n_epochs=3",
    "callbacks.diagnosis.flush_every_s=1000",
]


def _epochs_logged(run: Path) -> int:
    try:
        return len(read_history(run)["epoch"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def _start_and_kill(run: Path, sig: signal.Signals) -> subprocess.Popen:
    """Start a slowed-down run and send ``sig`` in the middle of an epoch after the second."""
    args = [*OVERRIDES, "+callbacks.sleep._target_=tests.probes.SleepPerStep", "+callbacks.sleep.seconds=0.1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "src.train", *args, f"hydra.run.dir={run}"],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while _epochs_logged(run) < 2 or not (run / "checkpoints" / "last.ckpt").is_file():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "the run did not get going"
        time.sleep(0.02)
    time.sleep(0.1)  # one training step into the next epoch
    proc.send_signal(sig)
    proc.wait(timeout=60)
    return proc


def _state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.slow
def test_killed_run_resumes_in_its_folder_with_the_clean_run_numbers(make_cfg, tmp_path: Path) -> None:
    from lossdiag.app.pipeline import train

    run = tmp_path / "killed"
    proc = _start_and_kill(run, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    killed_at = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["epoch"]
    assert 1 <= killed_at < EPOCHS - 1, "the kill came too late to test a resume"

    resumed = run_module("src.train", f"resume={run}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(list(run.glob("events.out.tfevents.*"))) == 2  # same TensorBoard folder, one file per attempt
    assert not list(tmp_path.glob("outputs"))  # nothing written anywhere else

    clean = train(make_cfg(*OVERRIDES[1:]))  # the same run, uninterrupted, in tmp_path
    got, want = read_history(run), read_history(tmp_path)
    assert got["epoch"] == [float(e) for e in range(EPOCHS)]
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-7, nan_ok=True), key
    assert clean["val/loss"] == pytest.approx(got["val/loss"][-1], rel=1e-6)
    resumed_state, clean_state = _state(run), _state(tmp_path)
    assert resumed_state["loss_cap"] == clean_state["loss_cap"]  # the cap came from the checkpoint
    for key, value in clean_state.items():
        torch.testing.assert_close(resumed_state[key], value, rtol=1e-6, atol=1e-7, msg=key)
    # the diagnosis kept the first attempt's initial weights and every epoch's per-sample history
    assert (run / "reports" / "initial.md").read_text() == (tmp_path / "reports" / "initial.md").read_text()
    assert (run / "reports" / "last.md").read_text() == (tmp_path / "reports" / "last.md").read_text()
    got_samples, want_samples = load_samples(run), load_samples(tmp_path)
    assert got_samples.epochs == want_samples.epochs == list(range(EPOCHS))
    np.testing.assert_allclose(got_samples.history.loss, want_samples.history.loss, rtol=1e-5, atol=1e-6)
    # the training dynamics of the epochs before the kill came back from the journal, the rest were recorded
    assert got_samples.dynamics_epochs == want_samples.dynamics_epochs == list(range(EPOCHS))
    for name in ("train_p_given", "train_margin"):
        np.testing.assert_allclose(np.stack(getattr(got_samples, name)), np.stack(getattr(want_samples, name)),
                                   rtol=1e-3, atol=2e-3, err_msg=name)  # fmt: skip


@pytest.mark.slow
def test_sigterm_stops_with_a_resume_hint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _start_and_kill(run, signal.SIGTERM)
    stderr = proc.stderr.read()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert f"continue it with `python -m src.train resume={run}`" in stderr
    assert "Traceback" not in stderr


def test_csv_logger_continues_and_drops_stale_and_torn_rows(tmp_path: Path) -> None:
    csv = tmp_path / "csv" / "metrics.csv"
    csv.parent.mkdir()
    rows = "".join(f"{e},{e * 2 + 1},0.{e}\n" for e in range(4))
    csv.write_text("epoch,step,val/loss\n" + rows + "4,9,0.")  # epochs 0-3 and a torn row
    logger = ResumableCSVLogger(tmp_path, name="csv", version="")
    logger.log_metrics({"epoch": 2, "val/loss": 0.25}, step=5)
    logger.save()
    history = read_history(tmp_path)
    assert history["epoch"] == [0.0, 1.0, 2.0]
    assert history["val/loss"] == [0.0, 0.1, 0.25]


def test_run_folders_claimed_in_the_same_second_differ(tmp_path: Path) -> None:
    base = str(tmp_path / "runs" / "2026-01-01" / "10-00-00")
    _claimed.clear()
    first = claim_unique_dir(base)
    assert claim_unique_dir(base) == first  # one process asks again: same folder
    _claimed.clear()  # a second process
    second = claim_unique_dir(base)
    _claimed.clear()
    assert (first, second) == (base, f"{base}-1")
    assert Path(first).is_dir() and Path(second).is_dir()


@pytest.mark.slow
def test_two_runs_started_together_get_two_folders(tmp_path: Path) -> None:
    # both ask for the same folder, as two runs started in the same second do (<date>/<time>)
    base = "outputs/runs/same-second"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "src.train", "debug=fast", "callbacks=none", "~logger",
             f"hydra.run.dir=${{unique_dir:{base}}}"],
            cwd=tmp_path,
            env=child_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]  # fmt: skip
    for proc in procs:
        proc.wait(timeout=120)
        assert proc.returncode == 0, proc.stderr.read()
    runs = sorted((tmp_path / "outputs" / "runs").glob("same-second*"))
    assert [r.name for r in runs] == ["same-second", "same-second-1"]
    assert all(read_summary(r)["status"] == "complete" for r in runs)


def test_checkpoints_are_replaced_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lossdiag.callbacks.checkpoint_io import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def killed_midway(obj, handle) -> None:
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    assert io.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def _fake_run(run: Path, status: str = "running") -> Path:
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- debug=fast\n- loss=bounded\n- trainer.max_epochs=2\n")
    (run / ".hydra" / "config.yaml").write_text("trainer:\n  max_epochs: 2\n")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / "csv").mkdir()
    (run / "csv" / "metrics.csv").write_text("epoch,step,val/loss\n0,1,0.5\n1,3,0.4\n")
    (run / "metrics.json").write_text(f'{{"status": "{status}"}}')
    return run


def test_resume_expands_to_the_recorded_command_in_the_same_folder(tmp_path: Path) -> None:
    from lossdiag.app.resume import expand_resume

    run = _fake_run(tmp_path / "run")
    argv = expand_resume([f"resume={run}", "loss=standard"])
    assert argv == [
        "debug=fast",
        "trainer.max_epochs=2",
        "loss=standard",  # given next to resume= wins over the recorded loss=bounded
        f"hydra.run.dir='{run}'",
        f"ckpt_path='{run / 'checkpoints' / 'last.ckpt'}'",
    ]
    assert expand_resume(["loss=standard"]) == ["loss=standard"]


def test_resume_refuses_a_finished_run_unless_it_trains_longer(tmp_path: Path) -> None:
    from lossdiag.app.resume import expand_resume
    from lossdiag.errors import UserError

    run = _fake_run(tmp_path / "run", status="complete")
    with pytest.raises(
        UserError, match=r"already finished its 2 epochs: add trainer.max_epochs=<more than 2>"
    ):
        expand_resume([f"resume={run}"])
    assert expand_resume([f"resume={run}", "trainer.max_epochs=4"])[-3] == "trainer.max_epochs=4"


def test_resuming_a_job_of_a_search_is_a_single_run(tmp_path: Path) -> None:
    from lossdiag.app.resume import expand_resume

    run = _fake_run(tmp_path / "trial")
    (run / ".hydra" / "overrides.yaml").write_text(
        "- hparams_search=optuna\n- launcher=joblib\n- optimizer.lr=0.0123\n- debug=fast\n"
    )
    argv = expand_resume([f"resume={run}"])
    assert argv[:2] == ["optimizer.lr=0.0123", "debug=fast"]  # the trial's parameters, not the search
    assert not any(a.startswith(("hparams_search=", "launcher=")) for a in argv)


def test_resume_refuses_to_stretch_a_learning_rate_schedule(tmp_path: Path) -> None:
    from lossdiag.app.resume import expand_resume
    from lossdiag.errors import UserError

    run = _fake_run(tmp_path / "run")
    (run / ".hydra" / "config.yaml").write_text("trainer:\n  max_epochs: 2\nscheduler:\n  T_max: 2\n")
    with pytest.raises(UserError, match=r"learning-rate schedule planned for its own trainer\.max_epochs"):
        expand_resume([f"resume={run}", "trainer.max_epochs=4"])
    assert expand_resume([f"resume={run}"])[-1].startswith("ckpt_path=")  # plain resume still works


@pytest.mark.parametrize(
    ("every_s", "val_every", "seen"),
    [(0.0, 1, [None, 0, 1, 2, 3]), (1e9, 1, [None, 0, 0, 0, 0]), (1e9, 2, [None, 0, 0, 0, 0])],
)  # validating every second epoch must not bypass the throttle
def test_last_checkpoint_is_throttled_but_has_the_first_and_last_epoch(
    tmp_path: Path, every_s, val_every, seen
) -> None:
    import lightning as L

    from lossdiag.callbacks.last_checkpoint import LastCheckpoint
    from tests.test_drop_in import MLP, QUIET, small_loaders

    last = tmp_path / "last.ckpt"
    epochs: list[int | None] = []

    class Probe(L.Callback):  # what last.ckpt holds when each epoch starts
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            epochs.append(torch.load(last, weights_only=False)["epoch"] if last.is_file() else None)

    trainer = L.Trainer(
        max_epochs=5, callbacks=[Probe(), LastCheckpoint(str(tmp_path), every_s=every_s)], logger=False,
        check_val_every_n_epoch=val_every, **QUIET,
    )  # fmt: skip
    trainer.fit(MLP(), *small_loaders(64, 32))
    assert epochs == seen
    assert torch.load(last, weights_only=False)["epoch"] == 4  # the last epoch is always saved


@pytest.mark.parametrize(("mode", "saved", "score"), [("max", [0, 1, 4], 0.9), ("min", [0], 0.5)])
def test_best_checkpoint_reads_the_module_epoch_values(tmp_path: Path, mode, saved, score) -> None:
    import lightning as L

    from lossdiag.callbacks.best_checkpoint import BestCheckpoint
    from tests.test_drop_in import MLP, QUIET, small_loaders

    accs = [0.5, 0.7, 0.6, 0.7, 0.9]  # a tie (epoch 3) is not an improvement
    best = tmp_path / "best.ckpt"
    seen: list[int] = []

    class Module(MLP):  # no self.log: the value is only in epoch_values, as LossDiagModule keeps it
        epoch_values: dict[str, float] = {}

        def on_validation_epoch_end(self) -> None:
            if not self.trainer.sanity_checking:
                self.epoch_values = {"val/acc": accs[self.current_epoch]}

    class Probe(L.Callback):  # which epoch best.ckpt holds when each epoch starts
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if best.is_file():
                seen.append(torch.load(best, weights_only=False)["epoch"])

    callback = BestCheckpoint(str(tmp_path), mode=mode)
    trainer = L.Trainer(
        max_epochs=len(accs), callbacks=[Probe(), callback], logger=False,
        **QUIET,
    )  # fmt: skip
    trainer.fit(Module(), *small_loaders(64, 32))
    seen.append(torch.load(best, weights_only=False)["epoch"])
    assert sorted(set(seen)) == saved and seen[-1] == saved[-1]
    assert callback.best_model_score == score and callback.best_model_path == str(best)
    assert trainer.checkpoint_callback is callback
    restored = BestCheckpoint(str(tmp_path), mode=mode)
    restored.load_state_dict(torch.load(best, weights_only=False)["callbacks"][callback.state_key])
    assert restored.best_model_score == score  # a resumed run compares against the best so far


def test_best_checkpoint_monitor_typo_is_one_line(tmp_path: Path) -> None:
    import lightning as L

    from lossdiag.callbacks.best_checkpoint import BestCheckpoint
    from lossdiag.errors import UserError
    from tests.test_drop_in import MLP, QUIET, small_loaders

    trainer = L.Trainer(
        max_epochs=1, callbacks=[BestCheckpoint(str(tmp_path), monitor="val/accc")], logger=False,
        **QUIET,
    )  # fmt: skip
    with pytest.raises(UserError, match=r"callbacks.checkpoint.monitor=val/accc is not a value .*val_loss"):
        trainer.fit(MLP(), *small_loaders(64, 32))
