"""``notebooks/loss_analysis.ipynb``: stored without outputs, and runs headless, end to end, against a
tiny run trained inside the test (nbclient, python3 kernel, cwd at the repository root)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
from omegaconf import OmegaConf

from lossdiag.app.notebook import CONFIG_FILE, RUN_DIR_ENV, cross_entropy_check, run_datamodule
from lossdiag.app.pipeline import train
from lossdiag.diagnosis.samples import load_samples
from lossdiag.rundir.metrics_csv import read_history
from tests.conftest import ROOT

NOTEBOOK = ROOT / "notebooks" / "loss_analysis.ipynb"
# the steps of outlier-loss-analysis.txt, in its order
STEPS = [
    "Loss and accuracy curves",
    "Classification reports: initial, best-accuracy, lowest-loss and last model",
    "Is the loss computed correctly?",
    "Distribution of per-sample losses",
    "The outliers",
    "correct vs wrong predictions",
    "Calibration",
    "A bounded loss",
]


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_notebook_is_stored_without_outputs_parameterised_at_the_top_and_in_the_seed_order() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = _code_cells(nb)
    assert all(c.outputs == [] and c.execution_count is None for c in code), (
        "strip the outputs before committing"
    )
    assert code[0].source.strip().startswith("RUN_DIR = None")
    assert "parameters" in code[0].metadata.get("tags", [])
    # the analysis lives in src/, the notebook only calls it
    assert not any(re.search(r"^\s*(def|class) ", c.source, re.MULTILINE) for c in code)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    positions = [markdown.find(step) for step in STEPS]
    assert -1 not in positions and positions == sorted(positions)


@pytest.mark.slow
def test_notebook_runs_headless_against_a_tiny_run(make_cfg, tmp_path: Path, monkeypatch) -> None:
    from nbclient import NotebookClient

    # checkpoint "best_val_acc" = lowest val accuracy here, so it and last are different epochs (and last.ckpt
    # must still hold the last one)
    cfg = make_cfg("trainer.max_epochs=3", "callbacks.checkpoint.mode=min")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    (run / CONFIG_FILE).parent.mkdir()
    OmegaConf.save(cfg, run / CONFIG_FILE)  # what Hydra saves for `python -m src.train`

    # the project functions the notebook's cross-entropy check and outlier images rely on
    samples = load_samples(run)
    dm = run_datamodule(run)
    np.testing.assert_array_equal(dm.val.y.numpy()[samples.val.index], samples.val.target)
    checks = cross_entropy_check(run, samples, read_history(run), dm)
    assert [c["model"] for c in checks] == ["initial", "best_val_acc", "min_val_loss", "last"]
    assert [c["epoch"] for c in checks][::3] == [-1, 2]
    for c in checks:
        assert c["checkpoint_epoch"] == c["epoch"]
        assert c["manual"] == pytest.approx(c["recorded"], rel=1e-5)
        assert c["from_p_true"] == pytest.approx(c["recorded"], rel=1e-5)
        assert c["probs"].shape == (len(samples.val.target), len(samples.classes))
        if c["epoch"] >= 0:
            assert c["logged"] == pytest.approx(c["recorded"], rel=1e-5)

    monkeypatch.setenv(RUN_DIR_ENV, str(run))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()

    outputs = [o for c in _code_cells(nb) for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert f"run folder: {run}" in text
    assert "the loss is computed correctly" in text
    assert "## best_val_acc model (epoch" in markdown and "**Verdict: " in markdown
    # the notebook's conclusion is the run's verdict, in the same sentence as diagnosis.md and the console
    first = (run / "diagnosis.md").read_text().splitlines()[2]
    assert first.startswith("**Verdict: ") and first.replace("**", "") in text
    # curves, histograms, worst-sample images, their loss history, decomposition, 3 reliability
    # diagrams (one per evaluated model), calibration curves, bounded vs standard, the data map of the training samples
    assert len(images) == 8 + len(samples.models)
    # the possibly-mislabeled step: the run's suspects.csv, its flagged counts and its first rows
    assert "flagged: " in text and "| rank | split | index | file | given | model says |" in markdown
