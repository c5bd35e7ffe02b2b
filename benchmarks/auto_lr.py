"""Does ``optimizer.lr=auto`` (the learning-rate range test) give rates that learn? The issue's goals, measured.

    python -m benchmarks.auto_lr --cases=digits,shallownet          # ~5 min on 2 idle cores
    python -m benchmarks.auto_lr --cases=resnet18 --noise=1.2 --seeds=0   # ~10-25 min per run on 2 cores

With every setting as shipped except the data (and the model for ``resnet18``):

- ``digits``: the default run (100 epochs); the rise of val loss over its minimum and the change of val accuracy
  (the phenomenon: a rise >= 1.2x at unchanged accuracy).
- ``shallownet``: generated 450-image 3-class 32x32 RGB folders (``make_image_folder`` of
  ``benchmarks/train_speed.py``, pixel noise ``--noise``, folder seeds 0-2), 10 epochs: the last val accuracy
  (goal >= 0.70).
- ``resnet18``: the same folders with ``model=resnet18``, 15 epochs (goal >= 0.85).

Each row names the rate ``auto`` chose and how. Writes ``benchmarks/results/auto_lr.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from benchmarks.train_speed import compose, make_image_folder

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results"
EPOCHS = {"digits": 100, "shallownet": 10, "resnet18": 15}


def run(overrides: list[str], cache: Path) -> dict[str, Any]:
    """One training run with ``overrides`` in a temporary folder: the val curve and the rate ``auto`` chose."""
    from lossdiag.app.pipeline import train
    from lossdiag.rundir.metrics_csv import read_history

    with tempfile.TemporaryDirectory() as out:
        cfg = compose([*overrides, "callbacks=none", f"paths.output_dir={out}", f"paths.cache_dir={cache}"])
        start = time.perf_counter()
        train(cfg)
        seconds = time.perf_counter() - start
        history = read_history(out)
        lr = OmegaConf.select(OmegaConf.load(Path(out) / "hparams.yaml"), "optimizer.lr")
    loss = [v for v in history["val/loss"] if math.isfinite(v)]
    acc = [v for v in history["val/acc"] if math.isfinite(v)]
    low = min(range(len(loss)), key=loss.__getitem__)
    return {
        "lr": float(lr),
        "last_acc": acc[-1],
        "best_acc": max(acc),
        "rise": loss[-1] / loss[low],
        "acc_change": acc[-1] - acc[low],
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", default="digits,shallownet")
    parser.add_argument("--noise", default="1.2,1.6,2.0", help="pixel noise std of the generated folders")
    parser.add_argument("--folders", default="0,1,2", help="folder seeds")
    parser.add_argument("--seeds", default="0,1,2", help="run seeds")
    parser.add_argument("--images", type=int, default=450)
    parser.add_argument("--cache", type=Path, default=ROOT / "outputs" / "benchmarks" / "auto_lr")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    seeds = args.seeds.split(",")
    rows = []
    for case in args.cases.split(","):
        if case == "digits":
            settings = [("digits", [f"seed={s}"]) for s in seeds]
        else:
            model = ["model=resnet18"] if case == "resnet18" else []
            settings = []
            for noise in args.noise.split(","):
                for fs in args.folders.split(","):
                    name = f"folder_{args.images}_n{noise}_s{fs}"
                    root = make_image_folder(args.cache / name, args.images, seed=int(fs), noise=float(noise))
                    settings += [
                        (name, ["data=folder", f"data.root={root}", *model, f"seed={s}"]) for s in seeds
                    ]
        for data, overrides in settings:
            row = {"case": case, "data": data, "seed": overrides[-1].split("=")[1]}
            row.update(run([*overrides, f"trainer.max_epochs={EPOCHS[case]}"], args.cache / "lr_cache"))
            print(json.dumps(row), flush=True)
            rows.append(row)
    write(rows, args.out)
    return rows


def write(rows: list[dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "auto_lr.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    lines = [
        "| case | data | seed | lr (auto) | last val acc | best val acc | val loss last / min | acc change | s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['case']} | {r['data']} | {r['seed']} | {r['lr']:g} | {r['last_acc']:.3f} | {r['best_acc']:.3f} | "
        f"{r['rise']:.2f} | {r['acc_change']:+.3f} | {r['seconds']:.0f} |"
        for r in rows
    ]
    (out / "auto_lr.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
