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

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

STATUSES = ("in", "out", "undecided")
_MAX_IMAGES = 100_000

# Unit of a factor from its name's suffix (docs/parameters.md); longest suffix first.
_UNITS = (
    ("_nm_per_s", "nm/s"),
    ("_per_um2", "µm⁻²"),
    ("_nm", "nm"),
    ("_px", "px"),
    ("_pA", "pA"),
    ("_keV", "keV"),
    ("_us", "µs"),
    ("_mrad", "mrad"),
    ("_rad", "rad"),
    ("_deg", "°"),
    ("_hz", "Hz"),
)


# ----------------------------------------------------------------------------------------------------- input


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One image's result: its sweep point and metric values."""

    point_id: int
    replicate: int
    factors: Mapping[str, Any]  # the swept parameters at this point, e.g. {"probe.sigma_nm": 3.0}
    metrics: Mapping[str, float]  # e.g. {"D50_rel_err": -0.03, "F1": 0.91}


@dataclass(frozen=True, slots=True)
class RangeCriterion:
    """An image passes when |measurand| <= tau; a level is "in" when P(pass) >= 1 - alpha is established."""

    measurand: str = "D50_rel_err"
    tau: float = 0.05
    alpha: float = 0.05
    confidence: float = 0.95

    def __post_init__(self):
        if not self.measurand:
            raise ValueError("RangeCriterion.measurand must name a metric, got an empty string")
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise ValueError(f"RangeCriterion.tau must be a finite number > 0, got {self.tau!r}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"RangeCriterion.alpha must be in (0, 1), got {self.alpha!r}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"RangeCriterion.confidence must be in (0, 1), got {self.confidence!r}")

    @property
    def target(self) -> float:
        """The pass probability a level must reach: 1 - alpha."""
        return 1.0 - self.alpha

    def describe(self) -> str:
        return (f"|{self.measurand}| <= {self.tau:g} for >= {100 * self.target:g} % of images "
                f"({100 * self.confidence:g} % Clopper-Pearson lower bound)")


def as_rows(items: Iterable[ResultRow | Mapping[str, Any]]) -> list[ResultRow]:
    """Per-image results as ``ResultRow``s.

    Each item is a ``ResultRow`` or a dict with either ``point_id``, ``replicate``, ``factors`` or an
    annotations.json-style ``sweep_point = {point_id, replicate, factors}``; metrics come from ``metrics``
    (a dict) or else from every other numeric top-level key.
    """
    rows = []
    for i, item in enumerate(items):
        if isinstance(item, ResultRow):
            rows.append(item)
            continue
        if not isinstance(item, Mapping):
            raise TypeError(f"row {i}: expected a ResultRow or a dict, got {type(item).__name__}")
        point = item.get("sweep_point", item)
        missing = [key for key in ("point_id", "factors") if key not in point]
        if missing:
            raise ValueError(f"row {i}: missing {', '.join(missing)} (expected point_id, replicate, factors "
                             f"or sweep_point = {{point_id, replicate, factors}}), got keys {sorted(item)}")
        if "metrics" in item:
            metrics = {str(k): float(v) if v is not None else math.nan for k, v in item["metrics"].items()}
        else:
            skip = {"point_id", "replicate", "factors", "sweep_point"}
            metrics = {str(k): float(v) for k, v in item.items()
                       if k not in skip and isinstance(v, int | float) and not isinstance(v, bool)}
        rows.append(ResultRow(int(point["point_id"]), int(point.get("replicate", 0)), dict(point["factors"]),
                              metrics))
    return rows


def with_metric(rows: Sequence[ResultRow], name: str, fn: Callable[[Mapping[str, float]], float]) -> list[ResultRow]:
    """Rows with one more metric computed from each row's metrics, e.g. 1 - |D50 err| for robustness tables."""
    return [dataclasses.replace(r, metrics={**r.metrics, name: float(fn(r.metrics))}) for r in rows]


def factor_unit(factor: str) -> str:
    """Unit of a sweep factor from its name ('probe.sigma_nm' -> 'nm'); '' when dimensionless or unknown."""
    for suffix, unit in _UNITS:
        if factor.endswith(suffix):
            return unit
    return ""


def format_level(value: float, factor: str = "") -> str:
    """A level with its unit, compactly: '2.5 nm'."""
    unit = factor_unit(factor)
    return f"{value:.4g}{' ' + unit if unit else ''}"


def _metric(row: ResultRow, name: str) -> float:
    try:
        return float(row.metrics[name])
    except KeyError:
        raise KeyError(f"metric {name!r} not in the row of point {row.point_id} replicate {row.replicate}; "
                       f"it has {sorted(row.metrics)}") from None


def _values(rows: Sequence[ResultRow], name: str) -> np.ndarray:
    return np.array([_metric(r, name) for r in rows], dtype=float)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)


def numeric_factors(rows: Sequence[ResultRow]) -> list[str]:
    """Factors present in every row with numeric values in every row, in first-seen order."""
    if not rows:
        raise ValueError("no rows: expected at least one per-image result")
    names = list(rows[0].factors)
    return [f for f in names if all(f in r.factors and _is_number(r.factors[f]) for r in rows)]


def _factor_values(rows: Sequence[ResultRow], factor: str) -> np.ndarray:
    values = []
    for r in rows:
        if factor not in r.factors:
            raise KeyError(f"factor {factor!r} not in point {r.point_id}; it has {sorted(r.factors)}")
        if not _is_number(r.factors[factor]):
            raise ValueError(f"factor {factor!r} has a non-numeric level {r.factors[factor]!r} at point "
                             f"{r.point_id}; expected numbers")
        values.append(float(r.factors[factor]))
    return np.array(values, dtype=float)


def passes(rows: Sequence[ResultRow], criterion: RangeCriterion) -> np.ndarray:
    """(n,) bool: |measurand| <= tau per row; a non-finite measurand fails."""
    err = _values(rows, criterion.measurand)
    with np.errstate(invalid="ignore"):
        return np.isfinite(err) & (np.abs(err) <= criterion.tau)


# ------------------------------------------------------------------------------------- binomial statistics


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided Clopper-Pearson interval of a binomial proportion, k successes out of n."""
    if isinstance(k, bool) or isinstance(n, bool) or int(k) != k or int(n) != n:
        raise ValueError(f"k and n must be integers, got k={k!r}, n={n!r}")
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"expected 0 <= k <= n and n >= 1, got k={k!r}, n={n!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    tail = (1.0 - confidence) / 2.0
    low = 0.0 if k == 0 else float(stats.beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1.0 - tail, k + 1, n - k))
    return low, high


def _cp_arrays(k: np.ndarray, n: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    tail = (1.0 - confidence) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(k > 0, stats.beta.ppf(tail, np.maximum(k, 1), n - k + 1), 0.0)
        high = np.where(k < n, stats.beta.ppf(1.0 - tail, k + 1, np.maximum(n - k, 1)), 1.0)
    return low, high


def decide(low: float, high: float, criterion: RangeCriterion) -> str:
    """'in' when low >= 1 - alpha, 'out' when high < 1 - alpha, else 'undecided'."""
    if low >= criterion.target:
        return "in"
    if high < criterion.target:
        return "out"
    return "undecided"


def images_needed(k: int, n: int, criterion: RangeCriterion) -> int | None:
    """Roughly how many more images, at the same pass rate k/n, would decide an undecided level.

    Searches total counts N on a 2 % geometric grid, then every N in the last step; the passes at N are
    round(N k / n). None when k/n equals 1 - alpha (never decided) or more than 100,000 images would be needed.
    """
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"expected 0 <= k <= n and n >= 1, got k={k!r}, n={n!r}")
    p = k / n
    if p == criterion.target:
        return None
    low, high = clopper_pearson(k, n, criterion.confidence)
    if decide(low, high, criterion) != "undecided":
        return 0

    def decided(total: np.ndarray) -> np.ndarray:
        k_total = np.round(p * total)
        lo, hi = _cp_arrays(k_total, total, criterion.confidence)
        return lo >= criterion.target if p > criterion.target else hi < criterion.target

    grid = np.unique(np.round(n * 1.02 ** np.arange(1, 700)).astype(np.int64))
    grid = grid[(grid > n) & (grid <= _MAX_IMAGES)]
    ok = decided(grid.astype(float))
    if not ok.any():
        return None
    j = int(np.argmax(ok))
    start = n + 1 if j == 0 else int(grid[j - 1]) + 1
    fine = np.arange(start, int(grid[j]) + 1)
    first = int(fine[np.argmax(decided(fine.astype(float)))])
    return first - n


@dataclass(frozen=True, slots=True)
class PassCount:
    """Pass statistics of one group of images (a tested level, a bin or a map cell)."""

    n: int
    k: int
    p_hat: float | None  # None when n == 0
    low: float | None  # Clopper-Pearson interval of P(pass)
    high: float | None
    status: str  # in | out | undecided | empty
    images_more: int | None  # undecided: roughly how many more images would decide it


def pass_count(k: int, n: int, criterion: RangeCriterion) -> PassCount:
    """Pass probability, Clopper-Pearson interval and status of k passes out of n images."""
    if n == 0:
        return PassCount(0, 0, None, None, None, "empty", None)
    low, high = clopper_pearson(k, n, criterion.confidence)
    status = decide(low, high, criterion)
    more = images_needed(k, n, criterion) if status == "undecided" else None
    return PassCount(n, k, k / n, low, high, status, more)


# -------------------------------------------------------------------------------- one-at-a-time sweeps


def nominal_factors(rows: Sequence[ResultRow]) -> dict[str, Any]:
    """The nominal point's factors: those of the lowest point_id (point 0 of an oat sweep is the nominal)."""
    if not rows:
        raise ValueError("no rows: expected at least one per-image result")
    return dict(min(rows, key=lambda r: r.point_id).factors)


def factor_axis(rows: Sequence[ResultRow], factor: str, nominal: Mapping[str, Any] | None = None
                ) -> dict[float, list[ResultRow]]:
    """Rows on one factor's axis of a one-at-a-time sweep, by level (ascending).

    A row is on the axis when every other factor is at its nominal value (the nominal point belongs to every
    axis). ``nominal`` defaults to ``nominal_factors(rows)``.
    """
    nominal = nominal_factors(rows) if nominal is None else dict(nominal)
    if factor not in nominal:
        raise KeyError(f"factor {factor!r} is not a sweep factor; the sweep has {sorted(nominal)}")
    if not _is_number(nominal[factor]):
        raise ValueError(f"factor {factor!r} has the non-numeric nominal level {nominal[factor]!r}; "
                         "operating ranges and curves need numeric levels")
    others = [f for f in nominal if f != factor]
    axis: dict[float, list[ResultRow]] = {}
    for r in rows:
        if all(r.factors.get(f) == nominal[f] for f in others):
            axis.setdefault(float(_factor_values([r], factor)[0]), []).append(r)
    return dict(sorted(axis.items()))


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


def mean_interval(values: np.ndarray, *, method: str = "t", confidence: float = 0.95,
                  rng: np.random.Generator | None = None, n_boot: int = 2000) -> tuple[float, float, float]:
    """(mean, low, high) of finite values: Student-t or percentile-bootstrap interval of the mean."""
    if method not in ("t", "bootstrap"):
        raise ValueError(f"method must be 't' or 'bootstrap', got {method!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    values = np.asarray(values, dtype=float)
    n = values.size
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if n < 2:
        return mean, math.nan, math.nan
    if method == "t":
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * values.std(ddof=1) / math.sqrt(n))
        return mean, mean - half, mean + half
    if rng is None:
        raise ValueError("method='bootstrap' needs rng (a numpy.random.Generator)")
    if n_boot < 100:
        raise ValueError(f"n_boot must be >= 100, got {n_boot!r}")
    means = values[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return mean, float(low), float(high)


def _none(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


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


def bin_edges(values: np.ndarray, bins: int, *, log: bool = False) -> np.ndarray:
    """``bins`` + 1 equal-width edges over [min, max] of the values (equal in log10 when ``log``)."""
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
    values = np.asarray(values, dtype=float)
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError("factor values must be finite and non-empty")
    lo, hi = float(values.min()), float(values.max())
    if log:
        if lo <= 0:
            raise ValueError(f"a log-scale factor needs values > 0, got a minimum of {lo!r}")
        return 10.0 ** np.linspace(np.log10(lo), np.log10(hi), bins + 1) if hi > lo else np.array([lo, hi])
    return np.linspace(lo, hi, bins + 1) if hi > lo else np.array([lo, hi])


def _bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value: [e0, e1), ..., [e_{m-1}, e_m] (the last bin is closed, like numpy.histogram)."""
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)


def _centre(edges: np.ndarray, j: int, log: bool) -> float:
    return float(np.sqrt(edges[j] * edges[j + 1]) if log else (edges[j] + edges[j + 1]) / 2)


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


# ---------------------------------------------------------------------------------------------------- JSON


def to_jsonable(obj: Any) -> Any:
    """Any result of this module (or containers of them) as plain JSON types; NaN and inf become None."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    return obj
