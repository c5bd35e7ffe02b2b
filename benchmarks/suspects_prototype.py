"""Which label-error scores and flag rules should lossdiag use? Measured on folders with known moved images.

Plain-PyTorch trainings of ShallowNet (the default model, SGD momentum 0.9, batch 32, ``optimizer.lr=auto``,
a stratified 25% val split as ``src.train`` makes it) on three kinds of data with 8% of the labels moved
(``lossdiag.data.synthetic``): ``colours`` (easy: learned in one epoch), ``stripes`` (slow: ~0.75 val accuracy
after 40 epochs) and the sklearn ``digits`` written as a folder. Each training records what a run records:
every training image's ``p_given`` and ``margin`` from its own training step (float16) and the held-out
logits of every epoch. From one training the candidate one-training scores are computed; from K more
trainings on K folds of the train split (each trained on the other folds plus the val split, as
``suspects.folds=K`` does) out-of-fold probabilities for every training image, scored with cleanlab alone
and combined with the dynamics. Flag rules are scored by precision and recall against the moved images.

    python -m benchmarks.suspects_prototype --seeds 0 1 2 --cache /tmp/suspects-cache \
        --out benchmarks/results/suspects_prototype.md     # 45 trainings: ~1.5 h on 2 shared cores

``--cache`` keeps every training's records, so the comparison can be re-run (seconds) after a change of the
scores. The learning rate is constant, so the first 40 epochs of a 100-epoch training are a 40-epoch run: every
row reads the records up to its epoch count.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.model_selection import StratifiedKFold, train_test_split

from lossdiag.data.synthetic import GeneratedFolder, make_digits_folder, make_image_folder
from lossdiag.functional import suspects as S
from lossdiag.models.shallownet import ShallowNet

BATCH = 32
VAL_FRACTION = 0.25
KINDS = ("colours", "stripes", "digits")


def make_folder(kind: str, root: Path, seed: int, noise: float, per_class: int = 200) -> GeneratedFolder:
    """One folder of ``kind`` with ``noise`` of its labels moved (the digits: all 1,797, ``per_class`` unused)."""
    if kind == "digits":
        return make_digits_folder(root, noise_fraction=noise, seed=seed)
    return make_image_folder(root, per_class=per_class, noise_fraction=noise, seed=seed, kind=kind)


def load(folder: GeneratedFolder) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """``(x in [0, 1] (N, C, H, W), given labels, moved mask)`` in the generator's file order."""
    index = {name: i for i, name in enumerate(folder.class_names)}
    images = [np.asarray(Image.open(p)) for p in folder.files]
    x = torch.from_numpy(np.stack(images)).float() / 255
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    given = np.array([index[folder.given_class[p]] for p in folder.files])
    moved = np.array([folder.true_class[p] != folder.given_class[p] for p in folder.files])
    return x.contiguous(), given, moved


@dataclass
class Run:
    """One training: per-epoch dynamics of its training images and logits of its held-out images."""

    p_given: np.ndarray  # (E, n_train) float16
    margin: np.ndarray  # (E, n_train) float16
    held_logits: np.ndarray  # (E, n_held, C) float32
    held_given: np.ndarray  # (n_held,)
    seconds: np.ndarray  # (E,) cumulative wall seconds
    fit: np.ndarray | None = None  # the trained images (indices into the folder), in p_given's column order

    def save(self, path: Path) -> None:
        np.savez(path, **{k: getattr(self, k) for k in ("p_given", "margin", "held_logits", "held_given",
                                                          "seconds", "fit")})  # fmt: skip

    @classmethod
    def load(cls, path: Path) -> Run:
        with np.load(path) as data:
            return cls(**{k: data[k] for k in data.files})

    def held_loss(self, epochs: int) -> np.ndarray:
        """Mean held-out cross-entropy on the given labels of each of the first ``epochs`` epochs."""
        logits = torch.from_numpy(self.held_logits[:epochs])
        target = torch.from_numpy(self.held_given).expand(epochs, -1)
        return (
            F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
            .view(epochs, -1)
            .mean(1)
            .numpy()
        )

    def held_acc(self, epochs: int) -> np.ndarray:
        return (self.held_logits[:epochs].argmax(-1) == self.held_given).mean(1)

    def min_epoch(self, epochs: int) -> int:
        """0-based epoch of the lowest held-out loss (what the verdict calls the min epoch)."""
        return int(np.argmin(self.held_loss(epochs)))

    def best_epoch(self, epochs: int) -> int:
        """0-based epoch of the best held-out accuracy, the first on ties (best.ckpt)."""
        return int(np.argmax(self.held_acc(epochs)))

    def probs(self, epoch: int) -> np.ndarray:
        return torch.softmax(torch.from_numpy(self.held_logits[epoch]).double(), -1).numpy()


def fan_in_lr(fan_in: int) -> float:
    """The fixed rate these results were measured with (the project's default before ``optimizer.lr=auto`` became
    a range test): 0.1 x 2048 / the fan-in of ShallowNet's linear layer (0.1 for the 8x8 digits)."""
    return 0.1 * 2048 / fan_in


def train(x: torch.Tensor, y: np.ndarray, fit: np.ndarray, held: np.ndarray, epochs: int, seed: int) -> Run:
    """SGD as ``src.train`` does, recording each training image's dynamics from its own training step."""
    torch.manual_seed(seed)
    classes = int(y.max()) + 1
    net = ShallowNet(x.shape[3], x.shape[2], x.shape[1], classes)
    opt = torch.optim.SGD(net.parameters(), lr=fan_in_lr(net.fc1.in_features), momentum=0.9)
    shuffle = torch.Generator().manual_seed(seed)
    y_t = torch.from_numpy(y)
    x_held = x[held]
    n = len(fit)
    p_given = np.zeros((epochs, n), np.float16)
    margin = np.zeros((epochs, n), np.float16)
    held_logits = np.zeros((epochs, len(held), classes), np.float32)
    seconds = np.zeros(epochs)
    start = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        for batch in torch.randperm(n, generator=shuffle).split(BATCH):
            rows = fit[batch.numpy()]
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
            held_logits[epoch] = net(x_held).numpy()
        seconds[epoch] = time.perf_counter() - start
    return Run(p_given, margin, held_logits, y[held], seconds, fit)


def cached_train(cache: Path | None, name: str, *args: object) -> Run:
    """:func:`train`, or its result saved under ``cache`` by an earlier call with the same ``name``."""
    path = cache / f"{name}.npz" if cache else None
    if path is not None and path.is_file():
        return Run.load(path)
    run = train(*args)  # type: ignore[arg-type]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        run.save(path)
    return run


# -- candidates ----------------------------------------------------------------------------------------------
def train_candidates(run: Run, epochs: int) -> dict[str, np.ndarray]:
    """One-training scores of the training images (higher = more suspect) from the first ``epochs`` epochs."""
    from scipy.stats import rankdata

    m, p = run.margin[:epochs].astype(np.float64), run.p_given[:epochs].astype(np.float64)
    lo = run.min_epoch(epochs)
    ranks = np.stack([rankdata(-row) / len(row) for row in m])  # each epoch's rank: 1 = lowest margin
    return {
        "AUM, all epochs (before)": -m.mean(0),
        "AUM, epochs to the val-loss min": -m[: lo + 1].mean(0),
        "AUM, first 5 epochs": -m[:5].mean(0),
        "AUM, first 10 epochs": -m[:10].mean(0),
        "AUM, first 20 epochs": -m[:20].mean(0),
        "mean per-epoch rank of the margin, all epochs": ranks.mean(0),
        "1 - p_given, epochs to the val-loss min": 1 - p[: lo + 1].mean(0),
        "AUM, twice the epochs to the val-loss min (product)": S.early_aum(m, S.early_window(lo, epochs)),
    }


def val_p_given(run: Run, epochs: int) -> np.ndarray:
    """``(epochs, n_held)`` p of the given label of every held-out image after each epoch."""
    idx = np.arange(len(run.held_given))
    return np.stack([run.probs(e)[idx, run.held_given] for e in range(epochs)])


def val_candidates(run: Run, epochs: int) -> dict[str, np.ndarray]:
    """Scores of the val images (never trained on) from the same training."""
    best, lo = run.best_epoch(epochs), run.min_epoch(epochs)
    p = val_p_given(run, epochs)
    early = p[: S.early_window(lo, epochs)].mean(0)
    return {
        "best-model p_given (before)": 1 - p[best],
        "min-loss-epoch p_given": 1 - p[lo],
        "last-epoch p_given": 1 - p[-1],
        "mean p_given over the early window": 1 - early,
        "last-epoch and early mean": S.val_suspicion(p[-1], early),
        "best-model and early mean (product)": S.val_suspicion(p[best], early),
    }


def oof_probs(folds: list[tuple[np.ndarray, Run]], n: int, c: int, epochs: int, pick: str) -> np.ndarray:
    """Out-of-fold probabilities of the images ``folds`` hold out (rows of the other images stay 0)."""
    probs = np.zeros((n, c))
    for held, r in folds:
        if pick == "best epoch":
            probs[held] = r.probs(r.best_epoch(epochs))
        elif pick == "last epoch":
            probs[held] = r.probs(epochs - 1)
        else:  # mean over the second half of the epochs
            probs[held] = np.mean([r.probs(e) for e in range(epochs // 2, epochs)], axis=0)
    return probs


def ensemble_aum(
    run: Run, folds: list[tuple[np.ndarray, Run]], n: int, tr: np.ndarray, epochs: int
) -> np.ndarray:
    """Every image's early-window AUM (suspicion) averaged over the trainings that learned it: the run (train
    images) and the folds (the rest of train, and val), each with its own early window."""
    total, count = np.zeros(n), np.zeros(n)
    for fit, r in [(tr, run), *((r.fit, r) for _, r in folds)]:
        total[fit] += S.early_aum(r.margin[:epochs], S.early_window(r.min_epoch(epochs), epochs))
        count[fit] += 1
    return total / np.maximum(count, 1)


# -- metrics -------------------------------------------------------------------------------------------------
def at_k(score: np.ndarray, moved: np.ndarray) -> float:
    """precision@k = recall@k, k = number moved."""
    k = int(moved.sum())
    return float(moved[S.rank(score)[:k]].sum() / k) if k else float("nan")


def merged(n: int, parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """One score over both splits: each split's quantiles, as suspects.csv merges them."""
    out = np.full(n, np.nan)
    for idx, score in parts:
        out[idx] = S.quantile(score)
    return out


def flag_metrics(flag: np.ndarray, moved: np.ndarray, prefix: str = "") -> dict[str, float]:
    hits = int((flag & moved).sum())
    return {
        f"{prefix}flagged": float(flag.sum()),
        f"{prefix}flag precision": hits / flag.sum() if flag.any() else float("nan"),
        f"{prefix}flag recall": hits / moved.sum() if moved.any() else float("nan"),
    }


@dataclass
class Row:
    kind: str
    seed: int
    epochs: int
    group: str
    method: str
    trainings: int
    seconds: float
    metrics: dict[str, float]


@dataclass
class Data:
    """One folder, its split and its trainings."""

    y: np.ndarray
    moved: np.ndarray
    tr: np.ndarray
    va: np.ndarray
    run: Run
    folds: list[tuple[np.ndarray, Run]]

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def c(self) -> int:
        return int(self.y.max()) + 1


def one_training_rows(d: Data, epochs: int) -> list[tuple[str, str, dict[str, float]]]:
    """Scores and flags of one training."""
    out = []
    trains, vals = train_candidates(d.run, epochs), val_candidates(d.run, epochs)
    out += [
        ("one training: train images", name, {"P@k": at_k(s, d.moved[d.tr])}) for name, s in trains.items()
    ]
    out += [("one training: val images", name, {"P@k": at_k(s, d.moved[d.va])}) for name, s in vals.items()]
    for name, t, v in (("before", "AUM, all epochs (before)", "best-model p_given (before)"),
                       ("product", "AUM, twice the epochs to the val-loss min (product)",
                        "best-model and early mean (product)")):  # fmt: skip
        out.append(
            (
                "one training: all images",
                name,
                {"P@k": at_k(merged(d.n, [(d.tr, trains[t]), (d.va, vals[v])]), d.moved)},
            )
        )
    lo, best = d.run.min_epoch(epochs), d.run.best_epoch(epochs)
    m = d.run.margin[: S.early_window(lo, epochs)]
    pv = d.run.probs(best)
    yv = d.y[d.va]
    t = S.class_thresholds(pv[np.arange(len(yv)), yv], yv, d.c)
    val_cl = S.confident_other(pv.argmax(1), pv.max(1), yv, t)
    rules = {
        "before: AUM < 0; val: the model says another class": (-S.aum(d.run.margin[:epochs]) > 0, pv.argmax(1) != yv),
        "early mean margin < 0; val: per-class thresholds": (m.astype(np.float64).mean(0) < 0, val_cl),
        "product: below its class's robust bound and 0; val: per-class thresholds": (S.train_flags(m, d.y[d.tr], d.c), val_cl),
    }  # fmt: skip
    for name, (ft, fv) in rules.items():
        both = np.zeros(d.n, bool)
        both[d.tr], both[d.va] = ft, fv
        metrics = {**flag_metrics(ft, d.moved[d.tr], "train "), **flag_metrics(fv, d.moved[d.va], "val "),
                   **flag_metrics(both, d.moved, "all ")}  # fmt: skip
        out.append(("one training: flags", name, metrics))
    return out


def folds_rows(d: Data, epochs: int, k: int) -> list[tuple[str, str, dict[str, float]]]:
    """cleanlab alone on the out-of-fold probabilities, and its combinations with the dynamics."""
    from cleanlab.filter import find_label_issues

    out = []
    yt, yv = d.y[d.tr], d.y[d.va]
    lo, best = d.run.min_epoch(epochs), d.run.best_epoch(epochs)
    pv = d.run.probs(best)
    val_flags = S.confident_other(
        pv.argmax(1), pv.max(1), yv, S.class_thresholds(pv[np.arange(len(yv)), yv], yv, d.c)
    )
    ens = ensemble_aum(d.run, d.folds, d.n, d.tr, epochs)
    main = S.early_aum(d.run.margin[:epochs], S.early_window(lo, epochs))
    val_product = val_candidates(d.run, epochs)["best-model and early mean (product)"]
    val_folds = S.combine(S.quantile(ens[d.va]), S.quantile(val_product), 0.5)
    for pick in ("best epoch", "last epoch", "mean of the second half"):
        probs = oof_probs(d.folds, d.n, d.c, epochs, pick)
        probs[d.va] = pv  # every image: train out of fold, val from the run's best model
        label = f"{k} folds, {pick}"
        quality, cl = S.cleanlab_issues(d.y, probs)
        default = find_label_issues(yt, probs[d.tr], n_jobs=1)
        alone = {"P@k": at_k(1 - quality, d.moved), "train P@k": at_k(1 - quality[d.tr], d.moved[d.tr]),
                 "val P@k": at_k(1 - quality[d.va], d.moved[d.va])}  # fmt: skip
        out.append(("folds: cleanlab alone", label, alone))
        q_oof = S.quantile(1 - quality[d.tr])
        variants = {
            "run's dynamics, weight 0.5": (S.combine(S.quantile(main), q_oof, 0.5), val_product),
            "every training's dynamics, weight 0.25": (
                S.combine(S.quantile(ens[d.tr]), q_oof, 0.25),
                val_folds,
            ),
            "every training's dynamics, weight 0.75": (
                S.combine(S.quantile(ens[d.tr]), q_oof, 0.75),
                val_folds,
            ),
            "every training's dynamics, weight 0.5": (
                S.combine(S.quantile(ens[d.tr]), q_oof, 0.5),
                val_folds,
            ),
        }
        for name, (ts, vs) in variants.items():
            out.append(("folds: + dynamics", f"{label}: {name}, per-split quantiles",
                        {"P@k": at_k(merged(d.n, [(d.tr, ts), (d.va, vs)]), d.moved), "train P@k": at_k(ts, d.moved[d.tr]),
                         "val P@k": at_k(vs, d.moved[d.va])}))  # fmt: skip
        held = np.zeros(d.n)
        held[d.tr], held[d.va] = 1 - quality[d.tr], val_product
        one = S.combine(S.quantile(ens), S.quantile(held), 0.5)
        out.append(("folds: + dynamics", f"{label}: every training's dynamics, weight 0.5, one scale (product)",
                    {"P@k": at_k(one, d.moved), "train P@k": at_k(one[d.tr], d.moved[d.tr]),
                     "val P@k": at_k(one[d.va], d.moved[d.va])}))  # fmt: skip
        dyn_flag = S.train_flags(-ens[d.tr][None], yt, d.c)
        agree = S.quantile(ens[d.tr]) > 0.75
        for name, flag in (("cleanlab default (prune by noise rate)", default),
                           ("cleanlab confident learning", cl[d.tr]),
                           ("product (confident learning where the dynamics agree, or the dynamics)",
                            (cl[d.tr] & agree) | dyn_flag)):  # fmt: skip
            both = np.zeros(d.n, bool)
            both[d.tr], both[d.va] = flag, val_flags
            metrics = {**flag_metrics(flag, d.moved[d.tr], "train "), **flag_metrics(both, d.moved, "all ")}
            out.append(("folds: flags", f"{label}: {name}", metrics))
    return out


def experiment(
    kind: str, seed: int, epochs_list: list[int], k_folds: int, noise: float, cache: Path | None = None,
    per_class: int = 200,
) -> list[Row]:  # fmt: skip
    """Every candidate on one folder: one training, and ``k_folds`` trainings on folds of its train split."""
    with tempfile.TemporaryDirectory() as tmp:
        x, y, moved = load(make_folder(kind, Path(tmp) / "data", seed, noise, per_class))
    n = len(y)
    idx = np.arange(n)
    tr, va = train_test_split(idx, test_size=round(n * VAL_FRACTION), stratify=y, random_state=seed)
    tr, va = np.sort(tr), np.sort(va)
    top = max(epochs_list)
    tag = f"{kind}_seed{seed}_e{top}_noise{noise}" + ("" if per_class == 200 else f"_per{per_class}")
    run = cached_train(cache, f"{tag}_run", x, y, tr, va, top, seed)
    split = StratifiedKFold(k_folds, shuffle=True, random_state=seed).split(tr, y[tr])
    folds = [(tr[h], cached_train(cache, f"{tag}_fold{i}of{k_folds}", x, y, np.sort(np.concatenate([tr[f], va])),
                                  tr[h], top, seed)) for i, (f, h) in enumerate(split)]  # fmt: skip
    d = Data(y, moved, tr, va, run, folds)
    rows: list[Row] = []
    for epochs in epochs_list:
        secs = float(run.seconds[epochs - 1])
        fold_secs = secs + sum(float(r.seconds[epochs - 1]) for _, r in folds)
        rows += [Row(kind, seed, epochs, g, name, 1, secs, m) for g, name, m in one_training_rows(d, epochs)]
        rows += [
            Row(kind, seed, epochs, g, name, 1 + k_folds, fold_secs, m)
            for g, name, m in folds_rows(d, epochs, k_folds)
        ]
        best = run.best_epoch(epochs)
        rows.append(Row(kind, seed, epochs, "accuracy", "best held-out accuracy (given labels)", 1, secs,
                        {"acc": float(run.held_acc(epochs)[best]), "val-loss min epoch": float(run.min_epoch(epochs))}))  # fmt: skip
    return rows


def markdown(rows: list[Row]) -> str:
    """Mean over seeds (and each seed in brackets) per kind, epochs, group and method."""
    groups: dict[tuple[str, int, str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.kind, r.epochs, r.group, r.method), []).append(r)
    out = [
        "# Label-error scores and flags: the prototype's comparison",
        "",
        "`python -m benchmarks.suspects_prototype --seeds 0 1 2 --cache <folder>` (plain-PyTorch ShallowNet trainings, "
        "8% of the labels moved). P@k = R@k with k = the moved images of that part (train, val, or all images, merged "
        "as suspects.csv merges them); flags: count, precision, recall. `s`: wall seconds of the training(s) on a "
        "shared 2-core machine (noisy). `(product)` marks what lossdiag does.",
        "",
        "| data | epochs | group | method | trainings | s | metrics (mean over seeds; each seed) |",
        "|---|---|---|---|---|---|---|",
    ]
    for (kind, epochs, group, method), g in groups.items():
        cells = []
        for key in g[0].metrics:
            values = [r.metrics[key] for r in g]
            each = " ".join(f"{v:.2f}" for v in values)
            finite = [v for v in values if v == v]  # NaN: no moved image or no flag in that part
            cells.append(f"{key} **{np.mean(finite) if finite else float('nan'):.2f}** ({each})")
        secs = np.mean([r.seconds for r in g])
        out.append(
            f"| {kind} | {epochs} | {group} | {method} | {g[0].trainings} | {secs:.0f} | {'; '.join(cells)} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[40, 100])
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--noise", type=float, default=0.08)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--cache", type=Path, help="keep every training's records here and reuse them")
    parser.add_argument(
        "--per-class", type=int, default=200, help="images per class of the generated folders"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: list[Row] = []
    for kind in args.kinds:
        for seed in args.seeds:
            rows += experiment(
                kind, seed, sorted(args.epochs), args.folds, args.noise, args.cache, args.per_class
            )
            print(f"{kind} seed {seed} done", flush=True)
            if args.out:
                args.out.write_text(markdown(rows))
    table = markdown(rows)
    print(table)
    return table


if __name__ == "__main__":
    main()
