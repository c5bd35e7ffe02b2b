"""Calibration of a classifier's probabilities, for every epoch of a block at once: ECE, the fitted temperature,
the temperature-scaled NLL/ECE in sample (what the per-epoch scalars show) and cross-fitted over random splits
(what the verdict reads). If the temperature-scaled NLL stays flat while the raw NLL rises, the rise is
over-confidence, not worse ranking of the classes.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lossdiag.functional.crossfit import CROSSFIT_SPLITS, crossfit_splits
from lossdiag.functional.ece import N_BINS, binned_calibration_errors
from lossdiag.functional.temperature import ClassMajor, fit_prepared, scaled_scores

# calibration_summaries' keys: in-sample (what the per-epoch ``val/`` scalars show), then the cross-fitted NLL/ECE
# the verdict uses (recorded, not logged as scalars): their medians over the splits, and every split's value
LOGGED_CALIBRATION_KEYS = ("ece", "temperature", "nll_temperature_scaled", "ece_temperature_scaled")
CALIBRATION_KEYS = (*LOGGED_CALIBRATION_KEYS, "nll_crossfit", "ece_crossfit")
SPLIT_KEYS = ("nll_crossfit_splits", "ece_crossfit_splits")  # (..., CROSSFIT_SPLITS) each


def calibration_summaries(
    logits: torch.Tensor,
    target: torch.Tensor,
    n_bins: int = N_BINS,
    conf: torch.Tensor | None = None,
    crossfit: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """For every leading index of ``logits`` (B, N, C) (e.g. a block of epochs; ``target``: (N,)), float64 (B,);
    ``conf``: each sample's largest class probability (B, N), when the caller has it already (saves a pass for
    the raw ECE):

    ``ece``, fitted ``temperature``, ``nll_temperature_scaled`` and ``ece_temperature_scaled`` (fitted and
    scored on the same samples: what the per-epoch scalars show), and the same scaling scored out of sample over
    :data:`CROSSFIT_SPLITS` random splits (:func:`crossfit_splits`: what the verdict uses): ``nll_crossfit_splits``
    / ``ece_crossfit_splits`` (B, splits) and their medians ``nll_crossfit`` / ``ece_crossfit``, for the rows where
    ``crossfit`` (bool (B,); default: every row) is true, NaN elsewhere: two temperature fits per split and row,
    which a caller that reads them only for a few rows need not pay for."""
    y = target.detach().long().cpu()
    lead, n = logits.shape[:-2], logits.shape[-2]
    if n == 0:
        empty = {k: torch.full(lead, math.nan, dtype=torch.float64) for k in CALIBRATION_KEYS}
        return {
            **empty,
            **{k: torch.full((*lead, CROSSFIT_SPLITS), math.nan, dtype=torch.float64) for k in SPLIT_KEYS},
        }
    prepared = ClassMajor.of(logits, y)
    t = fit_prepared(prepared)
    # the largest shifted logit is 0: the prediction is where it is, the raw confidence 1 / sum(exp)
    correct = prepared.pred == y
    raw_conf = torch.exp(prepared.z).sum(1).reciprocal_() if conf is None else conf.detach().reshape(-1, n)
    nll_scaled, ece_scaled = scaled_scores(prepared, correct, t[:, None], n_bins)
    summary = {
        "ece": binned_calibration_errors(raw_conf, correct, n_bins).double(),
        "temperature": t,
        "nll_temperature_scaled": nll_scaled,
        "ece_temperature_scaled": ece_scaled,
        "nll_crossfit": torch.full_like(t, math.nan),
        "ece_crossfit": torch.full_like(t, math.nan),
        "nll_crossfit_splits": torch.full((len(t), CROSSFIT_SPLITS), math.nan, dtype=torch.float64),
        "ece_crossfit_splits": torch.full((len(t), CROSSFIT_SPLITS), math.nan, dtype=torch.float64),
    }
    rows = (
        torch.ones(len(t), dtype=torch.bool)
        if crossfit is None
        else crossfit.detach().cpu().bool().reshape(-1)
    )
    if n >= 2 and bool(rows.any()):
        nll_cf, ece_cf = crossfit_splits(prepared.rows(rows), t[rows], correct[rows], CROSSFIT_SPLITS, n_bins)
        summary["nll_crossfit_splits"][rows], summary["ece_crossfit_splits"][rows] = nll_cf, ece_cf
        summary["nll_crossfit"][rows] = nll_cf.quantile(0.5, dim=-1)
        summary["ece_crossfit"][rows] = ece_cf.quantile(0.5, dim=-1)
    return {k: v.reshape(*lead, *v.shape[1:]) for k, v in summary.items()}


def calibration_summary(logits: torch.Tensor, target: torch.Tensor, n_bins: int = N_BINS) -> dict[str, Any]:
    """:func:`calibration_summaries` of one (N, C) set of logits: floats, and the per-split arrays."""
    summary = calibration_summaries(logits[None], target, n_bins)
    return {k: v[0].numpy() if k in SPLIT_KEYS else float(v[0]) for k, v in summary.items()}
