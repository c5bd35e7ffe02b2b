"""What the end of fit costs when the training split is evaluated for every model, and only where it is read.

``python -m benchmarks.fit_end [--images 900 --size 32 --epochs 5 --repeats 3 --out benchmarks/results]``

Trains ShallowNet through ``lossdiag.app.pipeline.train`` (the default config, as ``python -m src.train``) on a
generated folder of RGB PNGs (:func:`benchmarks.train_speed.make_image_folder`), once per mode and repeat,
interleaved so background load hits both alike, and times in each run:

- ``evaluate``: ``evaluate_models`` (every end-of-fit model on the val loader, some on the train loader);
- ``fit_end``: the whole ``LossDiagnosis.on_fit_end`` (the evaluations, samples.npz, figures, diagnosis.md);

each as wall and process CPU seconds (CPU time does not grow when other processes take the cores: it compares the
modes fairly on a busy machine, see :func:`benchmarks.timing.now`).

Modes: ``every_model`` (the train split for initial, best_val_acc, min_val_loss and last: the behaviour before
issue 22) and ``where_read`` (:func:`lossdiag.callbacks.evaluation.train_models`: last and best_val_acc). Results
(medians over repeats) go to ``<out>/fit_end.json`` and ``<out>/fit_end.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.timing import now
from benchmarks.train_speed import DEFAULT_CACHE, DEFAULT_OUT, compose, make_image_folder

MODES = ("every_model", "where_read")


def _timed(owner: Any, name: str, sink: list[tuple[float, float]]) -> Callable[[], None]:
    """Wrap ``owner.name`` so each call's (wall, CPU) seconds go to ``sink``; returns the undo."""
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = now()
        try:
            return original(*args, **kwargs)
        finally:
            end = now()
            sink.append((end[0] - start[0], end[1] - start[1]))

    setattr(owner, name, wrapper)
    return lambda: setattr(owner, name, original)


def run_once(folder: Path, epochs: int, mode: str, work: Path) -> dict[str, float]:
    from lossdiag.app.pipeline import train
    from lossdiag.callbacks import evaluation, loss_diagnosis

    evaluate_s: list[tuple[float, float]] = []
    fit_end_s: list[tuple[float, float]] = []
    undo = [
        _timed(loss_diagnosis, "evaluate_models", evaluate_s),
        _timed(loss_diagnosis.LossDiagnosis, "on_fit_end", fit_end_s),
    ]
    if mode == "every_model":
        original = evaluation.train_models
        evaluation.train_models = set  # every name: the train split for every model
        undo.append(lambda: setattr(evaluation, "train_models", original))
    cfg = compose(["data=folder", f"data.root={folder}", f"trainer.max_epochs={epochs}",
                   f"paths.output_dir={work}", "~callbacks.progress_bar"])  # fmt: skip
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)
    try:
        with (work.parent / f"{work.name}.log").open("w") as sink, contextlib.redirect_stdout(sink), \
                contextlib.redirect_stderr(sink):  # fmt: skip
            train(cfg)
    finally:
        lightning_log.setLevel(level)
        for step in reversed(undo):
            step()
    return {
        "evaluate_s": evaluate_s[0][0], "evaluate_cpu_s": evaluate_s[0][1],
        "fit_end_s": fit_end_s[0][0], "fit_end_cpu_s": fit_end_s[0][1],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=900)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    folder = make_image_folder(DEFAULT_CACHE / f"fit_end_{args.images}_{args.size}", args.images, args.size)
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for mode in MODES:
                runs[mode].append(run_once(folder, args.epochs, mode, Path(tmp) / f"{mode}_{repeat}"))
    summary = {
        mode: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for mode, results in runs.items()
    }
    result = {"images": args.images, "size": args.size, "epochs": args.epochs, "repeats": args.repeats,
              "summary": summary, "runs": runs}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fit_end.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# End of fit: {args.images} RGB {args.size}x{args.size} images, ShallowNet, {args.epochs} epochs, "
        f"median of {args.repeats}",
        "",
        "| mode | evaluate_models wall (s) | CPU (s) | LossDiagnosis.on_fit_end wall (s) | CPU (s) |",
        "|---|---|---|---|---|",
        *(
            f"| {mode} | {s['evaluate_s']:.3f} | {s['evaluate_cpu_s']:.3f} | {s['fit_end_s']:.3f} | "
            f"{s['fit_end_cpu_s']:.3f} |"
            for mode, s in summary.items()
        ),
    ]
    (args.out / "fit_end.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
