"""Particle size distribution (PSD) metrics between true and predicted equivalent circular diameters (nm).

Which particles: the true PSD holds the ECD of every counted true particle (visible, not in ``ignore_ids``:
not cut by the border, not mostly hidden); the predicted PSD the ECD of every counted prediction (one that
does not lie mostly in those ignore regions). The rule is the same on both sides, the one ``eval.metrics.matching``
uses for TP / FP / FN: an instance counts unless at least half of its area lies in the ignore regions (true
instances lie wholly inside or outside them; a prediction matched to a counted true particle always counts).
``ImageMatch.true_ecd_nm`` / ``pred_ecd_nm`` hold the samples.

Statistics are number-weighted (each particle counts once): D10 / D50 / D90 are percentiles (linear
interpolation), the log-normal fit is the maximum-likelihood one (d_g = exp(mean ln d), sigma_g =
exp(SD ln d, ddof 0)), relative errors are (predicted - true) / true, W1 is the Wasserstein-1 (earth mover's)
distance in nm, KS the two-sample Kolmogorov-Smirnov statistic. Empty samples give NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from eval.metrics.matching import ImageMatch

PERCENTILES = (10, 50, 90)


def _sizes(values, name: str) -> np.ndarray:
    values = np.asarray(values, float).ravel()
    bad = values[~(np.isfinite(values) & (values > 0))]
    if bad.size:
        raise ValueError(f"{name} must hold finite diameters > 0 nm, got {bad[:5].tolist()}")
    return values


def lognormal_fit(ecd_nm) -> tuple[float, float]:
    """Maximum-likelihood log-normal fit: (geometric mean d_g in nm, geometric SD sigma_g >= 1); NaN if empty."""
    ecd_nm = _sizes(ecd_nm, "ecd_nm")
    if ecd_nm.size == 0:
        return float("nan"), float("nan")
    logs = np.log(ecd_nm)
    return float(np.exp(logs.mean())), float(np.exp(logs.std()))


def psd_summary(ecd_nm) -> dict[str, float]:
    """D10, D50, D90 (nm), d_g (nm), sigma_g and the count of one size sample."""
    ecd_nm = _sizes(ecd_nm, "ecd_nm")
    out = {}
    for q in PERCENTILES:
        out[f"D{q}_nm"] = float(np.percentile(ecd_nm, q)) if ecd_nm.size else float("nan")
    out["dg_nm"], out["sigmag"] = lognormal_fit(ecd_nm)
    out["n"] = int(ecd_nm.size)
    return out


def _rel(pred: float, true: float) -> float:
    return (pred - true) / true if true > 0 else float("nan")


def psd_metrics(true_ecd_nm, pred_ecd_nm) -> dict[str, float]:
    """Compare two size samples: both summaries, relative errors of D10/D50/D90, d_g, sigma_g, then W1 and KS.

    Keys: D10_rel_err, D50_rel_err, D90_rel_err, dg_rel_err, sigmag_rel_err, W1_nm, KS, and the summaries as
    <stat>_true / <stat>_pred (D50_true_nm, dg_pred_nm, sigmag_true, n_pred, ...).
    """
    true_ecd_nm = _sizes(true_ecd_nm, "true_ecd_nm")
    pred_ecd_nm = _sizes(pred_ecd_nm, "pred_ecd_nm")
    t, p = psd_summary(true_ecd_nm), psd_summary(pred_ecd_nm)
    out = {}
    for q in PERCENTILES:
        out[f"D{q}_rel_err"] = _rel(p[f"D{q}_nm"], t[f"D{q}_nm"])
    out["dg_rel_err"] = _rel(p["dg_nm"], t["dg_nm"])
    out["sigmag_rel_err"] = _rel(p["sigmag"], t["sigmag"])
    both = true_ecd_nm.size > 0 and pred_ecd_nm.size > 0
    out["W1_nm"] = float(stats.wasserstein_distance(true_ecd_nm, pred_ecd_nm)) if both else float("nan")
    out["KS"] = float(stats.ks_2samp(true_ecd_nm, pred_ecd_nm, method="asymp").statistic) if both else float("nan")
    for key, value in t.items():
        out[_side(key, "true")] = value
    for key, value in p.items():
        out[_side(key, "pred")] = value
    return out


def _side(key: str, side: str) -> str:
    """'D50_nm' -> 'D50_true_nm', 'sigmag' -> 'sigmag_true'."""
    return f"{key[:-3]}_{side}_nm" if key.endswith("_nm") else f"{key}_{side}"


def pooled_sizes(matches: Sequence[ImageMatch]) -> tuple[np.ndarray, np.ndarray]:
    """The true and predicted PSD samples (nm) of a list of images (repeats count repeatedly)."""
    if len(matches) == 0:
        return np.zeros(0), np.zeros(0)
    return np.concatenate([m.true_ecd_nm for m in matches]), np.concatenate([m.pred_ecd_nm for m in matches])
