"""Parameter sweeps: a ``[sweep]`` section in a config varies any simulation parameter.

    [sweep]
    mode = "oat"                 # oat (one factor at a time around the nominal config) | grid | lhs | sobol
    images_per_point = 4         # replicates per point
    n_points = 16                # lhs / sobol only
    log_scale = ["detector.probe_current_pA"]   # lhs / sobol: sample these factors uniformly in log
    design_seed = 0              # lhs / sobol: seed of the design itself

    [sweep.factors]
    "probe.sigma_nm" = [2.0, 5.0, 10.0]              # oat / grid: levels
    "detector.probe_current_pA" = [20.0, 110.0]      # lhs / sobol: [min, max]

Points are numbered from 0. ``oat`` starts with the nominal point (the config without the sweep), then each
factor's levels in the order given, the others at nominal (a level equal to the nominal value is not repeated).
Replicate r of every point draws from the same random streams (``SeedSequence(seed).spawn(...)[r]``): at a given
replicate, points that differ only in noise or blur have identical geometry and masks (common random numbers),
so differences between levels come from the factor alone.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import qmc

from simulator.config import ConfigError, SimConfig, config_from_dict, config_to_dict, read_toml

MODES = ("oat", "grid", "lhs", "sobol")
_SWEEP_KEYS = {"mode", "images_per_point", "n_points", "log_scale", "design_seed", "factors"}


@dataclass(frozen=True, slots=True)
class SweepSpec:
    mode: str
    factors: dict[str, list[Any]]  # levels (oat, grid) or [min, max] (lhs, sobol)
    images_per_point: int = 1
    n_points: int = 0
    log_scale: tuple[str, ...] = ()
    design_seed: int = 0


@dataclass(frozen=True, slots=True)
class SweepPoint:
    id: int
    factors: dict[str, Any]  # the swept keys and their values at this point
    config: SimConfig

    def record(self, replicate: int) -> dict[str, Any]:
        """What every image of this point records in annotations.json."""
        return {"point_id": self.id, "replicate": replicate, "factors": dict(self.factors)}


def _field_type(key: str) -> type:
    section, _, name = key.partition(".")
    sections = typing.get_type_hints(SimConfig)
    if section not in sections or name not in {f.name for f in dataclasses.fields(sections[section])}:
        raise ConfigError(f"sweep factor {key!r} is not a simulation parameter (expected 'section.key')")
    hint = typing.get_type_hints(sections[section])[name]
    return hint if isinstance(hint, type) else {"int": int, "float": float, "str": str, "bool": bool}[str(hint)]


def parse_sweep(data: dict[str, Any], *, source: str = "<dict>") -> SweepSpec:
    """Validate a ``[sweep]`` table; errors name the file, the key and what was expected."""
    try:
        unknown = set(data) - _SWEEP_KEYS
        if unknown:
            expected = ", ".join(sorted(_SWEEP_KEYS))
            raise ConfigError(f"unknown key sweep.{sorted(unknown)[0]}; expected one of {expected}")
        mode = data.get("mode", "oat")
        if mode not in MODES:
            raise ConfigError(f"sweep.mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
        factors = data.get("factors")
        if not isinstance(factors, dict) or not factors:
            raise ConfigError("sweep.factors must be a table of 'section.key' = [values], with at least one factor")
        images = data.get("images_per_point", 1)
        if not isinstance(images, int) or isinstance(images, bool) or images < 1:
            raise ConfigError(f"sweep.images_per_point must be an integer >= 1, got {images!r}")
        n_points = data.get("n_points", 0)
        log_scale = tuple(data.get("log_scale", ()))
        for key, values in factors.items():
            kind = _field_type(key)
            if not isinstance(values, list) or not values:
                raise ConfigError(f"sweep.factors.{key} must be a non-empty list, got {values!r}")
            if mode in ("lhs", "sobol"):
                numeric = kind in (int, float) and all(
                    isinstance(v, int | float) and not isinstance(v, bool) for v in values
                )
                if not numeric or len(values) != 2 or not values[0] < values[1]:
                    raise ConfigError(
                        f"sweep.factors.{key} must be [min, max] with min < max for mode {mode!r}, got {values!r}"
                    )
                if key in log_scale and values[0] <= 0:
                    raise ConfigError(f"sweep.factors.{key} is on a log scale and needs min > 0, got {values!r}")
        if mode in ("lhs", "sobol") and (not isinstance(n_points, int) or n_points < 1):
            raise ConfigError(f"sweep.n_points must be an integer >= 1 for mode {mode!r}, got {n_points!r}")
        for key in log_scale:
            if key not in factors:
                raise ConfigError(f"sweep.log_scale names {key!r}, which is not a sweep factor")
        return SweepSpec(mode, {k: list(v) for k, v in factors.items()}, images, n_points, log_scale,
                         int(data.get("design_seed", 0)))
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def load_run_config(path: str | Path) -> tuple[SimConfig, SweepSpec | None]:
    """A config file that may hold a ``[sweep]`` section: (nominal config, sweep or None)."""
    path = Path(path)
    data = read_toml(path)
    sweep = data.pop("sweep", None)
    cfg = config_from_dict(data, source=str(path))
    return cfg, (parse_sweep(sweep, source=str(path)) if sweep is not None else None)


def apply_overrides(cfg: SimConfig, factors: dict[str, Any], *, source: str) -> SimConfig:
    """The config with 'section.key' values replaced, validated like a config file."""
    data = config_to_dict(cfg)
    for key, value in factors.items():
        section, _, name = key.partition(".")
        data[section][name] = value
    return config_from_dict(data, source=source)


def _design(spec: SweepSpec) -> list[dict[str, Any]]:
    keys = list(spec.factors)
    if spec.mode == "grid":
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*spec.factors.values())]
    engine = (qmc.LatinHypercube if spec.mode == "lhs" else qmc.Sobol)
    kwargs = {"scramble": True} if spec.mode == "sobol" else {}
    unit = engine(d=len(keys), rng=np.random.default_rng(spec.design_seed), **kwargs).random(spec.n_points)
    points = []
    for row in unit:
        point = {}
        for key, u in zip(keys, row, strict=True):
            lo, hi = spec.factors[key]
            value = np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo))) if key in spec.log_scale else lo + u * (hi - lo)
            point[key] = int(round(value)) if _field_type(key) is int else float(value)
        points.append(point)
    return points


def expand(spec: SweepSpec, nominal: SimConfig) -> list[SweepPoint]:
    """Every point of the sweep with its validated config."""
    base = config_to_dict(nominal)
    nominal_values = {key: base[key.partition(".")[0]][key.partition(".")[2]] for key in spec.factors}
    if spec.mode == "oat":
        designs = [dict(nominal_values)]
        for key, levels in spec.factors.items():
            designs += [{**nominal_values, key: level} for level in levels if level != nominal_values[key]]
    else:
        designs = _design(spec)
    return [
        SweepPoint(pid, factors, apply_overrides(nominal, factors, source=f"sweep point {pid} {json.dumps(factors)}"))
        for pid, factors in enumerate(designs)
    ]
