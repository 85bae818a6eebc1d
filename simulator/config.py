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
    """Primary particles: log-normal volume-equivalent diameters and one of four shapes."""

    section: ClassVar[str] = "primary"
    shape: str = "irregular"
    diameter_gmean_nm: float = 185.0
    diameter_gsd: float = 1.3
    diameter_min_nm: float = 20.0
    diameter_max_nm: float = 600.0
    aspect_ratio_gmean: float = 1.4
    aspect_ratio_gsd: float = 1.2
    roughness: float = 0.09
    roughness_degree: int = 3
    facet_planes: int = 14
    facet_depth: float = 0.8
    facet_depth_spread: float = 0.08

    SHAPES: ClassVar[tuple[str, ...]] = ("sphere", "ellipsoid", "irregular", "faceted")

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
        _check_range("primary.facet_planes", self.facet_planes, 4, 64)
        _check_range("primary.facet_depth", self.facet_depth, 0.5, 1.0)
        _check_range("primary.facet_depth_spread", self.facet_depth_spread, 0.0, 0.5)


@dataclass(frozen=True, slots=True, kw_only=True)
class AggregateConfig:
    """Fractal aggregates: N = kf (Rg / a)^Df, necking overlap, primaries per aggregate (log-normal)."""

    section: ClassVar[str] = "aggregate"
    fractal_dimension: float = 2.0
    fractal_prefactor: float = 1.3
    overlap: float = 0.1
    primaries_median: float = 7.0
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
    primaries_per_um2: float = 3.6
    coverage: float = 0.0
    density_spread: float = 0.6  # image-to-image spread (log-normal sigma) of the density or coverage
    placement_tries: int = 20

    def __post_init__(self) -> None:
        _check_range("field.primaries_per_um2", self.primaries_per_um2, 0.0, 1000.0)
        _check_range("field.coverage", self.coverage, 0.0, 0.9)
        _check_range("field.density_spread", self.density_spread, 0.0, 2.0)
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
    """Secondary-electron yield of the specimen and how the detector collects it (mean SE per primary electron)."""

    section: ClassVar[str] = "shading"
    beam_energy_keV: float = 20.0
    particle_yield: float = 1.2
    substrate_yield: float = 0.34
    tilt_exponent: float = 0.9
    max_tilt_gain: float = 1.5
    edge_gain: float = 0.2
    edge_range_nm: float = 15.0
    edge_step_nm: float = 20.0
    substrate_texture: float = 0.1
    texture_scale_nm: float = 1000.0
    texture_ridges: float = 0.6
    residue_rims: float = 1.0  # relative yield change on the rim of a residue island (0 = none)
    residue_size_nm: float = 70.0  # typical island diameter
    residue_coverage: float = 0.15  # fraction of the substrate inside islands
    residue_width_nm: float = 1.5  # rim line width (Gaussian sigma across the rim)
    residue_irregularity: float = 0.35  # outline wobble: relative amplitude of the lobes of each island (0 = ellipses)
    residue_spread: float = 0.8  # image-to-image spread (log-normal sigma) of the islands' coverage and rim strength
    residue_arc_variation: float = 0.0  # rim strength varying along and between outlines (log-normal sigma; 0 = even)
    substrate_dots_per_um2: float = 0.0  # small bright dots on the substrate (contamination, fine debris; 0 = none)
    substrate_dot_gain: float = 1.2  # median relative yield increase at a dot's centre (log-normal, sigma 0.5)
    substrate_dot_size_nm: float = 4.5  # Gaussian sigma of a dot
    facets: float = 0.7
    facet_count: int = 14
    et_fraction: float = 0.45
    et_azimuth_deg: float = 135.0
    et_elevation_deg: float = 35.0
    et_shadow: float = 0.7
    base_occlusion: float = 0.6  # SE yield lost at a particle's foot by the substrate beside it (0 = none)
    base_occlusion_range_nm: float = 40.0  # ... fading over this distance from the particle
    crevice_occlusion: float = 0.0  # the same loss on a particle beside a higher neighbour's edge (0 = none)
    et_shadow_range_nm: float = 25.0  # shadows fade over this distance from the particle (0 = line of sight)
    se2_fraction: float = 0.0  # share of a particle's signal that is SE2, spread over the particle (0 = none)
    se2_range_nm: float = 30.0  # ... Gaussian sigma of that spread (lateral BSE exit distance)
    particle_yield_spread: float = 0.0  # particle-to-particle spread of the yield (log-normal sigma; 0 = none)
    particle_yield_tilt: float = 0.0  # SD of each component of a per-particle yield ramp, per radius (0 = none)

    def __post_init__(self) -> None:
        _check_range("shading.beam_energy_keV", self.beam_energy_keV, 0.1, 40.0)
        _check_range("shading.particle_yield", self.particle_yield, 0.0, 20.0)
        _check_range("shading.substrate_yield", self.substrate_yield, 0.0, 20.0)
        _check_range("shading.tilt_exponent", self.tilt_exponent, 0.0, 3.0)
        _check_range("shading.max_tilt_gain", self.max_tilt_gain, 1.0, 50.0)
        _check_range("shading.edge_gain", self.edge_gain, 0.0, 10.0)
        _check_range("shading.edge_range_nm", self.edge_range_nm, 0.0, 1000.0)
        _check_range("shading.edge_step_nm", self.edge_step_nm, 0.0, 1e4)
        _check_range("shading.substrate_texture", self.substrate_texture, 0.0, 1.0)
        _check_range("shading.texture_scale_nm", self.texture_scale_nm, 1.0, 1e6)
        _check_range("shading.texture_ridges", self.texture_ridges, 0.0, 1.0)
        _check_range("shading.residue_rims", self.residue_rims, 0.0, 10.0)
        _check_range("shading.residue_size_nm", self.residue_size_nm, 1.0, 1e5)
        _check_range("shading.residue_coverage", self.residue_coverage, 0.01, 0.99)
        _check_range("shading.residue_width_nm", self.residue_width_nm, 0.1, 1e4)
        _check_range("shading.residue_irregularity", self.residue_irregularity, 0.0, 0.5)
        _check_range("shading.residue_spread", self.residue_spread, 0.0, 2.0)
        _check_range("shading.residue_arc_variation", self.residue_arc_variation, 0.0, 3.0)
        _check_range("shading.substrate_dots_per_um2", self.substrate_dots_per_um2, 0.0, 1e4)
        _check_range("shading.substrate_dot_gain", self.substrate_dot_gain, 0.0, 100.0)
        _check_range("shading.substrate_dot_size_nm", self.substrate_dot_size_nm, 0.1, 1e3)
        _check_range("shading.facets", self.facets, 0.0, 1.0)
        _check_range("shading.facet_count", self.facet_count, 4, 200)
        _check_range("shading.et_fraction", self.et_fraction, 0.0, 1.0)
        _check_range("shading.et_azimuth_deg", self.et_azimuth_deg, -360.0, 360.0)
        _check_range("shading.et_elevation_deg", self.et_elevation_deg, 1.0, 89.0)
        _check_range("shading.et_shadow_range_nm", self.et_shadow_range_nm, 0.0, 1e6)
        _check_range("shading.base_occlusion", self.base_occlusion, 0.0, 1.0)
        _check_range("shading.base_occlusion_range_nm", self.base_occlusion_range_nm, 0.0, 1e6)
        _check_range("shading.crevice_occlusion", self.crevice_occlusion, 0.0, 1.0)
        _check_range("shading.se2_fraction", self.se2_fraction, 0.0, 1.0)
        _check_range("shading.se2_range_nm", self.se2_range_nm, 0.0, 1e4, lo_open=True)
        _check_range("shading.particle_yield_spread", self.particle_yield_spread, 0.0, 1.5)
        _check_range("shading.particle_yield_tilt", self.particle_yield_tilt, 0.0, 2.0)
        _check_range("shading.et_shadow", self.et_shadow, 0.0, 1.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeConfig:
    """Beam profile: Gaussian probe, astigmatism and defocus."""

    section: ClassVar[str] = "probe"
    sigma_nm: float = 3.2
    astigmatism_ratio: float = 1.0
    astigmatism_angle_deg: float = 0.0
    defocus_nm: float = 0.0
    convergence_mrad: float = 5.0

    def __post_init__(self) -> None:
        _check_range("probe.sigma_nm", self.sigma_nm, 0.0, 1000.0)
        _check_range("probe.astigmatism_ratio", self.astigmatism_ratio, 1.0, 10.0)
        _check_range("probe.astigmatism_angle_deg", self.astigmatism_angle_deg, -180.0, 180.0)
        _check_range("probe.defocus_nm", self.defocus_nm, -1e5, 1e5)
        _check_range("probe.convergence_mrad", self.convergence_mrad, 0.0, 100.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScanConfig:
    """Raster scan timing and its distortions (evaluated along the scan time, as ARTIMAGEN does)."""

    section: ClassVar[str] = "scan"
    dwell_time_us: float = 1.0
    flyback_time_us: float = 100.0
    line_jitter_px: float = 0.0
    drift_x_nm_per_s: float = 0.0
    drift_y_nm_per_s: float = 0.0
    vibration_amplitude_nm: float = 0.0
    vibration_frequency_hz: float = 50.0
    vibration_angle_deg: float = 0.0

    def __post_init__(self) -> None:
        _check_range("scan.dwell_time_us", self.dwell_time_us, 0.001, 1e4)
        _check_range("scan.flyback_time_us", self.flyback_time_us, 0.0, 1e6)
        _check_range("scan.line_jitter_px", self.line_jitter_px, 0.0, 20.0)
        _check_range("scan.drift_x_nm_per_s", self.drift_x_nm_per_s, -1e4, 1e4)
        _check_range("scan.drift_y_nm_per_s", self.drift_y_nm_per_s, -1e4, 1e4)
        _check_range("scan.vibration_amplitude_nm", self.vibration_amplitude_nm, 0.0, 1000.0)
        _check_range("scan.vibration_frequency_hz", self.vibration_frequency_hz, 0.0, 1e6)
        _check_range("scan.vibration_angle_deg", self.vibration_angle_deg, -180.0, 180.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargingConfig:
    """Charging of poorly connected aggregates: brightening, halos and streaks along the scan direction."""

    section: ClassVar[str] = "charging"
    strength: float = 0.0
    halo_nm: float = 60.0
    streak_length_px: float = 40.0
    streak_gain: float = 0.5

    def __post_init__(self) -> None:
        _check_range("charging.strength", self.strength, 0.0, 10.0)
        _check_range("charging.halo_nm", self.halo_nm, 0.0, 1e4)
        _check_range("charging.streak_length_px", self.streak_length_px, 0.0, 1e4)
        _check_range("charging.streak_gain", self.streak_gain, 0.0, 10.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorConfig:
    """Dose, shot noise, SE emission and detector gain statistics, read noise, brightness/contrast, ADC."""

    section: ClassVar[str] = "detector"
    noise: bool = True
    probe_current_pA: float = 200.0
    gain_shape: float = 2.0
    read_noise: float = 0.0
    contrast: float = 0.35
    brightness: float = 0.0
    gamma: float = 1.0  # output transfer: brightness + contrast * y^gamma of the detected signal y (1 = linear)
    info_bar: bool = False
    info_bar_height_px: int = 56

    def __post_init__(self) -> None:
        _check_range("detector.probe_current_pA", self.probe_current_pA, 1e-3, 1e6)
        _check_range("detector.gain_shape", self.gain_shape, 0.1, 1e6)
        _check_range("detector.read_noise", self.read_noise, 0.0, 1.0)
        _check_range("detector.contrast", self.contrast, 0.0, 100.0)
        _check_range("detector.brightness", self.brightness, -10.0, 10.0)
        _check_range("detector.gamma", self.gamma, 0.2, 5.0)
        _check_range("detector.info_bar_height_px", self.info_bar_height_px, 16, 512)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClassesConfig:
    """Particle classes from geometry (simulator/classes.py): thresholds fitted to BAM's annotators."""

    section: ClassVar[str] = "classes"
    full_max_occluded: float = 0.2
    fragment_min_occluded: float = 0.6
    fragment_max_area_nm2: float = 8000.0

    def __post_init__(self) -> None:
        _check_range("classes.full_max_occluded", self.full_max_occluded, 0.0, 1.0)
        _check_range("classes.fragment_min_occluded", self.fragment_min_occluded, self.full_max_occluded, 1.0)
        _check_range("classes.fragment_max_area_nm2", self.fragment_max_area_nm2, 0.0, 1e7)


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
    probe: ProbeConfig = dataclasses.field(default_factory=ProbeConfig)
    scan: ScanConfig = dataclasses.field(default_factory=ScanConfig)
    charging: ChargingConfig = dataclasses.field(default_factory=ChargingConfig)
    detector: DetectorConfig = dataclasses.field(default_factory=DetectorConfig)
    classes: ClassesConfig = dataclasses.field(default_factory=ClassesConfig)
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


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as nested dicts; a missing file or bad syntax is a ConfigError naming the file."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder (expected a TOML config file, e.g. configs/default.toml)")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (expected an existing TOML config file, e.g. "
                          "configs/default.toml)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: is not text (binary data) (expected a TOML config file)") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror}) (expected a readable TOML config file)") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err} (expected a TOML config file)") from None


def load_config(path: str | Path) -> SimConfig:
    """Read a TOML file into a validated SimConfig."""
    path = Path(path)
    return config_from_dict(read_toml(path), source=str(path))


def config_to_dict(cfg: SimConfig) -> dict[str, dict[str, Any]]:
    """The resolved config as plain nested dicts (every default filled in)."""
    return {
        f.name: {g.name: getattr(getattr(cfg, f.name), g.name) for g in dataclasses.fields(getattr(cfg, f.name))}
        for f in dataclasses.fields(cfg)
    }


def config_to_toml(cfg: SimConfig, header: str = "") -> str:
    """The resolved config as a TOML file that ``load_config`` reads back to an equal config."""
    lines = [f"# {line}" for line in header.splitlines()]
    for section, values in config_to_dict(cfg).items():
        lines.append(f"\n[{section}]")
        for key, value in values.items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = json.dumps(value)
            else:
                text = repr(value)
            lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def config_hash(cfg: SimConfig) -> str:
    """SHA-256 of the canonical JSON of the resolved config."""
    text = json.dumps(config_to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
