"""COCO-C style tables: metric curves along each factor (levels or bins) and the per-factor robustness table."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from eval.robustness.binomial import mean_interval
from eval.robustness.rows import (
    ResultRow,
    _bin_index,
    _centre,
    _factor_values,
    _none,
    _values,
    bin_edges,
    factor_axis,
    nominal_factors,
    numeric_factors,
)

# ------------------------------------------------------------------------------------------------ curves


@dataclass(frozen=True, slots=True)
class Curve:
    """A metric vs the levels (or bin centres) of one factor: mean and confidence band per level."""

    factor: str
    metric: str
    method: str  # t: Student-t interval of the mean | bootstrap: percentile bootstrap over images
    confidence: float
    levels: tuple[float, ...]
    n: tuple[int, ...]  # finite values per level
    n_nonfinite: tuple[int, ...]  # non-finite values per level (left out)
    mean: tuple[float | None, ...]
    low: tuple[float | None, ...]  # None when fewer than 2 finite values
    high: tuple[float | None, ...]
    values: tuple[tuple[float, ...], ...]  # the finite per-image values
    nominal: float | None  # the nominal level (one-at-a-time sweeps)
    bin_edges: tuple[float, ...] | None = None  # binned curves (space-filling designs): levels are bin centres


def _curve(groups: Mapping[float, Sequence[ResultRow]], factor: str, metric: str, nominal: float | None,
           method: str, confidence: float, rng: np.random.Generator | None, n_boot: int,
           edges: np.ndarray | None = None) -> Curve:
    levels, n, bad, means, lows, highs, vals = [], [], [], [], [], [], []
    for level, group in groups.items():
        v = _values(group, metric)
        finite = v[np.isfinite(v)]
        m, lo, hi = mean_interval(finite, method=method, confidence=confidence, rng=rng, n_boot=n_boot)
        levels.append(float(level))
        n.append(int(finite.size))
        bad.append(int(v.size - finite.size))
        means.append(_none(m))
        lows.append(_none(lo))
        highs.append(_none(hi))
        vals.append(tuple(float(x) for x in finite))
    return Curve(factor, metric, method, confidence, tuple(levels), tuple(n), tuple(bad), tuple(means),
                 tuple(lows), tuple(highs), tuple(vals), nominal,
                 None if edges is None else tuple(float(e) for e in edges))


def metric_curves(rows: Sequence[ResultRow], metric: str, *, factors: Sequence[str] | None = None,
                  nominal: Mapping[str, Any] | None = None, method: str = "t", confidence: float = 0.95,
                  rng: np.random.Generator | None = None, n_boot: int = 2000) -> dict[str, Curve]:
    """Metric vs tested level for each factor of a one-at-a-time sweep (mean and band per level)."""
    nominal = nominal_factors(rows) if nominal is None else dict(nominal)
    names = numeric_factors(rows) if factors is None else list(factors)
    return {f: _curve(factor_axis(rows, f, nominal), f, metric, float(nominal[f]), method, confidence, rng,
                      n_boot) for f in names}


def binned_metric_curves(rows: Sequence[ResultRow], metric: str, *, bins: int = 5,
                         factors: Sequence[str] | None = None, log_scale: Sequence[str] = (),
                         method: str = "t", confidence: float = 0.95, rng: np.random.Generator | None = None,
                         n_boot: int = 2000) -> dict[str, Curve]:
    """Metric vs factor for space-filling designs: mean and band per equal-width bin (levels = bin centres)."""
    names = numeric_factors(rows) if factors is None else list(factors)
    out = {}
    for f in names:
        x = _factor_values(rows, f)
        edges = bin_edges(x, bins, log=f in log_scale)
        idx = _bin_index(x, edges)
        groups = {_centre(edges, j, f in log_scale): [r for r, i in zip(rows, idx, strict=True) if i == j]
                  for j in range(len(edges) - 1)}
        groups = {c: g for c, g in groups.items() if g}
        out[f] = _curve(groups, f, metric, None, method, confidence, rng, n_boot, edges)
    return out


# ------------------------------------------------------------------------------------ robustness (COCO-C)


@dataclass(frozen=True, slots=True)
class FactorRobustness:
    factor: str
    levels: tuple[float, ...]  # the non-nominal levels
    level_means: tuple[float, ...]  # mean metric at each of them
    mpc: float  # mean over the non-nominal levels
    rpc: float  # mpc / clean


@dataclass(frozen=True, slots=True)
class RobustnessTable:
    """COCO-C-style robustness of a higher-is-better metric over a one-at-a-time sweep."""

    metric: str
    clean: float  # mean metric at the nominal point
    n_clean: int
    factors: tuple[FactorRobustness, ...]
    mpc: float  # mean over factors of their mPC
    rpc: float  # mpc / clean
    n_nonfinite: int  # non-finite metric values left out


def robustness_table(rows: Sequence[ResultRow], metric: str, *, factors: Sequence[str] | None = None,
                     nominal: Mapping[str, Any] | None = None) -> RobustnessTable:
    """mPC and rPC per factor and overall (Michaelis et al. 2019); ``metric`` must be higher-is-better.

    Each level's performance is the mean over its images; mPC of a factor is the unweighted mean over its
    non-nominal levels, so levels with more images do not count more.
    """
    nominal = nominal_factors(rows) if nominal is None else dict(nominal)
    names = numeric_factors(rows) if factors is None else list(factors)
    values = _values(rows, metric)
    n_bad = int((~np.isfinite(values)).sum())
    clean_rows = [r for r in rows if all(r.factors.get(f) == v for f, v in nominal.items())]
    clean_v = _values(clean_rows, metric)
    clean_v = clean_v[np.isfinite(clean_v)]
    if clean_v.size == 0:
        raise ValueError(f"no finite {metric!r} at the nominal point {nominal}: rPC needs clean performance")
    clean = float(clean_v.mean())
    table = []
    for f in names:
        axis = factor_axis(rows, f, nominal)
        lv, means = [], []
        for level, group in axis.items():
            if level == float(nominal[f]):
                continue
            v = _values(group, metric)
            v = v[np.isfinite(v)]
            if v.size:
                lv.append(level)
                means.append(float(v.mean()))
        if not means:
            raise ValueError(f"factor {f!r} has no non-nominal level with a finite {metric!r}")
        mpc = float(np.mean(means))
        table.append(FactorRobustness(f, tuple(lv), tuple(means), mpc, mpc / clean if clean else math.nan))
    mpc = float(np.mean([t.mpc for t in table]))
    return RobustnessTable(metric, clean, int(clean_v.size), tuple(table), mpc,
                           mpc / clean if clean else math.nan, n_bad)
