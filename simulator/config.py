"""Simulation configuration: frozen dataclasses read from TOML by a strict loader.

Every physical quantity carries its unit in its name. Each section validates its own ranges and names the
offending key as ``section.key`` with the value it got and the range it expected. Unknown keys are refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file, the key and the expected value."""


def _check_range(
    key: str,
    value: float,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    ok = True
    if lo is not None:
        ok &= value > lo if lo_open else value >= lo
    if hi is not None:
        ok &= value < hi if hi_open else value <= hi
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise ConfigError(f"{key} must be in {left}{lo_s}, {hi_s}{right}, got {value!r}")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(repr, choices))}, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageConfig:
    """Field of view and pixel grid. Pixel (row i, col j) samples the scene at its centre,
    x = (j + 0.5) * pixel_size_nm, y = (i + 0.5) * pixel_size_nm."""

    section: ClassVar[str] = "image"
    width_px: int = 1024
    height_px: int = 768
    pixel_size_nm: float = 7.344
    bit_depth: int = 8

    def __post_init__(self) -> None:
        _check_range("image.width_px", self.width_px, 8, 16384)
        _check_range("image.height_px", self.height_px, 8, 16384)
        _check_range("image.pixel_size_nm", self.pixel_size_nm, 0.01, 1000.0)
        if self.bit_depth not in (8, 16):
            raise ConfigError(f"image.bit_depth must be 8 or 16, got {self.bit_depth!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class PrimaryConfig:
    """Primary particles: log-normal volume-equivalent diameters and one of three shapes."""

    section: ClassVar[str] = "primary"
    shape: str = "irregular"
    diameter_gmean_nm: float = 150.0
    diameter_gsd: float = 1.3
    diameter_min_nm: float = 20.0
    diameter_max_nm: float = 600.0
    aspect_ratio_gmean: float = 1.3
    aspect_ratio_gsd: float = 1.15
    roughness: float = 0.07
    roughness_degree: int = 3

    SHAPES: ClassVar[tuple[str, ...]] = ("sphere", "ellipsoid", "irregular")

    def __post_init__(self) -> None:
        _check_choice("primary.shape", self.shape, self.SHAPES)
        _check_range("primary.diameter_gmean_nm", self.diameter_gmean_nm, 0.0, 1e5, lo_open=True)
        _check_range("primary.diameter_gsd", self.diameter_gsd, 1.0, 3.0)
        _check_range("primary.diameter_min_nm", self.diameter_min_nm, 0.0, None, lo_open=True)
        _check_range("primary.diameter_max_nm", self.diameter_max_nm, self.diameter_min_nm, 1e5, lo_open=True)
        _check_range("primary.aspect_ratio_gmean", self.aspect_ratio_gmean, 1.0, 5.0)
        _check_range("primary.aspect_ratio_gsd", self.aspect_ratio_gsd, 1.0, 3.0)
        _check_range("primary.roughness", self.roughness, 0.0, 0.25)
        _check_range("primary.roughness_degree", self.roughness_degree, 2, 6)


@dataclass(frozen=True, slots=True, kw_only=True)
class AggregateConfig:
    """Fractal aggregates: N = kf (Rg / a)^Df, necking overlap, primaries per aggregate (log-normal)."""

    section: ClassVar[str] = "aggregate"
    fractal_dimension: float = 1.8
    fractal_prefactor: float = 1.3
    overlap: float = 0.1
    primaries_median: float = 6.0
    primaries_gsd: float = 2.0
    primaries_max: int = 64

    def __post_init__(self) -> None:
        _check_range("aggregate.fractal_dimension", self.fractal_dimension, 1.0, 3.0)
        _check_range("aggregate.fractal_prefactor", self.fractal_prefactor, 0.1, 10.0)
        _check_range("aggregate.overlap", self.overlap, 0.0, 0.5, hi_open=True)
        _check_range("aggregate.primaries_median", self.primaries_median, 1.0, 512.0)
        _check_range("aggregate.primaries_gsd", self.primaries_gsd, 1.0, 5.0)
        _check_range("aggregate.primaries_max", self.primaries_max, 1, 512)


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldConfig:
    """How many aggregates lie in the field: a number density of primaries, or a target surface coverage."""

    section: ClassVar[str] = "field"
    primaries_per_um2: float = 3.5
    coverage: float = 0.0
    placement_tries: int = 20

    def __post_init__(self) -> None:
        _check_range("field.primaries_per_um2", self.primaries_per_um2, 0.0, 1000.0)
        _check_range("field.coverage", self.coverage, 0.0, 0.9)
        _check_range("field.placement_tries", self.placement_tries, 1, 1000)
        if self.coverage > 0 and self.primaries_per_um2 > 0:
            raise ConfigError(
                "field.coverage and field.primaries_per_um2 are both set "
                f"({self.coverage!r}, {self.primaries_per_um2!r}); set one of them to 0"
            )
        if self.coverage == 0 and self.primaries_per_um2 == 0:
            raise ConfigError("field.coverage and field.primaries_per_um2 are both 0; set one of them > 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadingConfig:
    """Provisional normal-based shading (replaced by the SEM image-formation stages)."""

    section: ClassVar[str] = "shading"
    substrate_level: float = 0.18
    particle_level: float = 0.42
    tilt_exponent: float = 1.0
    max_tilt_gain: float = 2.5
    blur_sigma_px: float = 0.7

    def __post_init__(self) -> None:
        _check_range("shading.substrate_level", self.substrate_level, 0.0, 1.0)
        _check_range("shading.particle_level", self.particle_level, 0.0, 1.0)
        _check_range("shading.tilt_exponent", self.tilt_exponent, 0.0, 3.0)
        _check_range("shading.max_tilt_gain", self.max_tilt_gain, 1.0, 20.0)
        _check_range("shading.blur_sigma_px", self.blur_sigma_px, 0.0, 20.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputConfig:
    """What the dataset writer stores besides images and annotations."""

    section: ClassVar[str] = "output"
    label_maps: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    """The whole simulation: one sub-config per stage."""

    image: ImageConfig = dataclasses.field(default_factory=ImageConfig)
    primary: PrimaryConfig = dataclasses.field(default_factory=PrimaryConfig)
    aggregate: AggregateConfig = dataclasses.field(default_factory=AggregateConfig)
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    shading: ShadingConfig = dataclasses.field(default_factory=ShadingConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)


_SECTIONS: dict[str, type] = {f.name: f.type for f in dataclasses.fields(SimConfig)}


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check a TOML value against the field's type; ints are accepted where floats are expected."""
    expected = {"int": int, "float": float, "str": str, "bool": bool}.get(str(annotation), annotation)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and expected is not bool:
        raise ConfigError(f"{key} must be a {expected.__name__}, got {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(f"{key} must be a {expected.__name__}, got {value!r} ({type(value).__name__})")
    return value


def config_from_dict(data: dict[str, Any], *, source: str = "<dict>") -> SimConfig:
    """Build a validated SimConfig from nested dicts; refuses unknown sections and keys."""
    try:
        sections = {}
        for name, value in data.items():
            if name not in _SECTIONS:
                raise ConfigError(f"unknown section [{name}]; expected one of {', '.join(_SECTIONS)}")
            if not isinstance(value, dict):
                raise ConfigError(f"[{name}] must be a table, got {value!r}")
            cls = typing.get_type_hints(SimConfig)[name]
            hints = typing.get_type_hints(cls)
            known = {f.name for f in dataclasses.fields(cls)}
            kwargs = {}
            for key, item in value.items():
                if key not in known:
                    raise ConfigError(f"unknown key {name}.{key}; expected one of {', '.join(sorted(known))}")
                kwargs[key] = _coerce(f"{name}.{key}", item, hints[key])
            sections[name] = cls(**kwargs)
        return SimConfig(**sections)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def load_config(path: str | Path) -> SimConfig:
    """Read a TOML file into a validated SimConfig."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    return config_from_dict(data, source=str(path))


def config_to_dict(cfg: SimConfig) -> dict[str, dict[str, Any]]:
    """The resolved config as plain nested dicts (every default filled in)."""
    return {
        f.name: {g.name: getattr(getattr(cfg, f.name), g.name) for g in dataclasses.fields(getattr(cfg, f.name))}
        for f in dataclasses.fields(cfg)
    }


def config_hash(cfg: SimConfig) -> str:
    """SHA-256 of the canonical JSON of the resolved config."""
    text = json.dumps(config_to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
