"""Operating ranges, robustness statistics and sensitivity indices from per-image sweep results.

Input: one ``ResultRow`` per image (its sweep point's factor values, ``point_id``, ``replicate`` and metric
values, e.g. ``{"D50_rel_err": -0.03, "F1": 0.91}``); ``as_rows`` builds them from plain dicts. Every result
is a frozen dataclass; ``to_jsonable`` turns any of them into plain JSON (NaN -> null).

Pass / fail (``RangeCriterion``): an image passes when ``|measurand| <= tau``; a missing or non-finite
measurand (e.g. no particle detected, so no D50) counts as a failure. At each tested level, k of n images pass;
the pass probability gets an exact two-sided Clopper-Pearson interval at ``confidence``. A level is

- ``"in"`` the operating range when the interval's **lower** bound is >= 1 - alpha. This is conservative: with
  confidence 0.95 the lower bound is a one-sided 97.5 % bound, so "in" means "P(pass) >= 1 - alpha is
  established", not "not contradicted". With every image passing it takes
  n >= log((1 - confidence) / 2) / log(1 - alpha) images (72 for alpha = 0.05, confidence = 0.95);
- ``"out"`` when the **upper** bound is < 1 - alpha (failure established);
- ``"undecided"`` otherwise, with ``images_more``: roughly how many more images at the same pass rate would
  decide it (None when the pass rate equals 1 - alpha or more than 100,000 would be needed).

Operating range (one-at-a-time sweeps): the contiguous run of "in" levels around the nominal level, reported
in the factor's units together with every tested level. Nothing is claimed beyond the tested levels: a
boundary is given only as a bracket between the last "in" level and the first tested level that is not
"in" ("out": a failure boundary lies between the two; "undecided": not enough images to say); at the ends of
the tested interval the statement says the range was not tested further.

Space-filling designs (lhs, sobol): marginal pass probabilities per factor in bins and 2-D pass-probability
maps for factor pairs, each cell with its counts.

Curves: metric vs level with the mean and a confidence band per level: Student-t interval of the mean
(``method="t"``, default, deterministic) or percentile bootstrap over the images at that level
(``method="bootstrap"``, needs ``rng``).

Robustness (COCO-C style, Michaelis et al. 2019): for each factor, mPC = mean over its non-nominal levels of
the per-level mean of a higher-is-better metric (AP, F1, 1 - |D50 err|, ...), rPC = mPC / clean performance
(the nominal point); overall mPC is the mean over factors and overall rPC = mPC / clean.

Sensitivity (SALib): for existing lhs / sobol sweeps, given-data estimators that work on any sample:
RBD-FAST first-order indices (``method="rbd_fast"``, variance-based, bias-corrected, bootstrap confidence)
and PAWN (``method="pawn"``, distribution-based: KS distance between conditional and unconditional output
distributions, median over slices). Our ``sobol`` sweep mode is a scrambled Sobol QMC sample, not Saltelli's
A/B/AB structure, so Sobol *total*-order indices need a dedicated design: ``saltelli_design`` /
``morris_design`` produce explicit points (factor dicts, point_id = position) for the sweep layer to
simulate, and ``design_indices`` analyses the results (Sobol S1 and ST; Morris mu*, sigma).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from eval.robustness.binomial import PassCount, pass_count
from eval.robustness.rows import (
    RangeCriterion,
    ResultRow,
    _bin_index,
    _factor_values,
    bin_edges,
    factor_axis,
    factor_unit,
    format_level,
    nominal_factors,
    numeric_factors,
    passes,
)


@dataclass(frozen=True, slots=True)
class LevelPass:
    """Pass statistics at one tested level of a factor."""

    level: float
    is_nominal: bool
    count: PassCount


def level_passes(rows: Sequence[ResultRow], criterion: RangeCriterion, factor: str,
                 nominal: Mapping[str, Any] | None = None) -> tuple[LevelPass, ...]:
    """Pass statistics at every tested level of ``factor`` (one-at-a-time sweep), ascending."""
    nominal = nominal_factors(rows) if nominal is None else dict(nominal)
    axis = factor_axis(rows, factor, nominal)
    nominal_level = float(nominal[factor])
    out = []
    for level, group in axis.items():
        ok = passes(group, criterion)
        out.append(LevelPass(level, level == nominal_level, pass_count(int(ok.sum()), len(group), criterion)))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class RangeEnd:
    """How the operating range ends on one side."""

    side: str  # lower | upper
    kind: str  # failure: next level is "out" | undecided: next level undecided | untested: last tested level
    last_in: float  # the outermost level of the range on this side
    next_level: float | None  # the first tested level beyond it (None when untested)
    images_more: int | None  # undecided: roughly how many more images at next_level would decide it


@dataclass(frozen=True, slots=True)
class OperatingRange:
    """The operating range of one factor in a one-at-a-time sweep: what was tested, what passed."""

    factor: str
    unit: str
    criterion: RangeCriterion
    nominal: float
    levels: tuple[LevelPass, ...]  # every tested level, ascending
    tested_lo: float
    tested_hi: float
    range_lo: float | None  # None when the nominal level itself is not "in"
    range_hi: float | None
    lower: RangeEnd | None
    upper: RangeEnd | None
    statement: str


def _range_end(levels: Sequence[LevelPass], edge: int, beyond: int | None, side: str) -> RangeEnd:
    if beyond is None:
        return RangeEnd(side, "untested", levels[edge].level, None, None)
    nxt = levels[beyond]
    kind = "failure" if nxt.count.status == "out" else "undecided"
    return RangeEnd(side, kind, levels[edge].level, nxt.level, nxt.count.images_more)


def _end_sentence(end: RangeEnd, factor: str) -> str:
    last = format_level(end.last_in, factor)
    if end.kind == "untested":
        which = "lowest" if end.side == "lower" else "highest"
        beyond = "below" if end.side == "lower" else "above"
        return f"{end.side.capitalize()} end: {last} is the {which} tested level; nothing is claimed {beyond} it."
    nxt = format_level(end.next_level, factor)
    pair = f"{nxt} and {last}" if end.side == "lower" else f"{last} and {nxt}"
    if end.kind == "failure":
        return (f"{end.side.capitalize()} end: the failure boundary lies between {pair} "
                f"({last} in, {nxt} out; not located more finely).")
    more = f" (about {end.images_more} more images there would decide it)" if end.images_more else ""
    return f"{end.side.capitalize()} end: {last} is the last level shown to pass; {nxt} is undecided{more}."


def operating_range(rows: Sequence[ResultRow], criterion: RangeCriterion, factor: str,
                    nominal: Mapping[str, Any] | None = None) -> OperatingRange:
    """The contiguous interval of "in" levels around the nominal level of ``factor``, with its brackets."""
    nominal = nominal_factors(rows) if nominal is None else dict(nominal)
    levels = level_passes(rows, criterion, factor, nominal)
    values = [lv.level for lv in levels]
    nominal_level = float(nominal[factor])
    if nominal_level not in values:
        raise ValueError(f"factor {factor!r}: no image at the nominal level {nominal_level!r}; tested {values}")
    unit = factor_unit(factor)
    fmt = lambda v: format_level(v, factor)  # noqa: E731
    tested = f"tested {len(values)} levels from {fmt(values[0])} to {fmt(values[-1])}: " + ", ".join(
        f"{v:.4g}" for v in values) + (f" {unit}" if unit else "")
    head = f"{factor} ({criterion.describe()}; nominal {fmt(nominal_level)}; {tested})."
    i0 = values.index(nominal_level)
    if levels[i0].count.status != "in":
        c = levels[i0].count
        more = f", about {c.images_more} more images would decide it" if c.images_more else ""
        statement = (f"{head} No operating range established: the nominal level is {c.status} "
                     f"({c.k}/{c.n} pass, interval {c.low:.3f}-{c.high:.3f}{more}).")
        return OperatingRange(factor, unit, criterion, nominal_level, levels, values[0], values[-1],
                              None, None, None, None, statement)
    lo = i0
    while lo > 0 and levels[lo - 1].count.status == "in":
        lo -= 1
    hi = i0
    while hi < len(levels) - 1 and levels[hi + 1].count.status == "in":
        hi += 1
    lower = _range_end(levels, lo, lo - 1 if lo > 0 else None, "lower")
    upper = _range_end(levels, hi, hi + 1 if hi < len(levels) - 1 else None, "upper")
    isolated = [lv.level for j, lv in enumerate(levels) if lv.count.status == "in" and not lo <= j <= hi]
    parts = [head, f"Operating range (tested levels that pass): [{fmt(values[lo])}, {fmt(values[hi])}].",
             _end_sentence(lower, factor), _end_sentence(upper, factor)]
    if isolated:
        parts.append("Passing levels beyond a non-passing one are not part of the range: "
                     + ", ".join(fmt(v) for v in isolated) + ".")
    return OperatingRange(factor, unit, criterion, nominal_level, levels, values[0], values[-1],
                          values[lo], values[hi], lower, upper, " ".join(parts))


def operating_ranges(rows: Sequence[ResultRow], criterion: RangeCriterion, *,
                     factors: Sequence[str] | None = None,
                     nominal: Mapping[str, Any] | None = None) -> dict[str, OperatingRange]:
    """``operating_range`` for every numeric factor (or those named) of a one-at-a-time sweep."""
    nominal = nominal_factors(rows) if nominal is None else dict(nominal)
    names = numeric_factors(rows) if factors is None else list(factors)
    return {f: operating_range(rows, criterion, f, nominal) for f in names}


# ---------------------------------------------------------------------------------- space-filling designs


@dataclass(frozen=True, slots=True)
class BinPass:
    """Pass statistics of the images whose factor value lies in [lo, hi)."""

    lo: float
    hi: float
    count: PassCount


@dataclass(frozen=True, slots=True)
class MarginalPass:
    factor: str
    unit: str
    log: bool
    bins: tuple[BinPass, ...]


def marginal_passes(rows: Sequence[ResultRow], criterion: RangeCriterion, *, bins: int = 5,
                    factors: Sequence[str] | None = None, log_scale: Sequence[str] = ()) -> dict[str, MarginalPass]:
    """Per factor: pass probability in equal-width bins over the sampled range (other factors marginalised)."""
    ok = passes(rows, criterion)
    names = numeric_factors(rows) if factors is None else list(factors)
    out = {}
    for f in names:
        x = _factor_values(rows, f)
        log = f in log_scale
        edges = bin_edges(x, bins, log=log)
        idx = _bin_index(x, edges)
        n = np.bincount(idx, minlength=len(edges) - 1)
        k = np.bincount(idx, weights=ok, minlength=len(edges) - 1).astype(int)
        out[f] = MarginalPass(f, factor_unit(f), log, tuple(
            BinPass(float(edges[j]), float(edges[j + 1]), pass_count(int(k[j]), int(n[j]), criterion))
            for j in range(len(edges) - 1)))
    return out


@dataclass(frozen=True, slots=True)
class PassMap:
    """Pass probability on a 2-D grid of bins over two factors; arrays are indexed [i_y][i_x]."""

    factor_x: str
    factor_y: str
    edges_x: tuple[float, ...]
    edges_y: tuple[float, ...]
    log_x: bool
    log_y: bool
    n: tuple[tuple[int, ...], ...]
    k: tuple[tuple[int, ...], ...]
    p_hat: tuple[tuple[float | None, ...], ...]  # None where a cell is empty
    status: tuple[tuple[str, ...], ...]  # in | out | undecided | empty


def pass_map(rows: Sequence[ResultRow], criterion: RangeCriterion, factor_x: str, factor_y: str, *,
             bins_x: int = 4, bins_y: int = 4, log_x: bool = False, log_y: bool = False) -> PassMap:
    """Pass counts and probability in a bins_y x bins_x grid over two factors (every row in one cell)."""
    if factor_x == factor_y:
        raise ValueError(f"a pass map needs two different factors, got {factor_x!r} twice")
    ok = passes(rows, criterion)
    x, y = _factor_values(rows, factor_x), _factor_values(rows, factor_y)
    ex, ey = bin_edges(x, bins_x, log=log_x), bin_edges(y, bins_y, log=log_y)
    cell = _bin_index(y, ey) * (len(ex) - 1) + _bin_index(x, ex)
    shape = (len(ey) - 1, len(ex) - 1)
    n = np.bincount(cell, minlength=shape[0] * shape[1]).reshape(shape)
    k = np.bincount(cell, weights=ok, minlength=shape[0] * shape[1]).reshape(shape).astype(int)
    counts = [[pass_count(int(k[i, j]), int(n[i, j]), criterion) for j in range(shape[1])] for i in range(shape[0])]
    return PassMap(factor_x, factor_y, tuple(map(float, ex)), tuple(map(float, ey)), log_x, log_y,
                   tuple(tuple(int(v) for v in row) for row in n), tuple(tuple(int(v) for v in row) for row in k),
                   tuple(tuple(c.p_hat for c in row) for row in counts),
                   tuple(tuple(c.status for c in row) for row in counts))


def pass_maps(rows: Sequence[ResultRow], criterion: RangeCriterion, *, bins: int = 4,
              factors: Sequence[str] | None = None, log_scale: Sequence[str] = ()) -> list[PassMap]:
    """``pass_map`` for every pair of numeric factors (or of those named)."""
    names = numeric_factors(rows) if factors is None else list(factors)
    return [pass_map(rows, criterion, fx, fy, bins_x=bins, bins_y=bins, log_x=fx in log_scale,
                     log_y=fy in log_scale) for fx, fy in itertools.combinations(names, 2)]
