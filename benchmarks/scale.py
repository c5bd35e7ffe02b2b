"""How do time and memory grow with the size of an image folder, compared with a plain PyTorch loop?

``python -m benchmarks.scale --data /tmp/lossdiag-scale [--sizes 2000x64,20000x64,50000x64,20000x128]
[--epochs 2] [--modes auto] [--out benchmarks/results]`` (``--quick``: a smoke test at tiny sizes)

For every size ``NxS`` (N images of S x S pixels, RGB, 10 classes) a generated folder
(:func:`lossdiag.data.synthetic.make_image_folder`) is made once under ``--data`` and reused. Each case runs in
its own process, started from here:

- ``plain``: a plain PyTorch loop (this file, ``--plain``): decode every image with PIL (the project's
  :func:`~lossdiag.data.images.load_image`) into a ``uint8`` tensor, the same seeded stratified split,
  ShallowNet, SGD (momentum 0.9 and the rate of :func:`fixed_lr`, given to the project runs too, so neither
  runs ``optimizer.lr=auto``'s range test), batch sizes (32 / 512 for val), deterministic
  algorithms and one thread; per epoch a shuffled training pass and a val pass (loss and accuracy);
- ``project cold``: ``python -m src.train data=folder data.root=<folder> data.image_size=S`` with the
  default callbacks and loggers (diagnosis, checkpoints, TensorBoard, CSV) and an empty decode cache;
- ``project <mode>``: the same again, the decode cache warm (as for every later run of a sweep), for each
  ``data.mode`` of ``--modes`` (``auto`` picks by size).

Measured: wall time from start to exit; time to first training batch (process start, imports, decoding,
setup, the loss cap); the mean epoch (training + validation + epoch-end hooks); the end of fit (from the
last epoch's end to the exit: end-of-fit evaluations, reports, figures); peak memory: the largest single
process's peak RSS (exact, ``wait4``) and the peak of the process tree's summed PSS (sampled every 0.1 s
from ``/proc/<pid>/smaps_rollup``, so loader workers count, and shared pages once). Results go to
``<out>/scale.json`` and ``<out>/scale.md``. The machine may be shared: timings are as noisy as it is busy.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results"
SIZES = "2000x64,20000x64,50000x64,20000x128"
QUICK_SIZES = "60x16,120x16"
CLASSES = 10
GOALS = {"rss_20k_64_gb": 2.0, "wall_ratio_20k_64": 1.3, "rss_20k_128_gb": 3.0}


@dataclass
class Result:
    """One case on one folder."""

    n: int
    size: int
    case: str
    wall_s: float
    first_batch_s: float
    epoch_s: list[float]
    end_s: float
    peak_rss_mb: float  # the largest single process
    peak_tree_pss_mb: float  # the whole process tree, sampled
    returncode: int = 0
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def epoch_mean_s(self) -> float:
        return sum(self.epoch_s) / len(self.epoch_s) if self.epoch_s else math.nan


# -- memory of a process tree ----------------------------------------------------------------
def _children(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return [int(c) for t in tasks for c in (t / "children").read_text().split()]
    except OSError:
        return []


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeSampler(threading.Thread):
    """Samples the summed PSS of ``pid`` and its descendants every ``every`` seconds; ``peak_kb`` holds the peak."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.peak_kb, self.done = pid, every, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            tree, todo = [], [self.pid]
            while todo:
                pid = todo.pop()
                tree.append(pid)
                todo += _children(pid)
            self.peak_kb = max(self.peak_kb, sum(_pss_kb(p) for p in tree))
            self.done.wait(self.every)


def run_measured(
    cmd: Sequence[str], log: Path, env: dict[str, str]
) -> tuple[float, float, float, int, float]:
    """Run ``cmd``; ``(start, end, peak RSS MB of the largest process, returncode, peak tree PSS MB)``."""
    with log.open("w") as sink:
        start = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        end = time.time()
        sampler.done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss: kB on Linux; of this child or of the largest descendant it waited for (loader workers)
    return start, end, usage.ru_maxrss / 1024, proc.returncode, sampler.peak_kb / 1024


def _result(n: int, size: int, case: str, cmd: Sequence[str], work: Path, env: dict[str, str]) -> Result:
    """Run ``cmd``, which writes its milestones to ``work/marks.json``, and measure it."""
    record = work / "marks.json"
    start, end, rss, rc, pss = run_measured(cmd, work / "log.txt", env)
    if rc != 0 or not record.is_file():
        tail = (work / "log.txt").read_text()[-2000:]
        raise SystemExit(f"error: {case} on {n}x{size} failed (exit {rc}):\n{tail}")
    marks = json.loads(record.read_text())
    epochs = [b - a for a, b in marks["epochs"]]
    return Result(
        n,
        size,
        case,
        end - start,
        marks["first_batch"] - start,
        epochs,
        end - marks["train_end"],
        rss,
        pss,
        rc,
    )


# -- the plain loop (run in its own process) ------------------------------------------------
def fixed_lr(size: int) -> float:
    """0.1 x 2048 / the fan-in of ShallowNet's last layer on ``size`` px RGB images (what ``optimizer.lr=auto``
    was when the table in docs/performance.md was measured): one rate for both the plain loop and the project."""
    from lossdiag.models.shallownet import ShallowNet

    return 0.1 * 2048 / ShallowNet(size, size, 3, CLASSES).fc1.in_features


def plain_loop(root: Path, size: int, epochs: int, record: Path, seed: int = 0, device: str = "cpu") -> None:
    """Decode, split, train and validate as a hand-written PyTorch script would; write :class:`~benchmarks.timing.FitMarks`-style marks."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from lossdiag.data.images import find_classes, list_images, load_image
    from lossdiag.data.splits import stratified_split
    from lossdiag.models.shallownet import ShallowNet

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, as Lightning sets it
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    listing = list_images(root, [root], find_classes(root))
    x = np.empty((len(listing), 3, size, size), dtype=np.uint8)
    for i, path in enumerate(listing.files):
        x[i] = load_image(path, size, 3)
    train_idx, val_idx = stratified_split(listing.label, 0.25, seed)
    images, labels = torch.from_numpy(x), torch.from_numpy(listing.label)
    xt, yt, xv, yv = images[train_idx], labels[train_idx], images[val_idx], labels[val_idx]
    del x, images
    # on a GPU the uint8 splits live there once, as the project's in-memory data modules put them (trainer=gpu)
    xt, yt, xv, yv = (t.to(device) for t in (xt, yt, xv, yv))
    net = ShallowNet(size, size, 3, int(labels.max()) + 1).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=fixed_lr(size), momentum=0.9)
    first_batch, bounds = None, []
    for epoch in range(epochs):
        bounds.append(time.time())
        net.train()
        order = torch.randperm(len(yt), generator=torch.Generator().manual_seed(seed + epoch))
        for start in range(0, len(yt), 32):
            first_batch = first_batch or time.time()
            idx = order[start : start + 32].to(device)
            optimizer.zero_grad()
            F.cross_entropy(net(xt[idx].float().div_(255)), yt[idx]).backward()
            optimizer.step()
        net.eval()
        loss, correct = torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device)
        with torch.no_grad():
            for start in range(0, len(yv), 512):
                logits = net(xv[start : start + 512].float().div_(255))
                loss += F.cross_entropy(logits, yv[start : start + 512], reduction="sum")
                correct += (logits.argmax(1) == yv[start : start + 512]).sum()
        print(f"epoch {epoch}: val loss {float(loss) / len(yv):.4f}, val acc {float(correct) / len(yv):.4f}")
    bounds.append(time.time())
    epochs_marks = list(itertools.pairwise(bounds))
    record.write_text(
        json.dumps({"first_batch": first_batch, "epochs": epochs_marks, "train_end": bounds[-1]})
    )


# -- one size ---------------------------------------------------------------------------------
def make_folder(data: Path, n: int, size: int) -> Path:
    """The generated folder of ``n`` images of ``size`` px, made once under ``data``."""
    from lossdiag.data.synthetic import make_image_folder

    root = data / f"stripes-{n}x{size}"
    make_image_folder(root, n_classes=CLASSES, per_class=n // CLASSES, image_size=size, seed=0)
    return root


def measure_size(
    data: Path, work: Path, n: int, size: int, epochs: int, modes: Sequence[str], device: str = "cpu"
) -> list[Result]:
    """Every case on the folder of ``n`` images of ``size`` px (see the module docstring)."""
    folder = make_folder(data, n, size)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    results = []
    here = work / f"{n}x{size}"
    shutil.rmtree(here, ignore_errors=True)
    plain_dir = here / "plain"
    plain_dir.mkdir(parents=True)
    plain = [sys.executable, "-m", "benchmarks.scale", "--plain", str(folder), str(size), str(epochs)]
    plain += [str(plain_dir / "marks.json"), device]
    results.append(_result(n, size, "plain", plain, plain_dir, env))
    print(_row(results[0], results[0]), flush=True)
    cache = here / "cache"  # empty: the first project run decodes into it
    for case, mode in [("project cold", "auto"), *((f"project {m}", m) for m in modes)]:
        run = here / case.replace(" ", "_")
        run.mkdir(parents=True)
        cmd = [
            sys.executable, "-m", "src.train", "data=folder", f"data.root={folder}", f"data.image_size={size}",
            f"optimizer.lr={fixed_lr(size)}",
            f"data.mode={mode}", f"data.cache_dir={cache}", f"trainer.max_epochs={epochs}", f"hydra.run.dir={run / 'run'}",
            "+callbacks.marks._target_=benchmarks.timing.FitMarks", f"+callbacks.marks.record={run / 'marks.json'}",
            *(["trainer=gpu"] if device == "cuda" else []),
        ]  # fmt: skip
        result = _result(n, size, case, cmd, run, env)
        result.note = next(
            (line for line in (run / "log.txt").read_text().splitlines() if "decoded)" in line), ""
        )
        results.append(result)
        print(_row(result, results[0]), flush=True)
    shutil.rmtree(cache, ignore_errors=True)
    return results


# -- tables -----------------------------------------------------------------------------------
HEADER = (
    "| images | px | case | wall (s) | x plain | first batch (s) | epoch (s) | end of fit (s) | end / 2 epochs "
    "| peak RSS (MB) | tree PSS (MB) | x plain |"
)


def _row(r: Result, plain: Result) -> str:
    return (
        f"| {r.n:,} | {r.size} | {r.case} | {r.wall_s:.1f} | {r.wall_s / plain.wall_s:.2f} | {r.first_batch_s:.1f} "
        f"| {r.epoch_mean_s:.1f} | {r.end_s:.1f} | {r.end_s / (2 * r.epoch_mean_s):.2f} | {r.peak_rss_mb:.0f} "
        f"| {r.peak_tree_pss_mb:.0f} | {r.peak_rss_mb / plain.peak_rss_mb:.2f} |"
    )


def growth(results: Sequence[Result]) -> list[str]:
    """Per case, over the sizes of the most common pixel size: each measure's exponent in N (log-log slope
    from the smallest to the largest N: 1 = linear, 0 = constant) and its increment per 1,000 images."""
    common = max({r.size for r in results}, key=lambda s: len({r.n for r in results if r.size == s}))
    lines = [
        f"How each measure grows with N at {common} px: exponent b of N^b between the smallest and the largest N "
        "(1 = linear, 0 = flat), and the increment per 1,000 images.",
        "",
        "| case | N | wall | first batch | epoch | end of fit | peak RSS | tree PSS |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    measures = ("wall_s", "first_batch_s", "epoch_mean_s", "end_s", "peak_rss_mb", "peak_tree_pss_mb")
    for case in dict.fromkeys(r.case for r in results):
        mine = sorted((r for r in results if r.case == case and r.size == common), key=lambda r: r.n)
        if len(mine) < 2:
            continue
        lo, hi = mine[0], mine[-1]
        cells = []
        for m in measures:
            a, b = getattr(lo, m), getattr(hi, m)
            slope = math.log(b / a) / math.log(hi.n / lo.n) if a > 0 and b > 0 else math.nan
            unit = "s" if m.endswith("_s") else " MB"
            cells.append(f"N^{slope:.2f}, {(b - a) / (hi.n - lo.n) * 1000:+.2f}{unit}")
        lines.append(f"| {case} | {lo.n:,}-{hi.n:,} | " + " | ".join(cells) + " |")
    return lines


def goals(results: Sequence[Result]) -> list[str]:
    """Where the issue's goals stand (the project with the mode ``auto``, warm cache)."""
    pick = {(r.n, r.size, r.case): r for r in results}
    lines = []
    p, q = pick.get((20000, 64, "project auto")), pick.get((20000, 64, "plain"))
    if p and q:
        lines.append(
            f"- 20k x 64 px: peak RSS {p.peak_rss_mb / 1024:.2f} GB (goal <= {GOALS['rss_20k_64_gb']}), tree PSS "
            f"{p.peak_tree_pss_mb / 1024:.2f} GB; wall {p.wall_s / q.wall_s:.2f}x the plain loop "
            f"(goal <= {GOALS['wall_ratio_20k_64']})"
        )
    p = pick.get((20000, 128, "project auto"))
    if p:
        lines.append(
            f"- 20k x 128 px: peak RSS {p.peak_rss_mb / 1024:.2f} GB (goal <= {GOALS['rss_20k_128_gb']})"
        )
    for r in results:
        if r.case == "project auto":
            lines.append(
                f"- {r.n:,} x {r.size} px: end of fit {r.end_s:.1f} s = {r.end_s / (2 * r.epoch_mean_s):.2f} x 2 epochs (goal <= 1)"
            )
    return lines


def markdown(results: Sequence[Result], meta: dict[str, Any]) -> str:
    plain = {(r.n, r.size): r for r in results if r.case == "plain"}
    lines = [
        "# lossdiag at scale",
        "",
        f"{meta['machine']}, {meta.get('device', 'cpu')}; torch {meta['torch']}, lightning {meta['lightning']}; {meta['epochs']} epochs; "
        f"load average {meta['load_before']} before, {meta['load_after']} after (a shared machine: timings are noisy). "
        "Command: `" + meta["command"] + "`.",
        "",
        HEADER,
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(_row(r, plain[(r.n, r.size)]) for r in results),
        "",
        "What `data.mode` chose (the run's one-line note):",
        "",
        *(f"- {r.n:,}x{r.size} {r.case}: {r.note.removeprefix('data: ')}" for r in results if r.note),
        "",
        *growth(results),
        "",
        "Goals (issue 23):",
        "",
        *goals(results),
    ]
    return "\n".join(lines) + "\n"


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data", type=Path, default=Path("/tmp/lossdiag-scale"), help="where generated folders are kept"
    )
    p.add_argument("--sizes", default=SIZES, help="comma list of NxS: N images of S x S pixels")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--modes", default="auto", help="data.mode values of the warm-cache project runs")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for scale.{json,md}")
    p.add_argument("--quick", action="store_true", help=f"smoke test: --sizes {QUICK_SIZES}")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: both sides on one GPU (trainer=gpu)")
    p.add_argument("--plain", nargs=5, metavar=("ROOT", "SIZE", "EPOCHS", "RECORD", "DEVICE"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    if args.plain:
        root, size, epochs, record, device = args.plain
        plain_loop(Path(root), int(size), int(epochs), Path(record), device=device)
        return []
    import lightning
    import torch

    sizes = [
        tuple(int(v) for v in s.split("x")) for s in (QUICK_SIZES if args.quick else args.sizes).split(",")
    ]
    modes = [m for m in args.modes.split(",") if m]
    meta = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores {platform.python_version()}",
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "epochs": args.epochs,
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "load_before": _load(),
        "command": "python -m benchmarks.scale " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    work = args.data / "runs"
    results = []
    print(HEADER, flush=True)
    for n, size in sizes:
        results += measure_size(args.data, work, n, size, args.epochs, modes, args.device)
    meta["load_after"] = _load()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(
        json.dumps(
            {"meta": meta, "results": [asdict(r) | {"epoch_mean_s": r.epoch_mean_s} for r in results]},
            indent=1,
        )
    )
    (args.out / "scale.md").write_text(markdown(results, meta))
    print(f"wrote {args.out / 'scale.md'}")
    return results


if __name__ == "__main__":
    main()
