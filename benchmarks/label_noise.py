"""Does ``suspects.csv`` find the images whose labels are wrong? Against cleanlab, on a folder with known errors.

    pip install -e ".[compare]"          # cleanlab, for the comparison only (never imported by src/)
    python -m benchmarks.label_noise     # ~5-10 min on 2 cores; writes benchmarks/results/label_noise.{json,md}

For every seed it generates a 32x32 RGB image folder (``lossdiag.data.synthetic``, 3 classes) and moves a known
fraction of the images into a wrong class folder, before the train/val split, so both splits hold errors.
Then, with the default configuration (``data=folder``, everything else as shipped):

- **lossdiag**: one ``lossdiag.app.pipeline.train`` run; its ``suspects.csv`` ranks every image (train by the
  area under the margin of the training steps, val by p(given label) under the best model).
- **cleanlab**: 4-fold cross-training of the same model and settings over all images (each fold's run
  trains on three quarters and predicts the held-out quarter with its last model), then
  ``cleanlab.filter.find_label_issues(labels, pred_probs, return_indices_ranked_by="self_confidence")`` on
  the out-of-fold probabilities; and, to rank every image, ``cleanlab.rank.get_label_quality_scores``.

Scores: precision@k and recall@k with k = the number of moved images (over all images, and per split for
lossdiag), and the wall time of the training(s) each method needs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results"


def _compose(overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    from lossdiag.app.resolvers import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.callbacks.pop("progress_bar", None)
    return cfg


def _train(overrides: list[str], out: Path) -> float:
    """One in-process training run writing into ``out``; its wall seconds."""
    import logging

    from lossdiag.app.pipeline import train

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    cfg = _compose([*overrides, f"paths.output_dir={out}"])
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train(cfg)
    return time.perf_counter() - start


def precision_recall_at_k(ranked: list[str], moved: set[str], k: int) -> tuple[float, float]:
    hits = sum(path in moved for path in ranked[:k])
    return hits / k if k else float("nan"), hits / len(moved) if moved else float("nan")


def run_lossdiag(root: Path, seed: int, work: Path, moved: set[str]) -> dict[str, Any]:
    run = work / "lossdiag"
    seconds = _train(["data=folder", f"data.root={root}", f"seed={seed}"], run)
    with (run / "suspects.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    k = len(moved)
    result: dict[str, Any] = {"trainings": 1, "train_s": seconds}
    result["p_at_k"], result["r_at_k"] = precision_recall_at_k([r["path"] for r in rows], moved, k)
    for split in ("train", "val"):
        part = [r["path"] for r in rows if r["split"] == split]
        k_split = sum(p in moved for p in part)
        result[f"{split}_k"] = k_split
        result[f"{split}_p_at_k"] = precision_recall_at_k(part, moved & set(part), k_split)[0]
    result["flagged"] = sum(r["flagged"] == "1" for r in rows)
    result["flagged_precision"] = (
        sum(r["flagged"] == "1" and r["path"] in moved for r in rows) / result["flagged"] if result["flagged"] else None
    )
    return result


def _fold_layout(root: Path, files: list[Path], given: np.ndarray, classes: list[str], held: np.ndarray,
                 dest: Path) -> None:  # fmt: skip
    """``dest/train/<class>/`` and ``dest/val/<class>/`` symlinks: the held-out fold is ``val``."""
    for split in ("train", "val"):
        for name in classes:
            (dest / split / name).mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(files):
        split = "val" if held[i] else "train"
        link = dest / split / classes[given[i]] / f"{i:05d}_{path.name}"
        os.symlink(path.resolve(), link)


def run_cleanlab(root: Path, seed: int, work: Path, moved: set[str], folds: int = 4) -> dict[str, Any]:
    import torch
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.model_selection import StratifiedKFold

    from lossdiag.app.notebook import load_net, run_datamodule
    from lossdiag.models.predict import predict_logits

    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = sorted(p for name in classes for p in (root / name).iterdir() if p.is_file())
    given = np.array([classes.index(p.parent.name) for p in files])
    probs = np.zeros((len(files), len(classes)))
    seconds = 0.0
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (_, held_idx) in enumerate(split.split(np.zeros(len(files)), given)):
        held = np.zeros(len(files), dtype=bool)
        held[held_idx] = True
        data = work / f"fold{fold}" / "data"
        _fold_layout(root, files, given, classes, held, data)
        run = work / f"fold{fold}" / "run"
        seconds += _train(["data=folder", f"data.root={data}", f"seed={seed}"], run)
        cfg = _compose(["data=folder", f"data.root={data}", f"seed={seed}"])
        dm = run_datamodule(run, cfg)
        net, _ = load_net(run, "last", dm, cfg)
        fold_probs = predict_logits(net, dm.val.inputs()).double().softmax(1).numpy()
        for row, path in zip(fold_probs, dm.val.paths, strict=True):
            probs[int(Path(path).name.split("_", 1)[0])] = row
        torch.set_num_threads(1)
    ranked_issues = find_label_issues(given, probs, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(given, probs, method="self_confidence")
    paths = [str(p) for p in files]
    k = len(moved)
    result: dict[str, Any] = {"trainings": folds, "train_s": seconds, "flagged": len(ranked_issues)}
    result["p_at_k"], result["r_at_k"] = precision_recall_at_k([paths[i] for i in ranked_issues], moved, k)
    result["ranked_p_at_k"], _ = precision_recall_at_k([paths[i] for i in np.argsort(quality, kind="stable")], moved, k)
    result["flagged_precision"] = (
        sum(paths[i] in moved for i in ranked_issues) / len(ranked_issues) if len(ranked_issues) else None
    )
    return result


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    def mean(method: str, key: str) -> str:
        values = [r[method][key] for r in results if r[method].get(key) is not None]
        if not values:
            return "-"
        m = statistics.mean(values)
        return f"{m:.2f}" + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")

    lines = [
        "# lossdiag suspects vs cleanlab",
        "",
        f"{args.images} generated 32x32 RGB images, {args.classes} classes, {args.noise:.0%} moved to a wrong class; "
        f"default configuration; seeds {', '.join(map(str, args.seeds))} (mean ± std over seeds).",
        "",
        "| method | trainings | train s | P@k | R@k | train P@k | val P@k | flagged | precision of flagged |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| lossdiag `suspects.csv` (one run) | 1 | {mean('lossdiag', 'train_s')} | {mean('lossdiag', 'p_at_k')} | "
        f"{mean('lossdiag', 'r_at_k')} | {mean('lossdiag', 'train_p_at_k')} | {mean('lossdiag', 'val_p_at_k')} | "
        f"{mean('lossdiag', 'flagged')} | {mean('lossdiag', 'flagged_precision')} |",
        f"| cleanlab `find_label_issues`, 4-fold | 4 | {mean('cleanlab', 'train_s')} | {mean('cleanlab', 'p_at_k')} | "
        f"{mean('cleanlab', 'r_at_k')} | - | - | {mean('cleanlab', 'flagged')} | {mean('cleanlab', 'flagged_precision')} |",
        f"| cleanlab label-quality ranking, 4-fold | 4 | {mean('cleanlab', 'train_s')} | "
        f"{mean('cleanlab', 'ranked_p_at_k')} | - | - | - | - | - |",
        "",
        "k = the number of moved images (P@k = R@k when the ranking covers every image); train/val P@k use the "
        "moved images of that split as k.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.label_noise", description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=600)
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--noise", type=float, default=0.08)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    try:
        import cleanlab  # noqa: F401
    except ImportError:
        sys.exit('error: cleanlab is not installed: pip install -e ".[compare]"')
    import torch

    from lossdiag.data.synthetic import make_image_folder

    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory(prefix="lossdiag-label-noise-") as tmp:
        for seed in args.seeds:
            work = Path(tmp) / f"seed{seed}"
            folder = make_image_folder(work / "images", n_classes=args.classes, per_class=args.images // args.classes,
                                       noise_fraction=args.noise, seed=seed)  # fmt: skip
            moved = {str(Path(p).resolve()) for p in folder.moved}
            moved |= {str(p) for p in folder.moved}
            result = {"seed": seed, "moved": len(folder.moved)}
            result["lossdiag"] = run_lossdiag(folder.root, seed, work, moved)
            result["cleanlab"] = run_cleanlab(folder.root, seed, work, {str(p) for p in folder.moved})
            print(json.dumps(result), flush=True)
            results.append(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "label_noise.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                           "results": results}, indent=2) + "\n")  # fmt: skip
    text = markdown(results, args)
    (args.out / "label_noise.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
