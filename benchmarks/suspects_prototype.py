"""Which label-error score should lossdiag use? Measured on generated folders with known moved images.

One plain-PyTorch training of the tiny ShallowNet records, for every training image, ``p_given`` and
``margin`` from the logits of its own training step (no extra forward pass), and the validation logits of
every epoch. From these, the single-training scores of :mod:`lossdiag.functional.suspects` rank the images; the
reference is cleanlab's self-confidence on out-of-fold probabilities from 4-fold cross-training of the same
model over all images (four trainings). Both are scored against the images the generator moved:
precision@k with k = the number of moved images (equal to recall@k at that k), and recall@2k (how many
moved images a review list twice that long catches).

    python -m benchmarks.suspects_prototype --seeds 0 1 2

Two cheaper cross-fits are measured too: 2-fold (two trainings on half the images), and 4-fold reusing the
single training as its first fold (its val split is one quarter, held out) plus three more trainings.

A run trains ``max(--epochs)`` epochs once per seed, learning rate and fold: the learning rate is constant,
so the first 30 of 100 epochs are exactly a 30-epoch run, and every row reads the dynamics up to its epoch
count. Times are the wall seconds of the training up to that epoch (validation each epoch included, as it
is needed to pick the best model). cleanlab is imported only here, never by ``src/``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.model_selection import StratifiedKFold, train_test_split
from torch import nn

from lossdiag.data.synthetic import GeneratedFolder, make_image_folder
from lossdiag.functional import suspects as S

BATCH = 32
VAL_FRACTION = 0.25
# LeCun-style fan-in scaling, lr ~ 1/sqrt(fan_in), of the head that dominates ShallowNet: 1/sqrt(32*32*32)
FAN_IN_LR = 1 / math.sqrt(32 * 32 * 32)


def tiny_cnn(n_classes: int, size: int = 32, filters: int = 32) -> nn.Module:
    """ShallowNet: Conv2d(3, 32, 3, padding=1) -> ReLU -> flatten -> Linear(32*32*32, C)."""
    return nn.Sequential(
        nn.Conv2d(3, filters, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(size * size * filters, n_classes),
    )


def load(folder: GeneratedFolder) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """``(x in [0, 1] (N, 3, H, W), given labels, moved mask)`` in the generator's file order."""
    index = {name: i for i, name in enumerate(folder.class_names)}
    x = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in folder.files])
    given = np.array([index[folder.given_class[p]] for p in folder.files])
    moved = np.array([folder.true_class[p] != folder.given_class[p] for p in folder.files])
    return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255, given, moved


@dataclass
class Run:
    """One training: per-epoch dynamics of its training images and logits of its held-out images."""

    p_given: np.ndarray  # (E, n_train) float16, as a Lightning callback would keep it
    margin: np.ndarray  # (E, n_train) float16
    held_logits: np.ndarray  # (E, n_held, C) float32: held-out logits after each epoch
    held_acc: np.ndarray  # (E,) accuracy on the held-out images' given labels
    seconds: np.ndarray  # (E,) cumulative wall seconds at the end of each epoch

    def best_epoch(self, epochs: int) -> int:
        """Epoch (0-based, within the first ``epochs``) of the best held-out accuracy, the first on ties."""
        return int(np.argmax(self.held_acc[:epochs]))


def train(
    x: torch.Tensor,
    y: np.ndarray,
    train_idx: np.ndarray,
    held_idx: np.ndarray,
    epochs: int,
    lr: float,
    seed: int,
) -> Run:
    """SGD (momentum 0.9, batch 32), recording each training image's dynamics from its own training step."""
    torch.manual_seed(seed)
    net = tiny_cnn(int(y.max()) + 1, x.shape[-1])
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    shuffle = torch.Generator().manual_seed(seed)
    y_t = torch.from_numpy(y)
    x_held, y_held = x[held_idx], y_t[held_idx]
    n = len(train_idx)
    p_given = np.zeros((epochs, n), np.float16)
    margin = np.zeros((epochs, n), np.float16)
    held_logits = np.zeros((epochs, len(held_idx), int(y.max()) + 1), np.float32)
    held_acc = np.zeros(epochs)
    seconds = np.zeros(epochs)
    start = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        for batch in torch.randperm(n, generator=shuffle).split(BATCH):
            rows = train_idx[batch.numpy()]
            logits = net(x[rows])
            loss = F.cross_entropy(logits, y_t[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            p, m = S.given_label_dynamics(logits, y_t[rows])
            p_given[epoch, batch.numpy()] = p.numpy()
            margin[epoch, batch.numpy()] = m.numpy()
        net.eval()
        with torch.no_grad():
            out = net(x_held)
        held_logits[epoch] = out.numpy()
        held_acc[epoch] = (out.argmax(1) == y_held).float().mean().item()
        seconds[epoch] = time.perf_counter() - start
    return Run(p_given, margin, held_logits, held_acc, seconds)


def at_k(score: np.ndarray, moved: np.ndarray, factor: int = 1) -> float:
    """Fraction of the moved images among the ``factor * k`` most suspect (k = number moved).

    With ``factor=1`` this is precision@k and recall@k at once; with 2, recall@2k.
    """
    k = int(moved.sum())
    if k == 0:
        return float("nan")
    top = S.rank(score)[: factor * k]
    return float(moved[top].sum() / k)


def train_methods(run: Run, epochs: int) -> dict[str, np.ndarray]:
    """Single-training suspect scores (higher = more suspect) over the first ``epochs`` epochs."""
    p, m = run.p_given[:epochs], run.margin[:epochs]
    scores = S.suspect_scores(p, m)
    return {
        "mean loss": scores["loss"],
        "AUM": scores["aum"],
        "AUM from epoch 5": -S.aum(m, start=5),
        "AUM last half": scores["aum_late"],
        "confidence": scores["confidence"],
        "confidence last half": 1 - S.cartography(p, start=0.5)[0],
        "hard to learn (1-conf-var)": scores["hard_to_learn"],
        "forgetting (tie: AUM)": S.quantile(scores["forgetting"], scores["aum"]),
        "last-epoch margin": -m[-1].astype(np.float64),
        "ranks: AUM + confidence": S.quantile(scores["aum"]) + S.quantile(scores["confidence"]),
    }


@dataclass
class Row:
    """One method's result on one seed, learning rate and epoch count; ``metrics`` by split and measure."""

    seed: int
    epochs: int
    lr: float
    method: str
    trainings: str
    seconds: float
    metrics: dict[str, float]


def metrics(score: np.ndarray, moved: np.ndarray, parts: dict[str, np.ndarray]) -> dict[str, float]:
    """``P@k`` (= ``R@k``) and ``R@2k`` of ``score`` (over all images) within each part (index array)."""
    out = {}
    for part, idx in parts.items():
        out[f"{part} P@k"] = at_k(score[idx], moved[idx])
        out[f"{part} R@2k"] = at_k(score[idx], moved[idx], 2)
    return out


def merged(n: int, parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """One score over all images from per-split scores of different scales: each split's quantiles.

    Assumes both splits hold about the same fraction of label errors, which a stratified split of
    randomly placed errors does.
    """
    out = np.full(n, np.nan)
    for idx, score in parts:
        out[idx] = S.quantile(score)
    return out


def single_training_rows(
    seed: int,
    lr: float,
    epochs: int,
    run: Run,
    y: np.ndarray,
    moved: np.ndarray,
    tr: np.ndarray,
    va: np.ndarray,
) -> list[Row]:
    """Train images by their dynamics, val images by ``p_given`` under the best-val-accuracy model."""
    parts = {"train": tr, "val": va, "all": np.arange(len(y))}
    per_epoch = [S.val_scores(run.held_logits[e], y[va]) for e in range(epochs)]
    val = per_epoch[run.best_epoch(epochs)].suspect  # best_epoch < epochs
    seconds = float(run.seconds[epochs - 1])

    def row(name: str, train_score: np.ndarray, val_score: np.ndarray) -> Row:
        return Row(
            seed,
            epochs,
            lr,
            name,
            1,
            seconds,
            metrics(merged(len(y), [(tr, train_score), (va, val_score)]), moved, parts),
        )

    rows = [row(name, score, val) for name, score in train_methods(run, epochs).items()]
    # how else the val images could be scored from the same run (train images: AUM)
    val_p = np.stack([scores.p_given for scores in per_epoch])
    variants = {
        "val: best-model p_given": val,
        "val: mean p_given over epochs": 1 - val_p.mean(axis=0),
        "val: last-epoch p_given": 1 - val_p[-1],
        "val: AUM over epochs": -np.stack([scores.margin for scores in per_epoch]).mean(axis=0),
    }
    aum = -S.aum(run.margin[:epochs])
    rows += [row(name, aum, score) for name, score in variants.items()]
    return rows


def cleanlab_scores(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(1 - self-confidence, flagged mask)`` from cleanlab on out-of-fold probabilities."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(y, probs, method="self_confidence")
    flagged = np.zeros(len(y), bool)
    flagged[find_label_issues(y, probs, return_indices_ranked_by="self_confidence")] = True
    return 1 - quality, flagged


def softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits).double(), dim=-1).numpy()


def cross_fit_rows(
    seed: int,
    lr: float,
    epochs: int,
    folds: list[tuple[np.ndarray, Run]],
    name: str,
    trainings: str,
    y: np.ndarray,
    moved: np.ndarray,
    tr: np.ndarray,
    va: np.ndarray,
) -> list[Row]:
    """cleanlab on out-of-fold probabilities: from each fold's final model, or its best held-out epoch.

    ``folds`` pairs each held-out index array with the run that did not train on it; the wall time is that
    of the runs counted in ``trainings`` (a reused single training costs nothing extra).
    """
    parts = {"train": tr, "val": va, "all": np.arange(len(y))}
    counted = folds[1:] if trainings.startswith("1+") else folds
    seconds = sum(float(r.seconds[epochs - 1]) for _, r in counted)
    pick: dict[str, Callable[[Run], int]] = {
        "final": lambda r: epochs - 1,
        "best epoch": lambda r: r.best_epoch(epochs),
    }
    rows = []
    for variant, epoch_of in pick.items():
        probs = np.zeros((len(y), int(y.max()) + 1))
        for held, r in folds:
            probs[held] = softmax(r.held_logits[epoch_of(r)])
        score, flagged = cleanlab_scores(probs, y)
        found = metrics(score, moved, parts)
        found["flagged"] = float(flagged.sum())
        found["flagged precision"] = float(moved[flagged].mean()) if flagged.any() else float("nan")
        found["flagged recall"] = float(moved[flagged].sum() / moved.sum())
        rows.append(Row(seed, epochs, lr, f"{name} ({variant})", trainings, seconds, found))
    return rows


def experiment(
    seed: int, epochs_list: list[int], lrs: list[float], per_class: int, noise: float, folds: list[int]
) -> tuple[list[Row], dict[tuple[float, int], float]]:
    """All methods on one generated folder: per lr, one training plus each k-fold cross-training.

    One more cross-fit reuses the single training as its first fold (its val split is 1/4 of the images,
    held out): three more trainings, each holding out a stratified third of the train split, complete
    out-of-fold probabilities for every image. Returns the rows and the single training's best val
    accuracy per ``(lr, epochs)``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_image_folder(Path(tmp) / "data", per_class=per_class, noise_fraction=noise, seed=seed)
        x, y, moved = load(folder)
    idx = np.arange(len(y))
    tr, va = train_test_split(idx, test_size=round(len(y) * VAL_FRACTION), stratify=y, random_state=seed)
    tr, va = np.sort(tr), np.sort(va)
    max_epochs = max(epochs_list)
    rows: list[Row] = []
    accuracy: dict[tuple[float, int], float] = {}
    for lr in lrs:
        run = train(x, y, tr, va, max_epochs, lr, seed)
        cross = {
            (f"cleanlab {k}-fold", str(k)): [
                (held, train(x, y, fit, held, max_epochs, lr, seed))
                for fit, held in StratifiedKFold(k, shuffle=True, random_state=seed).split(idx, y)
            ]
            for k in folds
        }
        thirds = StratifiedKFold(3, shuffle=True, random_state=seed).split(tr, y[tr])
        cross[("cleanlab 4-fold reusing the run", "1+3")] = [(va, run)] + [
            (tr[held], train(x, y, np.setdiff1d(idx, tr[held]), tr[held], max_epochs, lr, seed))
            for _, held in thirds
        ]
        for epochs in epochs_list:
            accuracy[(lr, epochs)] = float(run.held_acc[run.best_epoch(epochs)])
            rows += single_training_rows(seed, lr, epochs, run, y, moved, tr, va)
            for (name, trainings), fold_runs in cross.items():
                rows += cross_fit_rows(seed, lr, epochs, fold_runs, name, trainings, y, moved, tr, va)
    return rows, accuracy


def markdown(rows: list[Row], accuracy: dict[int, dict[tuple[float, int], float]]) -> str:
    """Mean over seeds per ``(epochs, lr, method)``; the headline P@k columns also list each seed."""
    seeds = sorted({r.seed for r in rows})
    groups: dict[tuple[int, float, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.epochs, r.lr, r.method), []).append(r)

    def cell(group: list[Row], key: str, each: bool = False) -> str:
        values = [r.metrics[key] for r in group]
        mean = f"**{np.mean(values):.2f}**" if each else f"{np.mean(values):.2f}"
        return f"{mean} ({' '.join(f'{v:.2f}' for v in values)})" if each and len(values) > 1 else mean

    out = [
        f"Seeds {' '.join(map(str, seeds))}: mean, then each seed in brackets. k = moved images in that part; "
        "P@k equals R@k there. Single-training rows score val images by p_given under the best-val-accuracy "
        "model (the val: rows vary that, with train by AUM); `all` merges train and val by quantile.\n\n",
        "| epochs | lr | method | trainings | train P@k=R@k | train R@2k | val P@k | all P@k=R@k | all R@2k "
        "| wall s |\n",
        "|---|---|---|---|---|---|---|---|---|---|\n",
    ]
    for (epochs, lr, method), group in groups.items():
        out.append(
            f"| {epochs} | {lr:.4g} | {method} | {group[0].trainings} | {cell(group, 'train P@k', True)} | "
            f"{cell(group, 'train R@2k')} | {cell(group, 'val P@k')} | {cell(group, 'all P@k', True)} | "
            f"{cell(group, 'all R@2k')} | {np.mean([r.seconds for r in group]):.1f} |\n"
        )
    out.append("\nBest val accuracy of the single training (given labels), per seed:\n\n")
    out.append("| lr | epochs | " + " | ".join(f"seed {s}" for s in seeds) + " |\n")
    out.append("|---|---|" + "---|" * len(seeds) + "\n")
    for lr, epochs in accuracy[seeds[0]]:
        values = " | ".join(f"{accuracy[s][(lr, epochs)]:.2f}" for s in seeds)
        out.append(f"| {lr:.4g} | {epochs} | {values} |\n")
    out.append("\ncleanlab `find_label_issues` (its own flagged set, all images):\n\n")
    out.append(
        "| epochs | lr | method | seed | flagged | precision | recall |\n|---|---|---|---|---|---|---|\n"
    )
    for r in rows:
        if "flagged" in r.metrics:
            m = r.metrics
            out.append(
                f"| {r.epochs} | {r.lr:.4g} | {r.method} | {r.seed} | {m['flagged']:.0f} | "
                f"{m['flagged precision']:.2f} | {m['flagged recall']:.2f} |\n"
            )
    return "".join(out)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[30, 100])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.01, FAN_IN_LR])
    parser.add_argument("--folds", type=int, nargs="+", default=[4, 2], help="k of each cross-training")
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--noise", type=float, default=0.08)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (the benchmark machine is shared)"
    )
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: list[Row] = []
    accuracy: dict[int, dict[tuple[float, int], float]] = {}
    for seed in args.seeds:
        seed_rows, accuracy[seed] = experiment(
            seed, sorted(args.epochs), args.lrs, args.per_class, args.noise, args.folds
        )
        rows += seed_rows
    table = markdown(rows, accuracy)
    print(table)
    if args.out:
        args.out.write_text(table)
    return table


if __name__ == "__main__":
    main()
