"""How fast is lossdiag's training compared with the plain PyTorch loop it replaces?

``python -m benchmarks.train_speed [--epochs 20 --repeats 2 --threads 1 --out benchmarks/results]``

In one process and one run, for every dataset (the default run's 150 digits, all digits, and a
generated folder of 32x32 RGB PNGs in 3 classes) it times, with the same ShallowNet, optimizer
(the config's SGD), batch size, epochs, thread count and determinism flag:

- ``a_dataloader``: a hand-written loop over ``DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)``
  (what the forum poster wrote), ``.item()`` per step for the running loss/accuracy;
- ``b_slicing``: the same loop batching by index slicing of in-memory tensors (the practical floor);
- ``c_project``: ``lossdiag.app.pipeline.train`` with the default config: every metric, logger, checkpoint,
  diagnosis callback and the progress bar;
- ``d_no_diagnostics``: the same with ``callbacks=plain`` (checkpoints and progress bar, no diagnosis callbacks);
- ``naive_imagefolder`` (folder only): ``torchvision.datasets.ImageFolder`` + ``DataLoader``, decoding
  every image every epoch;
- on request (``--cases``), ``v_*``: the project's run with one part switched off (TensorBoard, CSV,
  checkpoints, progress bar, determinism, or everything: ``v_bare``), to see what each part costs.

Every epoch is a training pass plus a validation pass (loss and accuracy). The per-epoch time is the
mean over the epochs after ``--warmup`` and before the last, of all ``--repeats`` (``--digits-repeats`` for the two
fast digits datasets, where a few milliseconds of background load move a ratio most; cases are interleaved,
so background load hits them alike). The mean, not the median: the diagnosis does part of its work once per
block of epochs (50 evaluated at once; the default 52 epochs hold one block), and a median would leave that
out. The last epoch is left out because its end holds the end-of-fit work (reports, final figures), which
the whole-run time (data loading included, imports excluded; median over repeats) shows. Results go to ``<out>/train_speed.json`` and ``<out>/train_speed.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.timing import now, spans

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
DEFAULT_OUT = ROOT / "benchmarks" / "results"
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "lossdiag-bench"
DATASETS = ("digits", "digits-full", "folder")
CASES = ("a_dataloader", "b_slicing", "c_project", "d_no_diagnostics", "naive_imagefolder")
FOLDER_ONLY = ("naive_imagefolder",)
# the project's run with one part switched off (``--cases``), to measure what each part costs
PROJECT_VARIANTS: dict[str, list[str]] = {
    "c_project": [],
    "d_no_diagnostics": ["callbacks=plain"],
    "v_no_tensorboard": ["~logger.tensorboard"],
    "v_no_csv": ["~logger.csv"],
    "v_no_checkpoint": ["~callbacks.checkpoint", "~callbacks.last_checkpoint"],
    "v_no_progress_bar": ["~callbacks.progress_bar"],
    "v_not_deterministic": ["trainer.deterministic=false"],
    "v_bare": ["callbacks=none", "~logger"],
}
ALL_CASES = (*CASES, *[v for v in PROJECT_VARIANTS if v not in CASES])


@dataclass
class Run:
    """One timed run of one case."""

    dataset: str
    case: str
    threads: int
    repeat: int
    epoch_s: list[float]  # wall
    epoch_cpu_s: list[float]  # process CPU time
    whole_s: float


@dataclass
class Row:
    """Summary of one case on one dataset and thread count."""

    dataset: str
    case: str
    threads: int
    epoch_ms: float  # mean per-epoch wall time after warm-up (last epoch excluded), all repeats pooled
    epoch_ms_p25: float
    epoch_ms_p75: float
    cpu_ms: float  # mean per-epoch CPU time after warm-up (last epoch excluded)
    whole_s: float  # median whole-run time over repeats
    n_epochs: int = field(default=0)


# -- data -------------------------------------------------------------------------------------
def make_image_folder(
    root: Path, n_images: int, size: int = 32, seed: int = 0, noise: float = 0.25, wrong_labels: float = 0.0
) -> Path:
    """``root/<class>/<i>.png``: ``n_images`` RGB PNGs in 3 classes, made once (a ``.complete`` marker).

    Each class has its own mean colour and stripe direction plus Gaussian pixel noise of std ``noise``
    (0.25: a ShallowNet learns it almost perfectly; larger values make it harder). A ``wrong_labels``
    fraction of the images (chosen at random) is drawn from another class than the folder it is saved in:
    label errors, as a real folder has some.
    """
    import numpy as np
    from PIL import Image

    marker = root / ".complete"
    identity = f"{n_images} {size} {seed} {noise} {wrong_labels}"
    if marker.is_file() and marker.read_text() == identity:
        return root
    rng = np.random.default_rng(seed)
    classes = ("cats", "dogs", "pandas")
    grid = np.arange(size, dtype=np.float32)
    stripes = [
        np.sin(grid[None, :] / 2.0).repeat(size, 0),
        np.sin(grid[:, None] / 2.0).repeat(size, 1),
        np.sin((grid[None, :] + grid[:, None]) / 3.0),
    ]
    colours = np.array([[0.6, 0.4, 0.3], [0.4, 0.5, 0.4], [0.45, 0.45, 0.55]], dtype=np.float32)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(label, n_images, len(classes)):
            drawn = label
            if wrong_labels and rng.random() < wrong_labels:
                drawn = (label + int(rng.integers(1, len(classes)))) % len(classes)
            base = colours[drawn][None, None, :] + 0.15 * stripes[drawn][:, :, None]
            img = base + rng.normal(0.0, noise, size=(size, size, 3)).astype(np.float32)
            pixels = (np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(root / name / f"{i:05d}.png")
    marker.write_text(identity)
    return root


def dataset_overrides(dataset: str, folder: Path | None) -> list[str]:
    if dataset == "digits":
        return []  # the default run: 150 training digits
    if dataset == "digits-full":
        return ["data.train_size=null"]
    if dataset == "folder":
        assert folder is not None
        return ["data=folder", f"data.root={folder}"]
    raise ValueError(f"unknown dataset {dataset!r}: choose from {', '.join(DATASETS)}")


def compose(overrides: Sequence[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


# -- the plain loops --------------------------------------------------------------------------
def _setup_plain(cfg: Any, threads: int) -> tuple[Any, Any, Any]:
    """Same seed, threads, determinism, data split, ShallowNet and optimizer as the project's run."""
    import torch
    from hydra.utils import instantiate

    from lossdiag.app.pipeline import learning_rate
    from lossdiag.models.shallownet import ShallowNet

    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(bool(cfg.trainer.deterministic))
    torch.manual_seed(cfg.seed)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    model = ShallowNet(dm.width, dm.height, dm.depth, dm.num_classes, filters=cfg.model.filters)
    found = learning_rate(cfg, model, dm)  # lr=auto: the project's range test (cached), as in its run
    optimizer = instantiate(cfg.optimizer, lr=getattr(found, "lr", found))(model.parameters())
    return dm, model, optimizer


def _epoch_over_loaders(model: Any, optimizer: Any, train: Iterable, val: Iterable) -> tuple[float, float]:
    """The forum poster's epoch: train with running loss/accuracy via ``.item()``, then validate."""
    import torch
    import torch.nn.functional as F

    model.train()
    running, correct, seen = 0.0, 0, 0
    for x, y in train:
        optimizer.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        running += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    model.eval()
    val_loss, val_correct, val_seen = 0.0, 0, 0
    with torch.no_grad():
        for x, y in val:
            logits = model(x)
            val_loss += F.cross_entropy(logits, y, reduction="sum").item()
            val_correct += (logits.argmax(1) == y).sum().item()
            val_seen += len(y)
    return val_loss / val_seen, val_correct / val_seen


def _epoch_by_slicing(model: Any, optimizer: Any, dm: Any, epoch: int) -> tuple[float, float]:
    """The floor: shuffle once per epoch, slice batches, accumulate on tensors, one ``.item()`` per epoch."""
    import torch
    import torch.nn.functional as F

    x, y = dm.train.inputs(), dm.train.y
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))
    x, y = x[order], y[order]
    model.train()
    total = torch.zeros(())
    for start in range(0, len(y), dm.batch_size):
        xb, yb = x[start : start + dm.batch_size], y[start : start + dm.batch_size]
        optimizer.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(yb)
    model.eval()
    vx, vy = dm.val.inputs(), dm.val.y
    val_loss, val_correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
    with torch.inference_mode():
        for start in range(0, len(vy), dm.val_batch_size):
            logits = model(vx[start : start + dm.val_batch_size])
            yb = vy[start : start + dm.val_batch_size]
            val_loss += F.cross_entropy(logits, yb, reduction="sum")
            val_correct += (logits.argmax(1) == yb).sum()
    return float(val_loss) / len(vy), float(val_correct) / len(vy)


def run_plain(cfg: Any, threads: int, case: str) -> tuple[list[float], list[float], float]:
    """``(per-epoch wall s, per-epoch CPU s, whole-run s)`` of one plain loop (``a_dataloader``, ``b_slicing``, naive)."""
    from torch.utils.data import DataLoader, Subset, TensorDataset

    start = time.perf_counter()
    dm, model, optimizer = _setup_plain(cfg, threads)
    if case == "a_dataloader":
        train = DataLoader(TensorDataset(dm.train.inputs(), dm.train.y), batch_size=dm.batch_size, shuffle=True)
        val = DataLoader(TensorDataset(dm.val.inputs(), dm.val.y), batch_size=dm.val_batch_size)
        epoch_fn: Callable[[int], object] = lambda _: _epoch_over_loaders(model, optimizer, train, val)  # noqa: E731
    elif case == "b_slicing":
        epoch_fn = lambda epoch: _epoch_by_slicing(model, optimizer, dm, epoch)  # noqa: E731
    elif case == "naive_imagefolder":
        import numpy as np
        from torchvision import datasets, transforms

        from lossdiag.data.splits import stratified_split

        images = datasets.ImageFolder(str(cfg.data.root), transform=transforms.ToTensor())
        train_idx, val_idx = stratified_split(np.array(images.targets), cfg.data.val_fraction, cfg.seed)
        train = DataLoader(Subset(images, train_idx.tolist()), batch_size=dm.batch_size, shuffle=True)
        val = DataLoader(Subset(images, val_idx.tolist()), batch_size=dm.val_batch_size)
        epoch_fn = lambda _: _epoch_over_loaders(model, optimizer, train, val)  # noqa: E731
    else:
        raise ValueError(case)
    marks = [now()]
    for epoch in range(int(cfg.trainer.max_epochs)):
        epoch_fn(epoch)
        marks.append(now())
    return *spans(marks), time.perf_counter() - start


# -- the project ------------------------------------------------------------------------------
def run_project(overrides: Sequence[str], work: Path, log: Path) -> tuple[list[float], list[float], float]:
    """Train through ``lossdiag.app.pipeline.train`` exactly as ``python -m src.train`` does, plus an :class:`EpochTimer`."""
    from lossdiag.app.pipeline import train

    record = work / "epochs.json"
    cfg = compose(
        [
            *overrides,
            f"paths.output_dir={work}",
            "+callbacks.epoch_timer._target_=benchmarks.timing.EpochTimer",
            f"+callbacks.epoch_timer.record={record}",
        ]
    )
    lightning_log = logging.getLogger("lightning")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # "GPU available: ..." on every run
    try:
        with log.open("a") as sink, contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
            start = time.perf_counter()
            train(cfg)
            whole = time.perf_counter() - start
    finally:
        lightning_log.setLevel(level)
    times = json.loads(record.read_text())
    return times["epoch_s"], times["epoch_cpu_s"], whole


# -- summary ----------------------------------------------------------------------------------
def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _steady(epoch_s: Sequence[float], warmup: int) -> Sequence[float]:
    """The epochs after ``warmup`` and before the last (whose end holds the end-of-fit work)."""
    return epoch_s[warmup:-1] or epoch_s


def summarise(runs: Sequence[Run], warmup: int) -> list[Row]:
    rows = []
    keys = sorted(
        {(r.dataset, r.threads, r.case) for r in runs},
        key=lambda k: (DATASETS.index(k[0]), k[1], ALL_CASES.index(k[2])),
    )
    for dataset, threads, case in keys:
        mine = [r for r in runs if (r.dataset, r.threads, r.case) == (dataset, threads, case)]
        epochs = [s for r in mine for s in _steady(r.epoch_s, warmup)]
        cpu = [s for r in mine for s in _steady(r.epoch_cpu_s, warmup)]
        rows.append(
            Row(
                dataset=dataset,
                case=case,
                threads=threads,
                epoch_ms=1000 * statistics.fmean(epochs),
                epoch_ms_p25=1000 * _quantile(epochs, 0.25),
                epoch_ms_p75=1000 * _quantile(epochs, 0.75),
                cpu_ms=1000 * statistics.fmean(cpu),
                whole_s=statistics.median(r.whole_s for r in mine),
                n_epochs=len(epochs),
            )
        )
    return rows


RATIOS = (("c/a", "c_project", "a_dataloader"), ("c/b", "c_project", "b_slicing"),
          ("c/d", "c_project", "d_no_diagnostics"), ("naive/c", "naive_imagefolder", "c_project"))


def ratios(rows: Sequence[Row]) -> dict[str, dict[str, float]]:
    """Per ``dataset threads=N``: c/a, c/b, c/d and naive/c (the folder speed-up), of wall time and
    (``... cpu``) of CPU time."""
    out: dict[str, dict[str, float]] = {}
    for dataset, threads in sorted({(r.dataset, r.threads) for r in rows}, key=lambda k: (DATASETS.index(k[0]), k[1])):
        mine = {r.case: r for r in rows if (r.dataset, r.threads) == (dataset, threads)}
        got: dict[str, float] = {}
        for name, top, bottom in RATIOS:
            if top in mine and bottom in mine:
                got[name] = mine[top].epoch_ms / mine[bottom].epoch_ms
                got[f"{name} cpu"] = mine[top].cpu_ms / mine[bottom].cpu_ms
        out[f"{dataset} threads={threads}"] = got
    return out


def markdown(rows: Sequence[Row], ratio: dict[str, dict[str, float]], meta: dict[str, Any]) -> str:
    lines = [
        "# lossdiag training speed",
        "",
        f"{meta['machine']}; torch {meta['torch']}, lightning {meta['lightning']}; "
        f"{meta['epochs']} epochs, mean after {meta['warmup']} warm-up epochs (the last excluded), {meta['repeats']} interleaved "
        f"repeat(s) ({meta['digits_repeats']} for digits); load average {meta['load_before']} before, {meta['load_after']} after.",
        "",
        "| dataset | threads | case | wall ms/epoch (mean) | wall p25-p75 | CPU ms/epoch | wall / b | CPU / b "
        "| whole run (s) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    floor = {(r.dataset, r.threads): r for r in rows if r.case == "b_slicing"}
    for r in rows:
        b = floor.get((r.dataset, r.threads))
        rel = f"{r.epoch_ms / b.epoch_ms:.2f} | {r.cpu_ms / b.cpu_ms:.2f}" if b else "- | -"
        lines.append(
            f"| {r.dataset} | {r.threads} | {r.case} | {r.epoch_ms:.1f} | {r.epoch_ms_p25:.1f}-{r.epoch_ms_p75:.1f} "
            f"| {r.cpu_ms:.1f} | {rel} | {r.whole_s:.2f} |"
        )
    names = [name for name, _, _ in RATIOS]
    lines += [
        "",
        "| dataset | " + " | ".join(f"{n} (wall) | {n} (CPU)" for n in names) + " |",
        "| --- |" + " ---: |" * (2 * len(names)),
    ]
    for key, got in ratio.items():
        cells = [f"{got[k]:.2f}" if k in got else "-" for n in names for k in (n, f"{n} cpu")]
        lines.append(f"| {key} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


# -- main -------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default=",".join(DATASETS), help=f"comma list from {', '.join(DATASETS)}")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma list from {', '.join(ALL_CASES)}")
    p.add_argument("--epochs", type=int, default=52, help="epochs per run (all cases; 52 holds one block of the diagnosis and two figure epochs)")
    p.add_argument("--warmup", type=int, default=3, help="epochs left out of the per-epoch mean")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats of every case")
    p.add_argument("--digits-repeats", type=int, default=6, help="repeats on the (fast) digits datasets")
    p.add_argument("--threads", default=None, help="comma list of torch thread counts (default: the config's)")
    p.add_argument("--folder-images", type=int, default=3000, help="images in the generated folder")
    p.add_argument("--digits-train-size", type=int, default=None, help="override the digits training subset (150)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the generated image folder is kept")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for train_speed.{json,md}")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every case (e.g. trainer.deterministic=false)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    datasets = [d for d in args.datasets.split(",") if d]
    cases = [c for c in args.cases.split(",") if c]
    for name, allowed in (("dataset", DATASETS), ("case", ALL_CASES)):
        bad = [x for x in (datasets if name == "dataset" else cases) if x not in allowed]
        if bad:
            raise SystemExit(f"error: unknown {name} {bad}: choose from {', '.join(allowed)}")
    sys.path.insert(0, str(ROOT))
    import lightning
    import torch

    base = [*args.overrides, f"trainer.max_epochs={args.epochs}"]
    default_threads = compose(base).get("threads")
    threads_list = [int(t) for t in args.threads.split(",")] if args.threads else [default_threads or torch.get_num_threads()]
    folder = None
    if "folder" in datasets:
        folder = make_image_folder(args.cache / f"folder-{args.folder_images}", args.folder_images)
    meta = {
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} logical cores, {platform.system()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "epochs": args.epochs,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "digits_repeats": args.digits_repeats,
        "load_before": _load(),
        "overrides": list(args.overrides),
    }
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="lossdiag-bench-") as tmp:
        log = Path(tmp) / "project.log"
        # one short untimed run of the plain loop and of the project first: whichever case came first in the
        # process would otherwise pay the lazy initialisation (kernels, imports) in its timed epochs
        warm = [f"trainer.max_epochs={args.warmup + 2}", *dataset_overrides("digits", folder)]
        run_plain(compose(warm), threads_list[0], "a_dataloader")
        run_project(warm, Path(tmp) / "warm-up", log)
        def repeats(dataset: str) -> int:
            return args.digits_repeats if dataset.startswith("digits") else args.repeats

        total = max(repeats(d) for d in datasets)
        for repeat in range(total):
            for dataset in datasets:
                if repeat >= repeats(dataset):
                    continue
                data = dataset_overrides(dataset, folder)
                if dataset.startswith("digits") and args.digits_train_size is not None:
                    data = [*data, f"data.train_size={args.digits_train_size}"]
                for threads in threads_list:
                    todo = [c for c in cases if dataset == "folder" or c not in FOLDER_ONLY]
                    todo = todo[repeat % len(todo) :] + todo[: repeat % len(todo)]  # rotate the order per repeat
                    for case in todo:
                        overrides = [*base, *data, f"threads={threads}"]
                        if case in PROJECT_VARIANTS:
                            overrides += PROJECT_VARIANTS[case]
                            work = Path(tmp) / f"{dataset}-{threads}-{case}-{repeat}"
                            epoch_s, cpu_s, whole = run_project(overrides, work, log)
                        else:
                            epoch_s, cpu_s, whole = run_plain(compose(overrides), threads, case)
                        runs.append(Run(dataset, case, threads, repeat, epoch_s, cpu_s, whole))
                        wall_ms, cpu_ms = (1000 * statistics.fmean(_steady(s, args.warmup)) for s in (epoch_s, cpu_s))
                        print(
                            f"[{repeat + 1}/{total}] {dataset:11s} threads={threads} {case:18s} "
                            f"{wall_ms:8.1f} ms/epoch ({cpu_ms:6.1f} CPU)  {whole:6.2f} s",
                            flush=True,
                        )
    meta["load_after"] = _load()
    rows = summarise(runs, args.warmup)
    ratio = ratios(rows)
    text = markdown(rows, ratio, meta)
    from lossdiag.rundir.atomic import atomic_write_text

    atomic_write_text(
        args.out / "train_speed.json",
        json.dumps(
            {"meta": meta, "rows": [asdict(r) for r in rows], "ratios": ratio, "runs": [asdict(r) for r in runs]},
            indent=1,
        ),
    )
    atomic_write_text(args.out / "train_speed.md", text)
    print("\n" + text)
    print(f"wrote {args.out / 'train_speed.json'} and {args.out / 'train_speed.md'}")
    return rows


if __name__ == "__main__":
    main()
