"""Does ``suspects.csv`` find the images whose labels are wrong? One training, ``suspects.folds=4``, cleanlab alone.

    python -m benchmarks.label_noise --seeds 0 1 2     # 1-2 h on 2 shared cores; benchmarks/results/label_noise.{json,md}
    python -m benchmarks.label_noise --kinds colours --seeds 0 --epochs 5 --folds 2 --out /tmp/smoke   # a smoke run

For every kind of data and seed (``lossdiag.data.synthetic``: ``colours``, 600 32x32 images a small CNN learns in one
epoch; ``stripes``, 600 it learns slowly, ~0.75 val accuracy after 40 epochs; ``digits``, sklearn's 1,797 8x8
digits written as a folder) a folder with ``--noise`` (8%) of its labels moved before the split, so both splits hold
errors. One ``python -m src.train`` run (in process: ``lossdiag.app.pipeline.train``) of the default configuration
with ``data=folder suspects.folds=4`` trains once and then 4 folds, and from what it wrote:

- **one training**: the ranking ``suspects.csv`` holds without ``suspects.folds`` (``rank_run`` on its ``samples.npz``
  without the out-of-fold probabilities: the same run, the same code) and its flags;
- **suspects.folds=4**: ``suspects.csv`` as written (dynamics + cleanlab on the out-of-fold probabilities) and its flags;
- **cleanlab alone**: ``cleanlab.rank.get_label_quality_scores`` (self-confidence) over every image on the same
  out-of-fold probabilities (training images) and the run's best model's probabilities (val images, held out),
  and ``cleanlab.filter.find_label_issues`` on them for its flags.

Scores against the moved images: precision@k and recall@k over all images with k = the number moved (equal when
the ranking covers every image), P@k within each split, and the flags' count, precision and recall; the trainings
and wall seconds each needs. Two more checks per kind (first seed): an untrained run (``optimizer.lr=1e-8``, 10 epochs) must
flag nothing, and ``src.evaluate`` of the run's ``best_val_acc.ckpt`` on a *clean* folder of the same kind (another seed)
must flag at most 5% of it.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.suspects_prototype import make_folder

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results"
KINDS = ("colours", "stripes", "digits")
METHODS = ("one training", "suspects.folds", "cleanlab alone")


def data_overrides(kind: str, root: Path) -> list[str]:
    extra = ["data.channels=1", "data.image_size=8"] if kind == "digits" else []
    return ["data=folder", f"data.root={root}", *extra]


def compose(overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    from lossdiag.app.resolvers import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.callbacks.pop("progress_bar", None)
    return cfg


def train(overrides: list[str], out: Path) -> tuple[Any, float]:
    """One in-process ``src.train`` run into ``out``: its config and wall seconds."""
    from lossdiag.app.pipeline import train as pipeline_train

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    from omegaconf import OmegaConf

    from lossdiag.rundir.paths import CONFIG_FILE

    cfg = compose([*overrides, f"paths.output_dir={out}"])
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / CONFIG_FILE)  # as Hydra saves it: src.evaluate reads the run's data from it
    start = time.perf_counter()
    pipeline_train(cfg)
    return cfg, time.perf_counter() - start


def at_k(order: list[str], moved: set[str]) -> float:
    """precision@k (= recall@k) of a ranked list of paths, k = how many of them are moved."""
    k = sum(p in moved for p in order)
    return sum(p in moved for p in order[:k]) / k if k else float("nan")


def flag_scores(flagged: list[str], moved: set[str], n: int) -> dict[str, float]:
    hits = sum(p in moved for p in flagged)
    return {
        "flagged": len(flagged),
        "flagged_share": len(flagged) / n,
        "flag_precision": hits / len(flagged) if flagged else float("nan"),
        "flag_recall": hits / len(moved) if moved else float("nan"),
    }


def ranking_scores(rows: list[dict[str, Any]], moved: set[str]) -> dict[str, float]:
    """P@k over all rows and within each split, and the flags, of rows ``{path, split, flagged}`` in rank order."""
    out = {"p_at_k": at_k([r["path"] for r in rows], moved)}
    for split in ("train", "val"):
        out[f"{split}_p_at_k"] = at_k([r["path"] for r in rows if r["split"] == split], moved)
    out.update(flag_scores([r["path"] for r in rows if r["flagged"]], moved, len(rows)))
    return out


def one_training_rows(run: Path) -> list[dict[str, Any]]:
    """The run's ranking without the out-of-fold probabilities: what one training's ``suspects.csv`` holds."""
    from lossdiag.diagnosis.judge.suspects import rank_run, suspect_rows
    from lossdiag.diagnosis.judge.verdict import judge
    from lossdiag.diagnosis.samples import load_samples

    samples = load_samples(run)
    samples.train_oof, samples.oof_folds, samples.train_folds_aum, samples.val_folds_aum = None, 0, None, None
    verdict = judge(samples)
    ranked = rank_run(samples, None, verdict.kind, verdict.stats.collapsed_classes)
    assert ranked is not None
    return [
        {"path": r.path, "split": r.split, "flagged": r.flagged}
        for r in suspect_rows(samples, ranked.suspects)
    ]


def csv_rows(run: Path) -> list[dict[str, Any]]:
    with (run / "suspects.csv").open(newline="") as handle:
        return [
            {"path": r["path"], "split": r["split"], "flagged": r["flagged"] == "1"}
            for r in csv.DictReader(handle)
        ]


def cleanlab_rows(run: Path, cfg: Any) -> list[dict[str, Any]]:
    """cleanlab alone over every image: out-of-fold probabilities (train), the best model's (val)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    from lossdiag.app.notebook import load_net, run_datamodule, val_probabilities
    from lossdiag.diagnosis.samples import load_samples

    samples = load_samples(run)
    assert samples.train is not None and samples.train_oof is not None
    dm = run_datamodule(run, cfg)
    net, _ = load_net(run, "best_val_acc", dm, cfg)
    probs = np.concatenate([samples.train_oof, val_probabilities(net, dm, samples.val.index)])
    given = np.concatenate([samples.train.target, samples.val.target])
    paths = [*samples.train.path, *samples.val.path]
    splits = ["train"] * len(samples.train.target) + ["val"] * len(samples.val.target)
    quality = get_label_quality_scores(given, probs, method="self_confidence")
    issues = set(np.flatnonzero(find_label_issues(given, probs, n_jobs=1)).tolist())
    order = np.argsort(quality, kind="stable")
    return [{"path": str(paths[i]), "split": splits[i], "flagged": int(i) in issues} for i in order]


def fold_seconds(run: Path) -> float:
    from lossdiag.rundir.paths import FOLDS_DIR

    total = 0.0
    for path in sorted((run / FOLDS_DIR).glob("fold_*.npz")):
        with np.load(path) as data:
            total += float(data["seconds"])
    return total


def measure(kind: str, seed: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Every method on one folder of ``kind``, and the untrained and clean-folder checks (``seed`` = first)."""
    made = make_folder(kind, work / "images", seed, args.noise, args.per_class)
    moved = {str(p) for p in made.moved}
    run = work / "run"
    common = [*data_overrides(kind, made.root), f"seed={seed}", f"trainer.max_epochs={args.epochs}"]
    cfg, seconds = train([*common, f"suspects.folds={args.folds}"], run)
    folds_s = fold_seconds(run)
    result: dict[str, Any] = {"kind": kind, "seed": seed, "images": len(made.files), "moved": len(moved)}
    result["one training"] = {
        "trainings": 1,
        "seconds": seconds - folds_s,
        **ranking_scores(one_training_rows(run), moved),
    }
    result["suspects.folds"] = {
        "trainings": 1 + args.folds,
        "seconds": seconds,
        **ranking_scores(csv_rows(run), moved),
    }
    result["cleanlab alone"] = {"trainings": 1 + args.folds, "seconds": seconds,
                                **ranking_scores(cleanlab_rows(run, cfg), moved)}  # fmt: skip
    if seed == args.seeds[0]:
        result["untrained"] = untrained_flags(kind, common, work)
        result["clean folder"] = clean_folder_flags(kind, seed, run, work, args.per_class)
    return result


def untrained_flags(kind: str, common: list[str], work: Path) -> dict[str, Any]:
    """A run that does not learn (``optimizer.lr=1e-8``, 10 epochs; the easy folder is learned even at 1e-6): its
    verdict, best val accuracy and how many images it flags."""
    run = work / "untrained"
    _, seconds = train([*common, "optimizer.lr=1e-8", "trainer.max_epochs=10"], run)
    rows = csv_rows(run)
    numbers = json.loads((run / "diagnosis.json").read_text())
    return {
        "verdict": numbers["verdict"],
        "acc_best": numbers["acc_best"],
        "flagged": sum(r["flagged"] for r in rows),
        "images": len(rows),
        "seconds": seconds,
    }


def clean_folder_flags(kind: str, seed: int, run: Path, work: Path, per_class: int) -> dict[str, Any] | None:
    """``src.evaluate`` of ``best_val_acc.ckpt`` on a clean folder of the same kind (another seed): the share it flags.
    ``None`` for the digits, one fixed set the run trained on most of."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from lossdiag.app.evaluate import evaluate_checkpoint

    if kind == "digits":
        return None
    clean = make_folder(kind, work / "clean", seed + 1000, 0.0, per_class)
    out = work / "evaluation"
    # `python -m src.evaluate ckpt_path=<best_val_acc.ckpt> data=folder data.root=<clean>`
    given = [f"ckpt_path={run / 'checkpoints' / 'best_val_acc.ckpt'}", "data=folder", f"data.root={clean.root}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("evaluate", overrides=[*given, f"paths.output_dir={out}"])
    evaluate_checkpoint(cfg, overrides=given)
    rows = csv_rows(out)
    flagged = sum(r["flagged"] for r in rows)
    return {"images": len(rows), "flagged": flagged, "share": flagged / len(rows)}


def _mean(results: list[dict[str, Any]], method: str, key: str) -> str:
    values = [r[method][key] for r in results if r[method].get(key) == r[method].get(key)]  # NaN out
    if not values:
        return "-"
    text = f"{statistics.mean(values):.2f}"
    return text + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "# Label errors: one training, suspects.folds, cleanlab alone",
        "",
        f"{args.noise:.0%} of the labels moved; default configuration, {args.epochs} epochs, `suspects.folds={args.folds}`; "
        f"seeds {', '.join(map(str, args.seeds))} (mean ± std over seeds). P@k = R@k over all images (k = moved "
        "images); train/val P@k within each split; flags: suspects.csv's `flagged` (cleanlab alone: "
        "find_label_issues). Seconds: wall time of the training(s) on a shared 2-core machine (noisy).",
        "",
        "| data | method | trainings | seconds | P@k = R@k | train P@k | val P@k | flagged | flag precision | flag recall |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in args.kinds:
        group = [r for r in results if r["kind"] == kind]
        for method in METHODS:
            cells = [_mean(group, method, key) for key in ("trainings", "seconds", "p_at_k", "train_p_at_k",
                                                            "val_p_at_k", "flagged", "flag_precision", "flag_recall")]  # fmt: skip
            lines.append(f"| {kind} | {method} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed, P@k (one training / suspects.folds / cleanlab alone):", ""]
    for r in results:
        lines.append(
            f"- {r['kind']} seed {r['seed']}: " + " / ".join(f"{r[m]['p_at_k']:.2f}" for m in METHODS)
        )
    lines += ["", "| data | untrained run (lr 1e-8, 10 epochs): verdict, best val acc, flagged | src.evaluate of best_val_acc.ckpt on a clean folder: flagged |",
              "|---|---|---|"]  # fmt: skip
    for r in results:
        if "untrained" in r:
            u, c = r["untrained"], r["clean folder"]
            clean = (
                f"{c['flagged']} of {c['images']} ({c['share']:.1%})" if c else "- (no held-out clean digits)"
            )
            lines.append(
                f"| {r['kind']} | {u['verdict']}, {u['acc_best']:.2f}, {u['flagged']} of {u['images']} | {clean} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(prog="python -m benchmarks.label_noise", description=__doc__.split("\n")[0])
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--noise", type=float, default=0.08)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--per-class", type=int, default=200, help="images per class of the generated folders")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    results = []
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lossdiag-label-noise-") as tmp:
        for kind in args.kinds:
            for seed in args.seeds:
                results.append(measure(kind, seed, Path(tmp) / f"{kind}{seed}", args))
                print(json.dumps(results[-1]), flush=True)
                text = markdown(results, args)
                (args.out / "label_noise.md").write_text(text)
                (args.out / "label_noise.json").write_text(
                    json.dumps(
                        {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2
                    )
                    + "\n"
                )
    print(text)
    return text


if __name__ == "__main__":
    main()
