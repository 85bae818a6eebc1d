"""Is a new measurement image inside the validated domain? Its factors against the training distribution and
against the operating ranges of a robustness run, one verdict per image with its reasons.

A robustness run states its ranges in config units (``probe.sigma_nm``, ``detector.probe_current_pA``, ...).
An image gives measured factors (``blur_sigma_nm``, ``equivalent_counts``, ...). ``level_maps`` links the two
on the robustness run's own images: per tested level of a swept key, the median measured factor of the images
simulated there (the other keys at nominal). A measured value is converted to the equivalent level by
interpolation between those medians (log-log), so the estimator's own bias cancels.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from eval.domain.model import DomainModel, factor_value, typicality

# config key swept by robustness -> the measured factor that estimates it
FACTOR_OF_KEY = {
    "probe.sigma_nm": "blur_sigma_nm",
    "detector.probe_current_pA": "snr",
    "image.pixel_size_nm": "pixel_size_nm",
    "field.coverage": "coverage",
}
VERDICTS = ("inside", "atypical", "untested", "outside")  # in order of severity


@dataclass(frozen=True, slots=True)
class LevelMap:
    """Tested levels of one config key and the median measured factor of the images at each level."""

    key: str
    factor: str
    levels: tuple[float, ...]
    measured: tuple[float, ...]

    def level_of(self, value: float) -> float:
        """The config level whose images measure ``value`` (log-log interpolation, clamped extrapolation by
        the end segments' slope)."""
        x, y = np.log(np.asarray(self.measured)), np.log(np.asarray(self.levels))
        order = np.argsort(x)
        x, y = x[order], y[order]
        v = np.log(max(value, 1e-12))
        if len(x) == 1:
            return float(np.exp(y[0]))
        if v < x[0]:
            slope = (y[1] - y[0]) / max(x[1] - x[0], 1e-12)
            return float(np.exp(y[0] + slope * (v - x[0])))
        if v > x[-1]:
            slope = (y[-1] - y[-2]) / max(x[-1] - x[-2], 1e-12)
            return float(np.exp(y[-1] + slope * (v - x[-1])))
        return float(np.exp(np.interp(v, x, y)))

    def measured_at(self, level: float) -> float:
        x, y = np.log(np.asarray(self.levels)), np.log(np.asarray(self.measured))
        order = np.argsort(x)
        return float(np.exp(np.interp(np.log(level), x[order], y[order])))


@dataclass(frozen=True, slots=True)
class Range:
    """One operating range of a robustness run (config units)."""

    key: str
    nominal: float
    tested_lo: float
    tested_hi: float
    range_lo: float | None
    range_hi: float | None
    statement: str


def load_ranges(robustness_json: Path) -> list[Range]:
    """The one-at-a-time operating ranges recorded in a robustness run's ``robustness.json``."""
    blob = json.loads(Path(robustness_json).read_text())
    ranges = (blob.get("statistics") or {}).get("ranges")
    if not ranges:
        raise ValueError("holds no operating ranges (a one-at-a-time or grid robustness run has them)")
    if isinstance(ranges, dict):  # keyed by factor
        ranges = list(ranges.values())
    return [Range(r["factor"], float(r["nominal"]), float(r["tested_lo"]), float(r["tested_hi"]),
                  None if r["range_lo"] is None else float(r["range_lo"]),
                  None if r["range_hi"] is None else float(r["range_hi"]), r.get("statement", ""))
            for r in ranges]


def level_maps(per_image_csv: Path, factors_of: Mapping[str, Mapping[str, float]], ranges: Sequence[Range]
               ) -> dict[str, LevelMap]:
    """Level maps of the swept keys that have a measured counterpart, from a robustness run's per-image CSV
    (its ``factor:KEY`` columns) and the measured factors of its images (``factors_of[file_name]``)."""
    with open(per_image_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    nominal = {r.key: r.nominal for r in ranges}
    maps = {}
    for key, factor in FACTOR_OF_KEY.items():
        if key not in nominal or f"factor:{key}" not in (rows[0] if rows else {}):
            continue
        by_level: dict[float, list[float]] = {}
        for row in rows:
            others = all(abs(float(row[f"factor:{k}"]) - v) <= 1e-9 * max(abs(v), 1)
                         for k, v in nominal.items() if k != key and f"factor:{k}" in row)
            measured = factors_of.get(row["file_name"])
            value = factor_value(measured, factor) if measured else float("nan")
            if others and np.isfinite(value) and value > 0:
                by_level.setdefault(float(row[f"factor:{key}"]), []).append(float(value))
        if len(by_level) >= 2:
            levels = sorted(by_level)
            maps[key] = LevelMap(key, factor, tuple(levels), tuple(float(np.median(by_level[v])) for v in levels))
    return maps


def range_status(rng: Range, level: float) -> str:
    """inside the established range, outside it (tested and not established), or untested."""
    tol = 1e-9 * max(abs(level), 1.0)
    if rng.range_lo is not None and rng.range_hi is not None and rng.range_lo - tol <= level <= rng.range_hi + tol:
        return "inside"
    if rng.tested_lo - tol <= level <= rng.tested_hi + tol:
        return "outside"
    return "untested"


def check_image(name: str, row: Mapping[str, float], model: DomainModel, ranges: Sequence[Range] = (),
                maps: Mapping[str, LevelMap] | None = None, *, alpha: float = 1e-3) -> dict:
    """The verdict for one image: its typicality under the training distribution and, per validated key with a
    level map, where its equivalent level lies against the operating range. Verdict = the most severe of
    inside < atypical < untested < outside; ``reasons`` name the factors."""
    typ = typicality(model, row)
    reasons, statuses, per_key = [], ["inside"], {}
    if np.isfinite(typ.p_value) and typ.p_value < alpha:
        far = sorted(typ.scores, key=lambda n: -abs(typ.scores[n]))[:2]
        reasons.append(f"atypical of the training images (p = {typ.p_value:.1e}; furthest: "
                       + ", ".join(f"{n} = {row[n]:.4g} (z = {typ.scores[n]:+.1f})" for n in far) + ")")
        statuses.append("atypical")
    for name_f, value in typ.fixed_outside.items():
        reasons.append(f"{name_f} = {value:.4g}, the training images all have {model.fixed[name_f]:.4g}")
        statuses.append("atypical")
    for rng in ranges:
        m = (maps or {}).get(rng.key)
        if m is None:
            continue
        value = factor_value(row, m.factor)
        if not np.isfinite(value):
            continue
        level = m.level_of(float(value))
        status = range_status(rng, level)
        per_key[rng.key] = {"factor": m.factor, "measured": float(value), "equivalent_level": level,
                            "status": status, "range": [rng.range_lo, rng.range_hi],
                            "tested": [rng.tested_lo, rng.tested_hi]}
        if status != "inside":
            span = ("no established range" if rng.range_lo is None else f"validated {rng.range_lo:g}-{rng.range_hi:g}")
            reasons.append(f"{m.factor} = {value:.4g} ~ {rng.key} {level:.3g} ({status}: {span}, "
                           f"tested {rng.tested_lo:g}-{rng.tested_hi:g})")
            statuses.append(status)
    verdict = max(statuses, key=VERDICTS.index)
    inside = "inside the training distribution" + (" and every validated range" if per_key else "")
    return {"image": name, "verdict": verdict, "reasons": reasons or [inside],
            "typicality": asdict(typ), "ranges": per_key,
            "factors": {k: (None if v is None or (isinstance(v, float) and not np.isfinite(v)) else v)
                        for k, v in row.items()}}
