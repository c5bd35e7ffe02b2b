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

    python -m benchmarks.suspects_prototype --seeds 0 1 2 --epochs 40 100 --out benchmarks/results/suspects_prototype.md

The learning rate is constant, so the first 40 epochs of a 100-epoch training are a 40-epoch run: every
row reads the records up to its epoch count. cleanlab is needed (``pip install -e ".[dev]"`` has it).
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
from lossdiag.functional.learning_rate import auto_lr
from lossdiag.models.shallownet import ShallowNet

BATCH = 32
VAL_FRACTION = 0.25
KINDS = ("colours", "stripes", "digits")


def make_folder(kind: str, root: Path, seed: int, noise: float) -> GeneratedFolder:
    """One folder of ``kind`` with ``noise`` of its labels moved."""
    if kind == "digits":
        return make_digits_folder(root, noise_fraction=noise, seed=seed)
    return make_image_folder(root, per_class=200, noise_fraction=noise, seed=seed, kind=kind)


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
        return F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view(epochs, -1).mean(1).numpy()

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


def train(x: torch.Tensor, y: np.ndarray, fit: np.ndarray, held: np.ndarray, epochs: int, seed: int) -> Run:
    """SGD as ``src.train`` does, recording each training image's dynamics from its own training step."""
    torch.manual_seed(seed)
    classes = int(y.max()) + 1
    net = ShallowNet(x.shape[3], x.shape[2], x.shape[1], classes)
    opt = torch.optim.SGD(net.parameters(), lr=auto_lr(net.fc1.in_features), momentum=0.9)
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
    m, p = run.margin[:epochs].astype(np.float64), run.p_given[:epochs].astype(np.float64)
    lo = run.min_epoch(epochs)
    out = {
        "AUM, all epochs (today)": -m.mean(0),
        "AUM, epochs to the val-loss min": -m[: lo + 1].mean(0),
        "AUM, epochs to 2x the val-loss min": -m[: 2 * lo + 2].mean(0),
        "AUM, first 5 epochs": -m[:5].mean(0),
        "AUM, first 10 epochs": -m[:10].mean(0),
        "AUM, first 20 epochs": -m[:20].mean(0),
        "1 - p_given, epochs to the val-loss min": 1 - p[: lo + 1].mean(0),
        "loss, epochs to the val-loss min": -np.log(np.clip(p[: lo + 1], 1e-12, 1)).mean(0),
    }
    out["early window (product)"] = S.early_aum(m, S.early_window(lo, epochs))
    return out


def val_candidates(run: Run, epochs: int) -> dict[str, np.ndarray]:
    """Scores of the val images (never trained on) from the same training."""
    best, lo = run.best_epoch(epochs), run.min_epoch(epochs)
    idx = np.arange(len(run.held_given))
    p = np.stack([run.probs(e)[idx, run.held_given] for e in range(epochs)])
    early = p[: S.early_window(lo, epochs)].mean(0)
    return {
        "best-model p_given (today)": 1 - p[best],
        "min-loss-epoch p_given": 1 - p[lo],
        "mean p_given, epochs to the min": 1 - early,
        "best-model and early mean (product)": S.val_suspicion(p[best], early),
        "mean p_given, all epochs": 1 - p.mean(0),
        "last-epoch p_given": 1 - p[-1],
        "last-epoch and early mean": S.val_suspicion(p[-1], early),
    }


def oof_probs(folds: list[tuple[np.ndarray, Run]], n: int, c: int, epochs: int, pick: str) -> np.ndarray:
    """Out-of-fold probabilities of the images ``folds`` hold out (rows of the other images stay 0)."""
    probs = np.zeros((n, c))
    for held, r in folds:
        if pick == "best epoch":
            probs[held] = r.probs(r.best_epoch(epochs))
        elif pick == "last epoch":
            probs[held] = r.probs(epochs - 1)
        else:  # mean over the early window
            window = S.early_window(r.min_epoch(epochs), epochs)
            probs[held] = np.mean([r.probs(e) for e in range(window)], axis=0)
    return probs


# -- metrics -------------------------------------------------------------------------------------------------
def at_k(score: np.ndarray, moved: np.ndarray) -> float:
    """precision@k = recall@k, k = number moved."""
    k = int(moved.sum())
    return float(moved[S.rank(score)[:k]].sum() / k) if k else float("nan")


def merged(n: int, parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    out = np.full(n, np.nan)
    for idx, score in parts:
        out[idx] = S.quantile(score)
    return out


def flag_metrics(flag: np.ndarray, moved: np.ndarray) -> dict[str, float]:
    hits = int((flag & moved).sum())
    return {
        "flagged": float(flag.sum()),
        "flag precision": hits / flag.sum() if flag.any() else float("nan"),
        "flag recall": hits / moved.sum() if moved.any() else float("nan"),
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


def experiment(
    kind: str, seed: int, epochs_list: list[int], k_folds: int, noise: float, cache: Path | None = None
) -> list[Row]:
    """Every candidate on one folder: one training, and ``k_folds`` trainings on folds of its train split."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    with tempfile.TemporaryDirectory() as tmp:
        x, y, moved = load(make_folder(kind, Path(tmp) / "data", seed, noise))
    n, c = len(y), int(y.max()) + 1
    idx = np.arange(n)
    tr, va = train_test_split(idx, test_size=round(n * VAL_FRACTION), stratify=y, random_state=seed)
    tr, va = np.sort(tr), np.sort(va)
    top = max(epochs_list)
    tag = f"{kind}_seed{seed}_e{top}_noise{noise}"
    run = cached_train(cache, f"{tag}_run", x, y, tr, va, top, seed)
    split = StratifiedKFold(k_folds, shuffle=True, random_state=seed).split(tr, y[tr])
    folds = [(tr[h], cached_train(cache, f"{tag}_fold{i}of{k_folds}", x, y, np.sort(np.concatenate([tr[f], va])),
                                  tr[h], top, seed)) for i, (f, h) in enumerate(split)]  # fmt: skip
    rows: list[Row] = []
    for epochs in epochs_list:
        secs = float(run.seconds[epochs - 1])
        fold_secs = sum(float(r.seconds[epochs - 1]) for _, r in folds)

        def add(group: str, method: str, trainings: int, seconds: float, metrics: dict[str, float],
                epochs: int = epochs) -> None:  # fmt: skip
            rows.append(Row(kind, seed, epochs, group, method, trainings, seconds, metrics))

        trains, vals = train_candidates(run, epochs), val_candidates(run, epochs)
        val_product = vals["best-model and early mean (product)"]
        for name, score in trains.items():
            add("one training: train images", name, 1, secs, {"P@k": at_k(score, moved[tr])})
        train_product = trains["early window (product)"]
        for name, score in vals.items():
            add("one training: val images", name, 1, secs, {"P@k": at_k(score, moved[va])})
        for (tname, tscore), vscore in [(("today", trains["AUM, all epochs (today)"]), vals["best-model p_given (today)"]),
                                        (("product", train_product), val_product)]:  # fmt: skip
            add("one training: all images", tname, 1, secs, {"P@k": at_k(merged(n, [(tr, tscore), (va, vscore)]), moved)})
        window = S.early_window(run.min_epoch(epochs), epochs)
        p_early_train = run.p_given[:window].astype(np.float64).mean(0)
        raw = np.zeros(n)
        raw[tr], raw[va] = 1 - p_early_train, val_product
        add("one training: all images", "product, merged by value (1 - early p_given)", 1, secs, {"P@k": at_k(raw, moved)})
        # flags of one training
        best = run.best_epoch(epochs)
        pv = run.probs(best)
        t = S.class_thresholds(pv[np.arange(len(va)), y[va]], y[va], c)
        lo = run.min_epoch(epochs)
        window = S.early_window(lo, epochs)
        m_early = run.margin[:window].astype(np.float64)
        p_early = run.p_given[:window].astype(np.float64)
        flag_rules: dict[str, tuple[np.ndarray, np.ndarray]] = {
            "today: AUM < 0 | model says another": (-S.aum(run.margin[:epochs]) > 0, pv.argmax(1) != y[va]),
            "early AUM < 0 | CL threshold": (m_early.mean(0) < 0, S.confident_other(pv.argmax(1), pv.max(1), y[va], t)),
            "out-scored in 3/4 of early epochs | CL threshold": ((m_early < 0).mean(0) >= 0.75, S.confident_other(pv.argmax(1), pv.max(1), y[va], t)),
            "product": (S.train_flags(m_early, p_early, y[tr], c), S.confident_other(pv.argmax(1), pv.max(1), y[va], t)),
            "early AUM < 0 and early p_given below half its class mean": (
                (m_early.mean(0) < 0) & (p_early.mean(0) < 0.5 * S.class_thresholds(p_early.mean(0), y[tr], c)[y[tr]]),
                S.confident_other(pv.argmax(1), pv.max(1), y[va], t)),
        }  # fmt: skip
        for name, (ft, fv) in flag_rules.items():
            add("one training: flags", f"train {name}", 1, secs, {f"train {k}": v for k, v in flag_metrics(ft, moved[tr]).items()})
            add("one training: flags", f"val {name}", 1, secs, {f"val {k}": v for k, v in flag_metrics(fv, moved[va]).items()})
        pl = run.probs(epochs - 1)
        tl = S.class_thresholds(pl[np.arange(len(va)), y[va]], y[va], c)
        fl = S.confident_other(pl.argmax(1), pl.max(1), y[va], tl)
        add("one training: flags", "val CL threshold, last model", 1, secs, {f"val {k}": v for k, v in flag_metrics(fl, moved[va]).items()})
        # K folds
        for pick in ("best epoch", "last epoch", "early mean"):
            probs = oof_probs(folds, n, c, epochs, pick)
            probs[va] = pv
            quality = get_label_quality_scores(y, probs, method="self_confidence")
            cl = 1 - quality
            issues = np.zeros(n, bool)
            issues[find_label_issues(y, probs)] = True
            label = f"{k_folds} folds ({pick})"
            add("cleanlab alone", label, 1 + k_folds, secs + fold_secs,
                {"P@k": at_k(cl, moved), "train P@k": at_k(cl[tr], moved[tr]),
                 **{f"train {k}": v for k, v in flag_metrics(issues[tr], moved[tr]).items()}})  # fmt: skip
            oof_p = probs[tr, y[tr]]
            t_oof = S.class_thresholds(oof_p, y[tr], c)
            for w in (0.25, 0.5, 0.75):
                comb = S.combine(S.quantile(train_product), S.quantile(1 - oof_p), w)
                add("folds + dynamics", f"{label}, weight {w} on folds", 1 + k_folds, secs + fold_secs,
                    {"P@k": at_k(merged(n, [(tr, comb), (va, val_product)]), moved), "train P@k": at_k(comb, moved[tr])})  # fmt: skip
            raw = np.zeros(n)
            raw[tr], raw[va] = 1 - 0.5 * (oof_p + p_early_train), val_product
            add("folds + dynamics", f"{label}, mean of OOF and early p_given, merged by value", 1 + k_folds,
                secs + fold_secs, {"P@k": at_k(raw, moved), "train P@k": at_k(raw[tr], moved[tr])})  # fmt: skip
            cl_flag = S.confident_other(probs[tr].argmax(1), probs[tr].max(1), y[tr], t_oof)
            add("folds: flags", f"{label}: CL threshold", 1 + k_folds, secs + fold_secs,
                {f"train {k}": v for k, v in flag_metrics(cl_flag, moved[tr]).items()})  # fmt: skip
            both = cl_flag | (S.train_flags(m_early, p_early, y[tr], c) & (oof_p < t_oof[y[tr]]))
            add("folds: flags", f"{label}: CL threshold or early flag below its class threshold", 1 + k_folds,
                secs + fold_secs, {f"train {k}": v for k, v in flag_metrics(both, moved[tr]).items()})  # fmt: skip
        add("accuracy", "best held-out accuracy (given labels)", 1, secs,
            {"acc": float(run.held_acc(epochs)[best]), "min epoch": float(lo), "window": float(window)})  # fmt: skip
    return rows


def markdown(rows: list[Row]) -> str:
    """Mean over seeds (and each seed in brackets) per kind, epochs, group and method."""
    groups: dict[tuple[str, int, str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.kind, r.epochs, r.group, r.method), []).append(r)
    out = ["| data | epochs | group | method | trainings | s | metrics (mean over seeds; each seed) |",
           "|---|---|---|---|---|---|---|"]  # fmt: skip
    for (kind, epochs, group, method), g in groups.items():
        cells = []
        for key in g[0].metrics:
            values = [r.metrics[key] for r in g]
            each = " ".join(f"{v:.2f}" for v in values)
            cells.append(f"{key} **{np.nanmean(values):.2f}** ({each})")
        secs = np.mean([r.seconds for r in g])
        out.append(f"| {kind} | {epochs} | {group} | {method} | {g[0].trainings} | {secs:.0f} | {'; '.join(cells)} |")
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
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: list[Row] = []
    for kind in args.kinds:
        for seed in args.seeds:
            rows += experiment(kind, seed, sorted(args.epochs), args.folds, args.noise, args.cache)
            print(f"{kind} seed {seed} done", flush=True)
            if args.out:
                args.out.write_text(markdown(rows))
    table = markdown(rows)
    print(table)
    return table

if __name__ == "__main__":
    main()
