"""Result rows of a sweep (factors and metrics of one image), the pass criterion, factor axes and bins."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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


def _none(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


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
