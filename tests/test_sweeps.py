"""Sweeps end to end: real ``python -m src.train -m ...`` multiruns (basic, joblib, submitit_local,
Optuna), job folders named by overrides, failure isolation, and ``src.report`` on the results."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from lossdiag.app.sweep_report import build_report, load_runs
from lossdiag.report import main as report_main
from lossdiag.rundir.metrics_csv import read_history
from lossdiag.rundir.status import read_summary
from tests.conftest import CONF_DIR, run_module

# tiny jobs: 40 training samples, 2 epochs, one torch thread, no callbacks (the TensorBoard and CSV
# loggers still write everything the report and TensorBoard read); every job shares them
TINY = ("debug=fast", "trainer.max_epochs=2", "data.train_size=40", "threads=1", "callbacks=none")


def multirun(sweep_dir: Path, *overrides: str):
    return run_module("src.train", "-m", *overrides, *TINY, f"hydra.sweep.dir={sweep_dir}")


def job_dir(sweep_dir: Path, **params: str) -> Path:
    """A job's folder: its values of the keys the sweep varies (``params``), ``key=value`` sorted by key and
    joined by commas; what every job shares (:data:`TINY`) is left out."""
    return sweep_dir / ",".join(sorted(f"{k}={v}" for k, v in params.items()))


# -- job names ------------------------------------------------------------------------------------
def test_job_names_are_what_differs_between_jobs(tmp_path: Path) -> None:
    from lossdiag.app.resolvers import sweep_job_dirname, varying_keys, write_varying_keys

    # experiment=remedies sweeps remedy and seed in hydra.sweeper.params; seed=0 on the command line fixes seed
    params = ["remedy=cross_entropy,bounded,focal", "seed=0,1,2"]
    given = ["data=folder", "data.root=/data/pets", "experiment=remedies", "seed=0", "launcher=joblib"]
    assert varying_keys([*params, *given], exclude=["launcher"]) == ["remedy"]
    assert varying_keys(["launcher=joblib,submitit_local", "seed=0"], exclude=["launcher"]) == []
    optuna = ["optimizer.lr=tag(log, interval(0.003, 0.3))", "data.batch_size=choice(16, 32, 64)", "seed=0,0"]
    assert varying_keys([*optuna, "loss.k=2", "+extra=a,b"]) == ["+extra", "data.batch_size", "optimizer.lr"]
    write_varying_keys(tmp_path, ["remedy"])
    job = ["data=folder", "data.root=/data/pets", "experiment=remedies", "remedy=bounded", "seed=0"]
    hydra_name = "data.root=_data_pets,data=folder,experiment=remedies,remedy=bounded,seed=0"
    assert sweep_job_dirname(str(tmp_path), job, hydra_name) == "remedy=bounded"
    assert sweep_job_dirname(str(tmp_path / "elsewhere"), job, hydra_name) == hydra_name  # no keys recorded
    write_varying_keys(tmp_path, [])
    assert sweep_job_dirname(str(tmp_path), job, hydra_name) == hydra_name  # one job: nothing differs
    write_varying_keys(tmp_path, ["data.root", "remedy"])
    assert sweep_job_dirname(str(tmp_path), job, hydra_name) == "data.root=_data_pets,remedy=bounded"


# -- the basic launcher, with failing jobs ------------------------------------------------------
@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """2 losses x 2 seeds x 2 learning rates, where lr=-1 fails validation: 4 good and 4 failed jobs."""
    sweep = tmp_path_factory.mktemp("basic") / "sweep"
    proc = multirun(sweep, "loss=standard,bounded", "seed=0,1", "optimizer.lr=0.1,-1")
    return sweep, proc


GOOD = [
    {"loss": loss, "seed": seed, "optimizer.lr": "0.1"} for loss in ("standard", "bounded") for seed in "01"
]
BAD = [{**params, "optimizer.lr": "-1"} for params in GOOD]


@pytest.mark.slow
def test_failing_jobs_do_not_lose_the_others(basic_sweep) -> None:
    sweep, proc = basic_sweep
    # Hydra ends a sweep with a failed job with exit code 1, after running every job
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "optimizer.lr=-1 must be > 0" in proc.stderr
    for params in GOOD:
        run = job_dir(sweep, **params)
        assert read_summary(run)["status"] == "complete", run
        assert len(read_history(run)["val/acc"]) == 2
    for params in BAD:
        run = job_dir(sweep, **params)
        summary = read_summary(run)
        assert summary["status"] == "failed"
        assert summary["error"] == "UserError: optimizer.lr=-1 must be > 0"
        assert "error: optimizer.lr=-1 must be > 0" in (run / "train.log").read_text()
    # the sweep still ends by naming its folder, how its jobs ended and the report command
    assert proc.stdout.rstrip().splitlines()[-2:] == [
        f"Sweep folder: {sweep} (4 complete, 4 failed)",
        f"Compare its runs: python -m src.report {sweep}  (TensorBoard: tensorboard --logdir {sweep})",
    ]


@pytest.mark.slow
def test_tensorboard_lists_runs_by_what_differs(basic_sweep) -> None:
    from tensorboard.backend.event_processing.io_wrapper import GetLogdirSubdirectories

    sweep, _ = basic_sweep
    runs = {Path(d).relative_to(sweep).as_posix() for d in GetLogdirSubdirectories(str(sweep))}
    # TensorBoard names each job's run by its folder: only the swept keys, never what every job shares
    assert runs == {f"loss={p['loss']},optimizer.lr=0.1,seed={p['seed']}" for p in GOOD}
    assert not [name for name in runs if any(shared in name for shared in TINY)]
    assert {p.name for p in sweep.iterdir() if p.is_dir()} == {job_dir(sweep, **p).name for p in GOOD + BAD}
    assert (sweep / "varying_keys.yaml").read_text() == "varying:\n- loss\n- optimizer.lr\n- seed\n"


@pytest.mark.slow
def test_report_groups_seeds_and_lists_failures(basic_sweep) -> None:
    sweep, _ = basic_sweep
    proc = run_module("src.report", str(sweep))
    assert proc.returncode == 0, proc.stderr
    assert "| loss | optimizer.lr | n | best_val_acc |" in proc.stdout  # the table is printed

    with (sweep / "report.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["loss"], r["optimizer.lr"], r["n"]) for r in rows] == [
        ("standard", "0.1", "2"),
        ("bounded", "0.1", "2"),
    ]
    for row in rows:
        # check the seed aggregation against what each run itself reported at its end (metrics.json)
        finals = [
            read_summary(job_dir(sweep, loss=row["loss"], seed=s, **{"optimizer.lr": "0.1"}))["metrics"]
            for s in "01"
        ]
        for column, metric in [
            ("best_val_acc", "val/acc_best"),
            ("last_val_acc", "val/acc"),
            ("last_val_loss", "val/loss"),
        ]:
            values = [f[metric] for f in finals]
            assert float(row[f"{column}_mean"]) == pytest.approx(np.mean(values), rel=1e-6)
            assert float(row[f"{column}_std"]) == pytest.approx(np.std(values, ddof=1), rel=1e-6, abs=1e-9)
        histories = [
            read_history(job_dir(sweep, loss=row["loss"], seed=s, **{"optimizer.lr": "0.1"})) for s in "01"
        ]
        assert float(row["min_val_loss_mean"]) == pytest.approx(
            np.mean([min(h["val/loss"]) for h in histories])
        )
        # callbacks=none: no diagnosis callback, so no val/ece: the report says n/a instead of failing
        # (its aggregation of val/ece is checked in test_experiments.py, on a sweep with the diagnosis)
        assert not any("val/ece" in h for h in histories)
        assert row["last_val_ece_mean"] == "" and "n/a" in (sweep / "report.md").read_text()

    markdown = (sweep / "report.md").read_text()
    assert markdown.count("failed (UserError: optimizer.lr=-1 must be > 0)") == 4
    assert "8 runs: 4 complete, 4 failed or incomplete" in markdown
    png = (sweep / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


@pytest.mark.slow
def test_report_flags_a_killed_run_and_keeps_outputs(basic_sweep, tmp_path: Path) -> None:
    import shutil

    sweep, _ = basic_sweep
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    killed = job_dir(copy, **GOOD[0])
    (killed / "metrics.json").unlink()  # a job killed mid-training never writes its final summary
    groups, runs, _ = build_report(copy)
    assert [len(g.runs) for g in groups] == [1, 2]
    (flagged,) = [r for r in runs if r.path == killed]
    assert flagged.status == "incomplete" and "no metrics.json" in flagged.reason
    assert (killed / "csv" / "metrics.csv").is_file()  # the report only reads


# -- parallel and cluster launchers -----------------------------------------------------------
@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = multirun(sweep, "launcher=joblib", "hydra.launcher.n_jobs=2", "loss=standard,bounded")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    assert (
        f"Sweep folder: {sweep} (2 complete)\nCompare its runs: python -m src.report {sweep}" in proc.stdout
    )
    # `launcher=...` is not part of the folder names; the jobs ran in other processes than the sweep's
    dirs = [job_dir(sweep, loss=loss) for loss in ("standard", "bounded")]
    assert all(read_summary(d)["status"] == "complete" for d in dirs)
    pids = {p.name.rsplit(".", 2)[-2] for d in dirs for p in d.glob("events.out.tfevents.*")}
    assert len(pids) == 2
    groups, runs, _ = build_report(sweep)
    assert [g.params for g in groups] == [{"loss": "standard"}, {"loss": "bounded"}]
    assert all(r.status == "complete" for r in runs)


@pytest.mark.slow
def test_submitit_local_launcher(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = multirun(sweep, "launcher=submitit_local", "loss=bounded", "seed=0,1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # jobs in submitit's own processes name their folders by the swept key too
    for seed in "01":
        assert read_summary(job_dir(sweep, seed=seed))["status"] == "complete"
    assert list((sweep / ".submitit").rglob("*_result.pkl"))  # went through submitit's job files


def test_submitit_slurm_writes_the_sbatch_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No cluster here: stand-ins for ``srun``/``sbatch`` capture the job-array script submitit submits."""
    bin_dir, script = tmp_path / "bin", tmp_path / "submitted.sh"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sbatch").write_text(
        '#!/bin/sh\ncp "$1" "$SBATCH_CAPTURE"\necho "sbatch: test stand-in" >&2\nexit 1\n'
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SBATCH_CAPTURE", str(script))
    overrides = ["launcher=submitit_slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=1"]
    proc = multirun(tmp_path / "sweep", *overrides, "hydra.launcher.timeout_min=30", "loss=standard,bounded")
    assert proc.returncode == 1 and "sbatch: test stand-in" in proc.stderr
    lines = script.read_text().splitlines()
    for option in [
        "--array=0-1%2",
        "--partition=gpu",
        "--gpus-per-node=1",
        "--cpus-per-task=4",
        "--time=30",
        "--mem=8GB",
    ]:
        assert f"#SBATCH {option}" in lines
    assert any(line.startswith("srun ") and "-m submitit.core._submit" in line for line in lines)


def _hydra_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_launcher_configs_compose() -> None:
    joblib = _hydra_cfg("launcher=joblib")
    assert joblib.hydra.launcher._target_.endswith("JoblibLauncher")
    assert joblib.threads == 1 and joblib.hydra.job.env_set.OMP_NUM_THREADS == "1"
    slurm = _hydra_cfg(
        "launcher=submitit_slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=1"
    )
    launcher = slurm.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 1, 60)
    assert launcher.cpus_per_task >= 1 and slurm.trainer.accelerator == "auto"


# -- Optuna -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_optuna_search_three_trials(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    # widen loss.k below 0 on the command line (it replaces the config's range) so some trials fail
    search = ["hparams_search=optuna", "hydra.sweeper.n_trials=3", "loss.k=interval(-10.0, 3.0)"]
    proc = run_module("src.train", *search, *TINY, f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = load_runs(sweep)
    assert len(runs) == 3
    searched = {"optimizer.lr", "data.batch_size", "optimizer.weight_decay", "loss.k"}
    assert all(searched <= set(r.params) for r in runs)
    assert len({r.params["optimizer.lr"] for r in runs}) == 3
    # a trial with k <= 0 fails validation; it is recorded and the search goes on to the next trial
    statuses = [r.status for r in runs]
    assert statuses == ["failed" if float(r.params["loss.k"]) <= 0 else "complete" for r in runs]
    assert statuses[0] == "complete" and statuses[1] == "failed"
    # loss.k is searched where it shapes training: the trials use the bounded loss
    assert all("name: bounded" in (r.path / ".hydra" / "config.yaml").read_text() for r in runs)
    # each trial's folder is named by the searched values alone (sorted by key), not by what every trial shares
    for run in runs:
        assert run.path.name == ",".join(f"{key}={run.params[key]}" for key in sorted(searched)), run.path.name
    # the sweeper maximised the metric each trial returned: val/acc_best from the run's own summary
    results = (sweep / "optimization_results.yaml").read_text()
    best = max(read_summary(r.path)["metrics"]["val/acc_best"] for r in runs if r.status == "complete")
    assert f"best_value: {best}" in results
    # seeded TPE: the first trial's parameters are the same every time
    first = json.dumps(runs[0].params, sort_keys=True)
    assert '"data.batch_size": "64"' in first and '"optimizer.lr": "0.007247031607588867"' in first


# -- errors -----------------------------------------------------------------------------------
def test_report_rejects_a_folder_without_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "holds no runs" in err and "\n" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    with pytest.raises(SystemExit):
        report_main([str(tmp_path / "missing")])
    assert "is not a folder" in capsys.readouterr().err
