"""The written verdict (``diagnosis.md``): why did val loss rise, in plain words, with the run's own numbers.

Everything is computed from :class:`~src.samples.Samples` (what ``samples.npz`` holds), so anyone can
re-derive every number from that file. The verdict distinguishes three cases: the forum phenomenon
(val loss rose after its minimum while accuracy held), a rise with falling accuracy (the model got
worse, not just more confident), and no rise (nothing to explain, and it says so). A single
evaluation (``src.evaluate``) has no history: it reports where the loss comes from and calibration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from src.calibration import T_MAX
from src.decomposition import Evaluation, correct_wrong_breakdown, worst_share
from src.diagnostics import count_above_cap, worst_indices
from src.losses import bound_losses
from src.samples import Samples

RISE_TOLERANCE = 0.05  # relative rise of val loss above its minimum that counts as "rose"
ACC_TOLERANCE = 0.02  # absolute drop of val accuracy that still counts as "held"
EXTREME_RATIO = 10.0  # a sample whose loss is this many times the mean is called an extreme outlier


@dataclass
class Diagnosis:
    numbers: dict[str, Any]
    markdown: str
    summary: str


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _p(x: float) -> str:
    return f"{x:.3g}"


def _loss(x: float) -> str:
    return f"{x:.4f}"


def final_numbers(ev: Evaluation, target: np.ndarray, cap: float) -> dict[str, Any]:
    """Where one evaluation's mean loss comes from (shares of the worst samples, wrong samples)."""
    correct = ev.correct(target)
    parts = correct_wrong_breakdown(ev, target)
    top1, n1 = worst_share(ev.loss, 0.01)
    top5, n5 = worst_share(ev.loss, 0.05)
    loss = ev.loss.astype(np.float64)
    return {
        "loss": float(loss.mean()),
        "acc": float(correct.mean()),
        "n": len(loss),
        "top1_share": top1,
        "top1_n": n1,
        "top5_share": top5,
        "top5_n": n5,
        "wrong_share": parts["share_from_wrong"],
        "n_wrong": int(parts["n_wrong"]),
        "loss_from_wrong": parts["loss_from_wrong"],
        "loss_from_correct": parts["loss_from_correct"],
        "conf_wrong_mean": parts["conf_wrong_mean"],
        "p_true_correct_mean": parts["p_true_correct_mean"],
        "bounded": float(bound_losses(torch.from_numpy(loss), cap).mean()),
        "n_above_cap": int(count_above_cap(torch.from_numpy(loss), cap)),
        **{k: float(v) for k, v in ev.calibration.items()},
    }


def diagnose(samples: Samples, n_extreme: int = 3, model: str | None = None) -> Diagnosis:
    """Numbers and text of the verdict for a run (or, ``model=<name>``, one evaluated model)."""
    target = samples.val.target
    if model is not None:
        evals, epochs = [samples.models[model]["val"]], [samples.model_epoch[model]]
    else:
        evals, epochs = samples.val_epochs, samples.epochs
    if not evals:
        raise ValueError("no validation outputs recorded: nothing to diagnose")
    losses = [float(e.loss.astype(np.float64).mean()) for e in evals]
    accs = [float(e.correct(target).mean()) for e in evals]
    i_min = int(np.argmin(losses))
    last, at_min = evals[-1], evals[i_min]
    n: dict[str, Any] = {
        "epochs": len(evals),
        "min_epoch": epochs[i_min],
        "min_loss": losses[i_min],
        "last_epoch": epochs[-1],
        "last_loss": losses[-1],
        "rise": losses[-1] - losses[i_min],
        "rise_rel": (losses[-1] - losses[i_min]) / losses[i_min] if losses[i_min] > 0 else 0.0,
        "acc_at_min": accs[i_min],
        "acc_last": accs[-1],
        "acc_best": max(accs),
        "acc_best_epoch": epochs[int(np.argmax(accs))],
        "loss_cap": samples.loss_cap,
    }
    n["history"] = len(evals) > 1
    n["rose"] = n["history"] and n["rise_rel"] > RISE_TOLERANCE
    n["acc_held"] = n["acc_last"] >= n["acc_at_min"] - ACC_TOLERANCE
    n["phenomenon"] = bool(n["rose"] and n["acc_held"])
    n["final"] = final_numbers(last, target, samples.loss_cap)
    n["at_min"] = final_numbers(at_min, target, samples.loss_cap)
    # which samples the rise comes from: per-sample change between the min-loss epoch and the end
    delta = (last.loss.astype(np.float64) - at_min.loss.astype(np.float64)) / len(target)
    worst5 = worst_indices(last.loss, n["final"]["top5_n"])
    wrong = ~last.correct(target)
    n["rise_from_worst5"] = float(delta[worst5].sum())
    n["rise_from_wrong"] = float(delta[wrong].sum())
    n["rise_from_rest"] = float(delta.sum() - delta[worst5].sum())
    n["extreme"] = [
        {
            "index": int(samples.val.index[i]),
            "path": str(samples.val.path[i]),
            "true": samples.classes[int(target[i])],
            "pred": samples.classes[int(last.pred[i])],
            "p_true": float(last.p_true[i]),
            "conf": float(last.conf[i]),
            "loss": float(last.loss[i]),
            "loss_at_min": float(at_min.loss[i]),
        }
        for i in worst_indices(last.loss, n_extreme)
    ]
    markdown, summary = _write(n)
    return Diagnosis(n, markdown, summary)


def _headline(n: dict[str, Any]) -> str:
    f = n["final"]
    if not n["history"]:
        weights = "untrained weights" if n["last_epoch"] < 0 else f"weights of epoch {n['last_epoch']}"
        return (
            f"Single evaluation ({weights}): val loss {_loss(n['last_loss'])}, "
            f"accuracy {f['acc']:.3f}. With one point there is no rise to judge; the training run's "
            "diagnosis.md has the history."
        )
    rise = f"{_loss(n['min_loss'])} at epoch {n['min_epoch']} to {_loss(n['last_loss'])} at epoch {n['last_epoch']}"
    acc = f"val accuracy {n['acc_at_min']:.3f} -> {n['acc_last']:.3f}"
    if n["phenomenon"]:
        return (
            f"**Yes, the phenomenon happened.** Val loss rose by {_pct(n['rise_rel'])} after its minimum "
            f"({rise}) while {acc} held. The loss is not telling you the model classifies worse."
        )
    if n["rose"]:
        return (
            f"**Val loss rose and accuracy fell.** Val loss rose by {_pct(n['rise_rel'])} ({rise}) and {acc} "
            f"dropped by more than {ACC_TOLERANCE:.2f}: the model got worse on val, not only more confident."
        )
    if n["min_epoch"] == n["last_epoch"]:
        detail = f"it is lowest at the last epoch ({_loss(n['last_loss'])} at epoch {n['last_epoch']})"
        acc = f"val accuracy {n['acc_last']:.3f}"
    else:
        detail = f"{rise}, +{_pct(n['rise_rel'])}, below the {_pct(RISE_TOLERANCE)} threshold"
    return f"**No, val loss did not rise** after its minimum: {detail}; {acc}. There is no rise to explain in this run."


def _write(n: dict[str, Any]) -> tuple[str, str]:
    f, m = n["final"], n["at_min"]
    lines = ["# Diagnosis: why does val loss rise?", "", _headline(n), ""]
    lines += [
        "## Where the final val loss comes from" if n["history"] else "## Where the val loss comes from",
        "",
        f"- Mean val cross-entropy {_loss(f['loss'])} over {f['n']} samples, accuracy {f['acc']:.3f}.",
        f"- The worst 1% ({f['top1_n']} samples) carry {_pct(f['top1_share'])} of it; "
        f"the worst 5% ({f['top5_n']} samples) carry {_pct(f['top5_share'])}.",
        f"- The {f['n_wrong']} misclassified samples carry {_pct(f['wrong_share'])} "
        f"({_loss(f['loss_from_wrong'])} of {_loss(f['loss'])}); the correct ones {_loss(f['loss_from_correct'])}.",
        f"- Mean confidence on wrong predictions: {f['conf_wrong_mean']:.3f}; mean p(true) on correct ones: "
        f"{f['p_true_correct_mean']:.4f}.",
    ]
    if n["history"] and n["rose"]:
        lines.append(
            f"- Of the rise of {_loss(n['rise'])} since epoch {n['min_epoch']}, the final worst 5% account for "
            f"{_loss(n['rise_from_worst5'])} and the other samples for {_loss(n['rise_from_rest'])}; "
            f"the final misclassified samples for {_loss(n['rise_from_wrong'])}."
        )
    at_min_col = n["history"] and n["min_epoch"] != n["last_epoch"]
    cols = ["index", "file", "true", "predicted", "p(true)", "confidence", "loss"]
    cols += [f"loss at epoch {n['min_epoch']}"] if at_min_col else []
    lines += ["", "Most extreme samples (highest loss):", ""]
    lines += ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for e in n["extreme"]:
        lines.append(
            f"| {e['index']} | {e['path'] or '-'} | {e['true']} | {e['pred']} | {_p(e['p_true'])} | {e['conf']:.4f} "
            f"| {e['loss']:.2f} |" + (f" {e['loss_at_min']:.2f} |" if at_min_col else "")
        )
    if n["extreme"]:
        e = n["extreme"][0]
        ratio = e["loss"] / f["loss"] if f["loss"] > 0 else math.inf
        lines += [
            "",
            f"The worst one: the model gives its true class {e['true']} a probability of {_p(e['p_true'])}, "
            f"so its loss alone is -log({_p(e['p_true'])}) = {e['loss']:.2f}, {ratio:.1f}x the mean. "
            + (
                "Cross-entropy is unbounded: a few confident mistakes like this one weigh as much as hundreds "
                "of correct samples."
                if ratio >= EXTREME_RATIO
                else f"That is not an extreme outlier (less than {EXTREME_RATIO:.0f}x the mean): the loss is "
                "spread over many samples."
            ),
        ]
    lines += ["", "## Calibration", ""]
    cols = ["", "val loss (NLL)", "ECE (15 bins)", "temperature", "NLL after scaling", "ECE after scaling"]
    lines += ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    final_label = "final, epoch " + str(n["last_epoch"]) if n["history"] else "this model"
    rows = [("at min val loss, epoch " + str(n["min_epoch"]), m), (final_label, f)]
    for label, v in rows if n["history"] and n["min_epoch"] != n["last_epoch"] else rows[1:]:
        lines.append(
            f"| {label} | {_loss(v['loss'])} | {v['ece']:.4f} | {v['temperature']:.3f} | "
            f"{_loss(v['nll_temperature_scaled'])} | {v['ece_temperature_scaled']:.4f} |"
        )
    lines += ["", _calibration_words(n)]
    lines += ["", "## The bounded loss's view", ""]
    lines.append(
        f"Capping every sample's loss at {n['loss_cap']:.3f} (mean + k std of the untrained model's losses): "
        f"{_loss(f['bounded'])} at the end with {f['n_above_cap']} sample(s) above the cap"
        + (
            f", {_loss(m['bounded'])} at epoch {n['min_epoch']} ({m['n_above_cap']} above). "
            if n["history"] and n["min_epoch"] != n["last_epoch"]
            else ". "
        )
        + _bounded_words(n)
    )
    lines += [
        "",
        "## What to look at next",
        "",
        "- `worst.csv`: the worst samples with their loss at every epoch (and file paths for folder data).",
        "- TensorBoard images `val/worst_samples` (captioned true / predicted / p(true)) and `val/reliability`; "
        "histograms `val/loss_per_sample`; scalars `val/loss_from_wrong`, `val/ece`, `val/temperature`.",
        "- `reports/*.md`: per-class precision / recall / F1 of the initial, best and last models.",
        "- `samples.npz` (`src.samples.load_samples(run_dir)`): every number above, per sample and epoch.",
    ]
    paths = [e["path"] for e in n["extreme"] if e["path"]]
    if paths:
        lines.append("- Open the worst images: " + ", ".join(f"`{p}`" for p in paths) + ".")
    markdown = "\n".join(lines) + "\n"
    summary = "\n".join(
        [
            _headline(n).replace("**", ""),
            f"Worst 1% of val samples carry {_pct(f['top1_share'])} of the final val loss, misclassified ones "
            f"{_pct(f['wrong_share'])}; worst p(true) {_p(n['extreme'][0]['p_true']) if n['extreme'] else '-'}.",
            f"ECE {f['ece']:.4f}, fitted temperature {f['temperature']:.3f}, NLL after temperature scaling "
            f"{_loss(f['nll_temperature_scaled'])}.",
        ]
    )
    return markdown, summary


def _calibration_words(n: dict[str, Any]) -> str:
    f, m = n["final"], n["at_min"]
    t = f["temperature"]
    if t >= T_MAX:
        text = (
            f"The fitted temperature hits its upper limit ({T_MAX:.0f}): the model's probabilities are no better "
            "than uniform guessing, so calibration says nothing useful here."
        )
    elif t > 1.05:
        text = f"A fitted temperature of {t:.3f} (> 1) means the final model is over-confident: its probabilities are too extreme."
    elif t < 0.95:
        text = f"A fitted temperature of {t:.3f} (< 1) means the final model is under-confident: its probabilities are too flat."
    else:
        text = f"A fitted temperature of {t:.3f} (about 1) means the final model is about calibrated."
    if n["history"] and n["rose"]:
        scaled_rise = f["nll_temperature_scaled"] - m["nll_temperature_scaled"]
        removed = 1 - scaled_rise / n["rise"] if n["rise"] > 0 else 0.0
        text += (
            f" Temperature-scaled NLL goes {_loss(m['nll_temperature_scaled'])} -> {_loss(f['nll_temperature_scaled'])} "
            f"while the raw NLL goes {_loss(m['loss'])} -> {_loss(f['loss'])}: scaling removes {_pct(removed)} of the rise, "
        )
        text += (
            "so the rise is mostly over-confidence."
            if removed >= 0.5
            else "so the rise is not just over-confidence: the class ranking itself got worse on some samples."
        )
    return text


def _bounded_words(n: dict[str, Any]) -> str:
    f, m = n["final"], n["at_min"]
    if not (n["history"] and n["rose"]):
        if f["n_above_cap"] == 0:
            return "No sample is above the cap, so the bounded and the raw loss agree."
        return f"The {f['n_above_cap']} sample(s) above the cap are the highest-loss ones listed above."
    if f["bounded"] <= m["bounded"] * (1 + RISE_TOLERANCE):
        return (
            "The bounded loss does not rise while the raw loss does: the rise lives in the few samples whose "
            "loss exceeds the cap."
        )
    return "The bounded loss rises too: the rise is not confined to a few extreme samples."
