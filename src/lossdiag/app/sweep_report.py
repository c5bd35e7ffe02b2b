"""``python -m src.report <sweep folder>``: one comparison table for a whole sweep.

Reads every run of a sweep from the files the runs wrote (``.hydra/config.yaml``,
``.hydra/overrides.yaml``, ``csv/metrics.csv``, ``metrics.json``), groups complete runs by the swept
parameters other than the seed, and writes ``report.md``, ``report.csv`` and ``report.png`` into the
sweep folder (mean ± std over seeds; val loss / val accuracy curves per group). Failed and
incomplete runs are listed, never silently dropped. Each group's settings are listed as the config keys
that differ from the first group's (what ``remedy=focal`` changes). When one group is plain cross-entropy
(``remedy=cross_entropy``, or ``loss=standard``), the report recommends a remedy
(:func:`lossdiag.functional.remedies.recommend`).

The aggregation functions are pure (no files); :func:`build_report` does the I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lossdiag.app.resolvers import LAUNCH_KEYS
from lossdiag.app.resume import override_key
from lossdiag.errors import UserError
from lossdiag.functional.remedies import Recommendation, RemedyResult, recommend
from lossdiag.render.figures import png_bytes, render
from lossdiag.render.history_figures import CurveBand, sweep_figure
from lossdiag.render.remedies import recommendation_text
from lossdiag.render.tables import csv_text, markdown_table
from lossdiag.rundir.atomic import atomic_write_bytes, atomic_write_text
from lossdiag.rundir.metrics_csv import read_history
from lossdiag.rundir.paths import (
    CONFIG_FILE,
    HYDRA_FILE,
    METRICS_CSV,
    OVERRIDES_FILE,
    SWEEP_REPORT_CSV,
    SWEEP_REPORT_MD,
    SWEEP_REPORT_PNG,
)
from lossdiag.rundir.status import COMPLETE, FAILED, read_summary

SEED_KEYS = frozenset({"seed"})
# override keys that say where or how a run happened, not what was trained
# not parameters of what a job computes: how it was launched, where it wrote, what it resumed from
IGNORED_KEYS = LAUNCH_KEYS | {"paths.output_dir", "ckpt_path"}
REPORT_FILES = (str(SWEEP_REPORT_MD), str(SWEEP_REPORT_CSV), str(SWEEP_REPORT_PNG))
# config keys that never describe what a group trained (where it wrote, its seed, Hydra's own settings)
NOT_SETTINGS = ("hydra", "paths", "seed", "data.seed", "ckpt_path", "threads")
# groups that are the plain cross-entropy reference of a remedies recommendation (key, value)
REFERENCE_PARAMS = frozenset({("remedy", "cross_entropy"), ("loss", "standard")})

# column name -> what it measures (also the markdown legend)
METRICS: dict[str, str] = {
    "best_val_acc": "highest val/acc over the epochs",
    "last_val_acc": "val/acc at the last epoch",
    "min_val_loss": "lowest val cross-entropy (val/loss)",
    "last_val_loss": "val cross-entropy at the last epoch",
    "rise_ratio": "last val cross-entropy / lowest val cross-entropy of the run (1.00 = no rise)",
    "last_val_loss_bounded": "val bounded cross-entropy (val/loss_bounded) at the last epoch",
    "last_val_ece": "val expected calibration error (val/ece) at the last epoch; n/a if not logged",
    "epochs_to_best": "first epoch (1-based) reaching the best val/acc",
    "epoch_min_val_loss": "epoch (1-based) of the lowest val cross-entropy",
}


@dataclass
class Run:
    """One job folder of a sweep, as read back from its files."""

    path: Path
    params: dict[str, str]
    seed: str | None
    status: str  # complete, failed, incomplete
    reason: str = ""
    history: dict[str, list[float]] = field(default_factory=dict)
    max_epochs: int | None = None
    config: dict[str, str] = field(default_factory=dict)  # flattened .hydra/config.yaml (unresolved)

    @property
    def epochs(self) -> int:
        return len(self.history.get("epoch", []))


@dataclass
class Group:
    """Complete runs sharing the same non-seed parameters."""

    params: dict[str, str]
    runs: list[Run]
    mean: dict[str, float]
    std: dict[str, float]

    @property
    def label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.params.items()) or "all runs"


# -- pure functions ---------------------------------------------------------------------------
def parse_overrides(overrides: Sequence[str]) -> dict[str, str]:
    """``["loss=bounded", "+tag=x", "~callbacks.progress_bar"]`` -> ``{"loss": "bounded", ...}``."""
    parsed: dict[str, str] = {}
    for item in overrides:
        key, value = override_key(str(item)), str(item).partition("=")[2]
        if key.startswith("hydra.") or key in IGNORED_KEYS:
            continue
        parsed[key] = value
    return parsed


def swept_keys(param_sets: Sequence[dict[str, str]]) -> list[str]:
    """Keys whose value differs between runs (a key missing from some runs counts as differing),
    in first-seen order. Overrides shared by every run (e.g. ``debug=fast``) are not swept."""
    keys: list[str] = []
    for params in param_sets:
        keys.extend(k for k in params if k not in keys)
    return [k for k in keys if len({params.get(k) for params in param_sets}) > 1]


def _column(history: dict[str, list[float]], key: str) -> np.ndarray:
    return np.asarray(history.get(key, []), dtype=float)


def _last(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else math.nan


def run_metrics(history: dict[str, list[float]]) -> dict[str, float]:
    """The report's per-run numbers from a metric history (``nan`` where a metric was not logged)."""
    acc = _column(history, "val/acc")
    loss = _column(history, "val/loss")
    out = dict.fromkeys(METRICS, math.nan)
    if np.isfinite(acc).any():
        best = int(np.nanargmax(acc))
        out.update(best_val_acc=float(acc[best]), last_val_acc=_last(acc), epochs_to_best=float(best + 1))
    if np.isfinite(loss).any():
        lowest = int(np.nanargmin(loss))
        out.update(
            min_val_loss=float(loss[lowest]), last_val_loss=_last(loss), epoch_min_val_loss=float(lowest + 1)
        )
        if loss[lowest] > 0:
            out["rise_ratio"] = out["last_val_loss"] / float(loss[lowest])
    out["last_val_loss_bounded"] = _last(_column(history, "val/loss_bounded"))
    out["last_val_ece"] = _last(_column(history, "val/ece"))
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of the finite values; std is ``nan`` below 2 values."""
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if finite.size == 0:
        return math.nan, math.nan
    return float(finite.mean()), float(finite.std(ddof=1)) if finite.size > 1 else math.nan


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Group complete runs by their swept non-seed parameters (in sweep order) and aggregate over seeds."""
    complete = [r for r in runs if r.status == COMPLETE]
    keys = [k for k in swept_keys([r.params for r in runs]) if k not in SEED_KEYS]
    by_params: dict[tuple[str | None, ...], list[Run]] = {}
    for run in complete:
        by_params.setdefault(tuple(run.params.get(k) for k in keys), []).append(run)
    groups = []
    for values, members in by_params.items():
        per_run = [run_metrics(r.history) for r in members]
        stats = {m: mean_std([p[m] for p in per_run]) for m in METRICS}
        groups.append(
            Group(
                params={k: v if v is not None else "-" for k, v in zip(keys, values, strict=True)},
                runs=members,
                mean={m: s[0] for m, s in stats.items()},
                std={m: s[1] for m, s in stats.items()},
            )
        )
    return groups


def flatten(node: object, prefix: str = "") -> dict[str, str]:
    """``{"loss": {"name": "focal"}}`` -> ``{"loss.name": "focal"}``; leaves as strings (lists in YAML form)."""
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: str(node)}


def _is_setting(key: str) -> bool:
    return not any(key == k or key.startswith(f"{k}.") for k in NOT_SETTINGS)


def config_changes(config: dict[str, str], reference: dict[str, str]) -> str:
    """The settings of ``config`` that differ from ``reference``'s: ``key=value``, ``~key`` if it lacks one."""
    keys = [k for k in config if _is_setting(k)] + [
        k for k in reference if _is_setting(k) and k not in config
    ]
    parts = []
    for key in keys:
        if key not in config:
            parts.append(f"~{key}")
        elif config[key] != reference.get(key):
            parts.append(f"{key}={config[key]}")
    return ", ".join(parts)


def group_changes(groups: Sequence[Group]) -> list[str]:
    """Per group, :func:`config_changes` of its first run against the first group's first run."""
    if not groups:
        return []
    reference = groups[0].runs[0].config
    return [config_changes(g.runs[0].config, reference) for g in groups]


def remedy_results(groups: Sequence[Group]) -> list[RemedyResult]:
    """The groups as :class:`RemedyResult` rows (label = the group's overrides)."""
    return [
        RemedyResult(
            label=g.label,
            n=len(g.runs),
            last_acc=g.mean["last_val_acc"],
            last_acc_std=g.std["last_val_acc"],
            last_ce=g.mean["last_val_loss"],
            last_ce_std=g.std["last_val_loss"],
            rise_ratio=g.mean["rise_ratio"],
            best_acc=g.mean["best_val_acc"],
            min_ce=g.mean["min_val_loss"],
            last_ece=g.mean["last_val_ece"],
        )
        for g in groups
    ]


def reference_group(groups: Sequence[Group]) -> Group | None:
    """The one group that is plain cross-entropy (all its swept values in :data:`REFERENCE_PARAMS`), if any."""
    found = [g for g in groups if g.params and all(item in REFERENCE_PARAMS for item in g.params.items())]
    return found[0] if len(found) == 1 else None


def recommendation(groups: Sequence[Group]) -> Recommendation | None:
    """The remedies recommendation, or ``None`` when no group is the cross-entropy reference."""
    reference = reference_group(groups)
    return None if reference is None else recommend(remedy_results(groups), reference.label)


def mean_curve(
    histories: Sequence[dict[str, list[float]]], key: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(epochs, mean, std)`` of ``key`` over runs, per epoch, up to the shortest run."""
    columns = [_column(h, key) for h in histories]
    length = min((len(c) for c in columns), default=0)
    if length == 0:
        empty = np.zeros(0)
        return empty, empty, empty
    stacked = np.stack([c[:length] for c in columns])
    std = stacked.std(axis=0, ddof=1) if len(columns) > 1 else np.zeros(length)
    return np.arange(1, length + 1), stacked.mean(axis=0), std


def _fmt(value: float, digits: int = 4) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"


def _cell(mean: float, std: float, metric: str) -> str:
    digits = 1 if metric.startswith("epoch") else 4
    if not math.isfinite(mean):
        return "n/a"
    return _fmt(mean, digits) if not math.isfinite(std) else f"{_fmt(mean, digits)} ± {_fmt(std, digits)}"


def groups_table(groups: Sequence[Group]) -> str:
    """Groups as a markdown table: the swept parameters, ``n`` (seeds), then mean ± std per metric."""
    keys = list(groups[0].params) if groups else []
    rows = [
        [*g.params.values(), str(len(g.runs)), *(_cell(g.mean[m], g.std[m], m) for m in METRICS)]
        for g in groups
    ]
    return markdown_table([*keys, "n", *METRICS], rows).rstrip("\n")


def problem_lines(runs: Sequence[Run], sweep_dir: Path) -> list[str]:
    """One line per failed or incomplete run: folder, status and why."""
    return [
        f"- `{r.path.relative_to(sweep_dir)}`: {r.status}{' (' + r.reason + ')' if r.reason else ''}"
        for r in runs
        if r.status != COMPLETE
    ]


def markdown_report(groups: Sequence[Group], runs: Sequence[Run], sweep_dir: Path) -> str:
    complete = sum(r.status == COMPLETE for r in runs)
    parts = [
        f"# Sweep report: {sweep_dir}",
        "",
        f"{len(runs)} runs: {complete} complete, {len(runs) - complete} failed or incomplete. "
        "Complete runs are grouped by the swept parameters other than the seed; "
        "cells are mean ± std (ddof=1) over the group's `n` seeds.",
        "",
        groups_table(groups) if groups else "No complete runs.",
        "",
    ]
    rec = recommendation(groups)
    if rec is not None:
        parts += [recommendation_text(rec), ""]
    parts += [*(f"- `{name}`: {meaning}" for name, meaning in METRICS.items())]
    if len(groups) > 1:
        parts += [
            "",
            f"What each group sets, as config keys that differ from the first group (`{groups[0].label}`):",
            "",
        ]
        parts += [
            f"- `{g.label}`: {c or 'the same settings'}"
            for g, c in zip(groups, group_changes(groups), strict=True)
        ]
    problems = problem_lines(runs, sweep_dir)
    if problems:
        parts += ["", "## Failed or incomplete runs (not in the table)", "", *problems]
    parts += ["", "![val cross-entropy (log axis, and one panel per group) and val accuracy](report.png)", ""]
    return "\n".join(parts)


def csv_table(groups: Sequence[Group]) -> str:
    """One row per group: parameters, ``n``, ``<metric>_mean`` and ``<metric>_std`` (empty for n/a)."""
    keys = list(groups[0].params) if groups else []
    header = [*keys, "n", *(f"{m}_{s}" for m in METRICS for s in ("mean", "std")), "changes"]
    rows = []
    for g, changes in zip(groups, group_changes(groups), strict=True):
        stats = [g.mean[m] if s == "mean" else g.std[m] for m in METRICS for s in ("mean", "std")]
        cells = ("" if not math.isfinite(v) else repr(v) for v in stats)
        rows.append([*g.params.values(), len(g.runs), *cells, changes])
    return csv_text(header, rows)


def curve_bands(groups: Sequence[Group]) -> list[tuple[str, CurveBand, CurveBand]]:
    """Per group: its label with ``n``, and the mean ± std curves of val/loss and val/acc."""
    bands = []
    for group in groups:
        histories = [r.history for r in group.runs]
        loss, acc = (CurveBand(*mean_curve(histories, key)) for key in ("val/loss", "val/acc"))
        bands.append((f"{group.label} (n={len(group.runs)})", loss, acc))
    return bands


def plot_png(groups: Sequence[Group]) -> bytes:
    """``report.png``: :func:`lossdiag.render.figures.sweep_figure` of the groups' curves."""
    return png_bytes(render(sweep_figure(curve_bands(groups))))


# -- reading runs -----------------------------------------------------------------------------
def find_run_dirs(sweep_dir: Path) -> list[Path]:
    """Every folder under ``sweep_dir`` holding a ``.hydra/config.yaml`` (a Hydra job), sorted."""
    return sorted(p.parents[len(CONFIG_FILE.parts) - 1] for p in sweep_dir.rglob(str(CONFIG_FILE)))


def _job_num(run_dir: Path) -> int:
    from omegaconf import OmegaConf

    try:
        return int(OmegaConf.load(run_dir / HYDRA_FILE).hydra.job.num)
    except Exception:
        return 1 << 30


def load_run(run_dir: Path) -> Run:
    """Read one run; its status is ``failed`` (its summary says so), ``incomplete`` (no summary,
    still ``running``, no metrics CSV, or fewer epochs than ``trainer.max_epochs``) or ``complete``."""
    from omegaconf import OmegaConf

    config = OmegaConf.load(run_dir / CONFIG_FILE)
    overrides_file = run_dir / OVERRIDES_FILE
    overrides = OmegaConf.to_container(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
    params = parse_overrides(overrides)  # type: ignore[arg-type]
    seed = str(OmegaConf.select(config, "seed", default=None))
    max_epochs = OmegaConf.select(config, "trainer.max_epochs", default=None)
    settings = flatten(OmegaConf.to_container(config, resolve=False))
    run = Run(
        path=run_dir, params=params, seed=seed, status="incomplete", max_epochs=max_epochs, config=settings
    )
    summary = read_summary(run_dir)
    if (run_dir / METRICS_CSV).is_file():
        run.history = read_history(run_dir)
    if summary is not None and summary.get("status") == FAILED:
        run.status, run.reason = FAILED, str(summary.get("error", "no error message"))
    elif summary is None:
        run.reason = f"no metrics.json: killed or never started; {run.epochs} epochs logged"
    elif summary.get("status") != COMPLETE:
        run.reason = f"metrics.json says {summary.get('status')!r}: killed or still running; {run.epochs} epochs logged"
    elif max_epochs is not None and run.epochs < int(max_epochs):
        run.reason = f"{run.epochs} of {max_epochs} epochs logged"
    else:
        run.status = COMPLETE
    return run


def load_runs(sweep_dir: Path) -> list[Run]:
    """All runs of a sweep in job order (``hydra.job.num``), then by folder name."""
    return [load_run(d) for d in sorted(find_run_dirs(sweep_dir), key=lambda d: (_job_num(d), str(d)))]


def build_report(sweep_dir: str | Path) -> tuple[list[Group], list[Run], str]:
    """Read the sweep, write ``report.{md,csv,png}`` into it; return groups, runs and the markdown."""
    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        raise UserError(f"{sweep} is not a folder: pass a sweep folder, e.g. outputs/sweeps/<date>/<time>")
    runs = load_runs(sweep)
    if not runs:
        raise UserError(
            f"{sweep} holds no runs (no */.hydra/config.yaml): pass the folder of a `python -m src.train -m ...` sweep"
        )
    groups = group_runs(runs)
    markdown = markdown_report(groups, runs, sweep)
    atomic_write_text(sweep / SWEEP_REPORT_MD, markdown)
    atomic_write_text(sweep / SWEEP_REPORT_CSV, csv_table(groups))
    atomic_write_bytes(sweep / SWEEP_REPORT_PNG, plot_png(groups))
    return groups, runs, markdown
