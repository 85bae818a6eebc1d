"""Sensitivity designs and indices (SALib): Saltelli / Morris designs, their indices, and given-data indices."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from eval.robustness.rows import ResultRow, _factor_values, _is_number, _metric, _values, numeric_factors

# ------------------------------------------------------------------------------------------- sensitivity


@dataclass(frozen=True, slots=True)
class SensitivityResult:
    """Sensitivity indices of a metric to the sweep factors (SALib)."""

    method: str  # rbd_fast | pawn | sobol | morris
    metric: str
    factors: tuple[str, ...]
    indices: dict[str, tuple[float, ...]]  # per index name (S1, S1_conf, ST, median, mu_star, ...), per factor
    primary: str  # the index to rank by / plot
    n_samples: int
    note: str


def _problem(names: Sequence[str], bounds: np.ndarray) -> dict[str, Any]:
    return {"num_vars": len(names), "names": list(names), "bounds": [list(map(float, b)) for b in bounds]}


def _finite(v: Any) -> float:
    return float(v) if v is not None and math.isfinite(float(v)) else math.nan


def given_data_indices(rows: Sequence[ResultRow], metric: str, *, method: str = "rbd_fast",
                       factors: Sequence[str] | None = None, log_scale: Sequence[str] = (),
                       rng: np.random.Generator, harmonics: int = 6, slices: int = 10,
                       confidence: float = 0.95) -> SensitivityResult:
    """Sensitivity from an existing sample (lhs / sobol sweep or any scattered design), one row per image.

    ``rbd_fast``: first-order Sobol indices S1 by random-balance-design FAST (SALib ``rbd_fast``, Tarantola
    et al. 2006, bias-corrected; ``harmonics`` = M) with bootstrap half-widths S1_conf. ``pawn``: PAWN
    indices (SALib ``pawn``; KS distance between conditional and unconditional output CDFs in ``slices``
    quantile slices of each factor; median over slices ranks factors; no confidence). Replicates stay as
    separate samples: their spread (geometry, noise) is output variance no factor explains. Factors in
    ``log_scale`` are analysed in log10 (RBD-FAST depends only on the ordering, PAWN on quantiles, so this
    changes nothing for them; it is kept for bounds).
    """
    from SALib.analyze import pawn, rbd_fast

    if method not in ("rbd_fast", "pawn"):
        raise ValueError(f"method must be 'rbd_fast' or 'pawn' for given data, got {method!r}")
    names = numeric_factors(rows) if factors is None else list(factors)
    if not names:
        raise ValueError("no numeric factor to analyse")
    y = _values(rows, metric)
    keep = np.isfinite(y)
    rows_k = [r for r, k in zip(rows, keep, strict=True) if k]
    y = y[keep]
    x = np.column_stack([_factor_values(rows_k, f) for f in names]) if rows_k else np.empty((0, len(names)))
    for j, f in enumerate(names):
        if f in log_scale:
            if (x[:, j] <= 0).any():
                raise ValueError(f"factor {f!r} is on a log scale and needs values > 0")
            x[:, j] = np.log10(x[:, j])
    bounds = np.column_stack([x.min(axis=0), x.max(axis=0)]) if len(y) else np.zeros((len(names), 2))
    note = f"{len(y)} images ({int((~keep).sum())} with a non-finite {metric!r} left out)"
    if method == "rbd_fast":
        if not isinstance(harmonics, int) or harmonics < 1:
            raise ValueError(f"harmonics must be an integer >= 1, got {harmonics!r}")
        if len(y) < 4 * harmonics:
            raise ValueError(f"rbd_fast with {harmonics} harmonics needs >= {4 * harmonics} samples, got {len(y)}")
        si = rbd_fast.analyze(_problem(names, bounds), x, y, M=harmonics, conf_level=confidence,
                              seed=np.random.default_rng(rng.integers(2**63)))
        indices = {"S1": tuple(map(_finite, si["S1"])), "S1_conf": tuple(map(_finite, si["S1_conf"]))}
        return SensitivityResult("rbd_fast", metric, tuple(names), indices, "S1", len(y),
                                 f"RBD-FAST first-order indices, M = {harmonics}; {note}")
    if len(y) < 2 * slices:
        raise ValueError(f"pawn with {slices} slices needs >= {2 * slices} samples, got {len(y)}")
    si = pawn.analyze(_problem(names, bounds), x, y, S=slices, seed=None)  # deterministic (no resampling)
    indices = {k: tuple(map(_finite, si[k])) for k in ("minimum", "mean", "median", "maximum", "CV")}
    return SensitivityResult("pawn", metric, tuple(names), indices, "median", len(y),
                             f"PAWN (KS statistic), {slices} slices, median over slices; {note}")


@dataclass(frozen=True, slots=True)
class SampledDesign:
    """Explicit sweep points for Saltelli (Sobol S1/ST) or Morris analysis; point_id = position in ``points``."""

    method: str  # sobol | morris
    factors: tuple[str, ...]
    bounds: tuple[tuple[float, float], ...]  # physical units
    log_scale: tuple[str, ...]
    x: tuple[tuple[float, ...], ...]  # the design in analysis units (log10 for log-scale factors)
    points: tuple[dict[str, float], ...]  # the design in physical units: what the sweep simulates
    num_levels: int  # morris only (0 for sobol)


def _check_bounds(bounds: Mapping[str, Sequence[float]], log_scale: Sequence[str]) -> tuple[list[str], np.ndarray]:
    if not bounds:
        raise ValueError("bounds must name at least one factor: {'probe.sigma_nm': (1.0, 20.0), ...}")
    names = list(bounds)
    b = []
    for f in names:
        pair = tuple(bounds[f])
        if len(pair) != 2 or not all(_is_number(v) and math.isfinite(v) for v in pair) or not pair[0] < pair[1]:
            raise ValueError(f"bounds of {f!r} must be (min, max) with min < max, got {bounds[f]!r}")
        if f in log_scale:
            if pair[0] <= 0:
                raise ValueError(f"factor {f!r} is on a log scale and needs min > 0, got {bounds[f]!r}")
            pair = (math.log10(pair[0]), math.log10(pair[1]))
        b.append(pair)
    for f in log_scale:
        if f not in bounds:
            raise ValueError(f"log_scale names {f!r}, which has no bounds")
    return names, np.array(b, dtype=float)


def _design(method: str, names: list[str], b: np.ndarray, bounds, log_scale, x: np.ndarray,
            num_levels: int) -> SampledDesign:
    phys = x.copy()
    for j, f in enumerate(names):
        if f in log_scale:
            phys[:, j] = 10.0 ** phys[:, j]
    return SampledDesign(method, tuple(names), tuple((float(bounds[f][0]), float(bounds[f][1])) for f in names),
                         tuple(log_scale), tuple(tuple(map(float, r)) for r in x),
                         tuple({f: float(v) for f, v in zip(names, r, strict=True)} for r in phys), num_levels)


def saltelli_design(bounds: Mapping[str, Sequence[float]], n_base: int, *, log_scale: Sequence[str] = (),
                    rng: np.random.Generator) -> SampledDesign:
    """Saltelli's sample for Sobol first- and total-order indices: n_base * (D + 2) points (SALib).

    ``n_base`` must be a power of 2 (Sobol sequence balance). Integer parameters are rounded by the sweep
    layer; rounding coarsely changes the design, so prefer continuous factors.
    """
    from SALib.sample import sobol as sobol_sample

    if not isinstance(n_base, int) or n_base < 2 or n_base & (n_base - 1):
        raise ValueError(f"n_base must be a power of 2 >= 2, got {n_base!r}")
    names, b = _check_bounds(bounds, log_scale)
    x = sobol_sample.sample(_problem(names, b), n_base, calc_second_order=False, scramble=True,
                            seed=np.random.default_rng(rng.integers(2**63)))
    return _design("sobol", names, b, bounds, log_scale, np.asarray(x, dtype=float), 0)


def morris_design(bounds: Mapping[str, Sequence[float]], n_trajectories: int, *, num_levels: int = 4,
                  log_scale: Sequence[str] = (), rng: np.random.Generator) -> SampledDesign:
    """Morris elementary-effects trajectories: n_trajectories * (D + 1) points (SALib)."""
    from SALib.sample import morris as morris_sample

    if not isinstance(n_trajectories, int) or n_trajectories < 2:
        raise ValueError(f"n_trajectories must be an integer >= 2, got {n_trajectories!r}")
    if not isinstance(num_levels, int) or num_levels < 2 or num_levels % 2:
        raise ValueError(f"num_levels must be an even integer >= 2, got {num_levels!r}")
    names, b = _check_bounds(bounds, log_scale)
    x = morris_sample.sample(_problem(names, b), n_trajectories, num_levels=num_levels,
                             seed=np.random.default_rng(rng.integers(2**63)))
    return _design("morris", names, b, bounds, log_scale, np.asarray(x, dtype=float), num_levels)


def design_indices(design: SampledDesign, rows: Sequence[ResultRow], metric: str, *,
                   rng: np.random.Generator, confidence: float = 0.95) -> SensitivityResult:
    """Sobol S1/ST (Saltelli design) or Morris mu*/sigma (Morris design) from the simulated points.

    Rows are matched to design points by ``point_id`` (= position in ``design.points``); replicates of a
    point are averaged. Every point needs a finite mean metric.
    """
    from SALib.analyze import morris as morris_analyze
    from SALib.analyze import sobol as sobol_analyze

    by_point: dict[int, list[float]] = {}
    for r in rows:
        by_point.setdefault(r.point_id, []).append(_metric(r, metric))
    n_points = len(design.points)
    extra = sorted(set(by_point) - set(range(n_points)))
    missing = [i for i in range(n_points) if i not in by_point]
    if extra or missing:
        raise ValueError(f"rows must cover design points 0..{n_points - 1} exactly; missing {missing[:10]}, "
                         f"unexpected {extra[:10]}")
    y = np.array([np.mean(by_point[i]) for i in range(n_points)], dtype=float)
    if not np.isfinite(y).all():
        bad = np.flatnonzero(~np.isfinite(y))[:10].tolist()
        raise ValueError(f"design points {bad} have a non-finite mean {metric!r}; the design needs every point")
    names = list(design.factors)
    b = np.array([(math.log10(lo), math.log10(hi)) if f in design.log_scale else (lo, hi)
                  for f, (lo, hi) in zip(names, design.bounds, strict=True)])
    problem = _problem(names, b)
    seed = int(rng.integers(1, 2**31))  # SALib sobol falls back to the global RNG on a falsy seed
    reps = f"{len(rows)} images over {n_points} points"
    if design.method == "sobol":
        si = sobol_analyze.analyze(problem, y, calc_second_order=False, conf_level=confidence, seed=seed)
        indices = {k: tuple(map(_finite, si[k])) for k in ("S1", "S1_conf", "ST", "ST_conf")}
        return SensitivityResult("sobol", metric, tuple(names), indices, "ST", n_points,
                                 f"Sobol indices (Saltelli estimator); {reps}")
    x = np.array(design.x, dtype=float)
    si = morris_analyze.analyze(problem, x, y, conf_level=confidence, num_levels=design.num_levels,
                                seed=np.random.default_rng(seed))
    indices = {k: tuple(map(_finite, si[k])) for k in ("mu", "mu_star", "sigma", "mu_star_conf")}
    return SensitivityResult("morris", metric, tuple(names), indices, "mu_star", n_points,
                             f"Morris elementary effects (mu* in metric units per analysis-unit range); {reps}")
