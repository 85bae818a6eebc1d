"""Validation along a sweep: which levels can be applied to real images after acquisition, and how.

A one-factor-at-a-time sweep file (``[sweep] mode = "oat"``, e.g. configs/sweeps/robustness.toml) gives factors
and levels; the nominal values are those of the validation's simulator config, taken as a description of the
instrument that acquired the real images. For the factors of ``POST_HOC`` each level is applied to the real test
images by ``eval.validate.degrade`` and simulated from the config at that level; the others (charging, necking,
...) change the specimen or its physics and are listed as synthetic only.

Testable levels: probe blur above the nominal sigma, a dose (probe current) below the nominal one, pixels
coarser than the nominal ones and than every real image's own. The synthetic side at a level is the config
with that one value changed and the same seed and image count: image i draws from the same random streams at
every level (common random numbers, docs/scaling.md), so geometry is shared and differences between levels come
from the factor. For the pixel size the image is made smaller in pixels so that the field in nm (and with it
the geometry) stays that of the nominal images, as resampling a real image keeps its field.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from eval.validate import degrade

POST_HOC = {"probe.sigma_nm": "probe blur", "detector.probe_current_pA": "dose (probe current)",
            "image.pixel_size_nm": "pixel size"}


@dataclass(frozen=True, slots=True)
class SweepLevel:
    factor: str  # "section.key"
    level: float
    nominal: float
    testable: bool  # can be applied to the real images
    reason: str  # why not, when not
    note: str = ""  # a caveat on the comparison at this level

    @property
    def name(self) -> str:
        return f"{self.factor}={self.level:g}"


@dataclass(frozen=True, slots=True)
class SweepPlan:
    levels: tuple[SweepLevel, ...]  # levels of post-hoc factors other than the nominal one
    synthetic_only: tuple[str, ...]  # factors that cannot be applied to acquired images

    @property
    def testable(self) -> tuple[SweepLevel, ...]:
        return tuple(lv for lv in self.levels if lv.testable)


def _nominal(cfg, factor: str) -> float:
    section, _, name = factor.partition(".")
    return float(getattr(getattr(cfg, section), name))


def _testable(factor: str, level: float, nominal: float, real_pixel_sizes_nm: Sequence[float]) -> tuple[bool, str]:
    if factor == "probe.sigma_nm" and level < nominal:
        return False, f"not testable on real images: blur below the nominal {nominal:g} nm cannot be removed"
    if factor == "detector.probe_current_pA" and level > nominal:
        return False, f"not testable on real images: a dose above the nominal {nominal:g} pA cannot be added"
    if factor == "image.pixel_size_nm":
        finest = max(real_pixel_sizes_nm)
        if level < nominal or level < finest:
            return False, (f"not testable on real images: pixels finer than the nominal {nominal:g} nm or the real "
                           f"images' {finest:g} nm cannot be made")
    return True, ""


def plan_sweep(spec, cfg, real_pixel_sizes_nm: Sequence[float]) -> SweepPlan:
    """The post-hoc levels of a sweep (``simulator.sweep.SweepSpec``) around ``cfg`` (a ``SimConfig``)."""
    if spec.mode != "oat":
        raise ValueError(f"validate needs a one-factor-at-a-time sweep (mode = \"oat\"), got mode {spec.mode!r}")
    levels, synthetic_only = [], []
    for factor, values in spec.factors.items():
        if factor not in POST_HOC:
            synthetic_only.append(factor)
            continue
        nominal = _nominal(cfg, factor)
        for value in values:
            value = float(value)
            if math.isclose(value, nominal, rel_tol=1e-9):
                continue  # the nominal point is the main comparison
            ok, reason = _testable(factor, value, nominal, real_pixel_sizes_nm)
            note = ""
            if factor == "image.pixel_size_nm" and cfg.field.coverage > 0:
                note = ("field.coverage is estimated on a grid of image pixels: at another pixel size the simulator "
                        "places a different number of particles, so the synthetic geometry is not that of the "
                        "nominal images (set field.primaries_per_um2 instead)")
            levels.append(SweepLevel(factor, value, nominal, ok, reason, note))
    return SweepPlan(tuple(levels), tuple(synthetic_only))


def level_config(cfg, level: SweepLevel):
    """The simulator config at a sweep level; for the pixel size, the field in nm kept (fewer pixels)."""
    from simulator.sweep import apply_overrides

    factors = {level.factor: level.level}
    if level.factor == "image.pixel_size_nm":
        scale = level.nominal / level.level
        factors["image.width_px"] = max(int(round(cfg.image.width_px * scale)), 1)
        factors["image.height_px"] = max(int(round(cfg.image.height_px * scale)), 1)
    return apply_overrides(cfg, factors, source=f"validate sweep level {level.name}")


def degrade_labelled(item, level: SweepLevel, *, rng: np.random.Generator):
    """A real labelled image (``eval.evaluate.LabelledImage``) as it would have been acquired at ``level``."""
    px = float(item.info["pixel_size_nm"])
    if level.factor == "probe.sigma_nm":
        out = degrade.blur_to_probe_sigma(item.image, item.true_ids, px, level_nm=level.level,
                                          nominal_nm=level.nominal)
    elif level.factor == "detector.probe_current_pA":
        noise = degrade.estimate_noise_model(item.image)
        out = degrade.thin_dose(item.image, item.true_ids, px, level=level.level, nominal=level.nominal, noise=noise,
                                rng=rng)
    elif level.factor == "image.pixel_size_nm":
        out = degrade.resample_pixel_size(item.image, item.true_ids, px, level_nm=level.level)
    else:
        raise ValueError(f"{level.factor} cannot be applied to an acquired image "
                         f"(expected one of {', '.join(POST_HOC)})")
    info = {**item.info, "pixel_size_nm": out.pixel_size_nm, "height": out.image.shape[0],
            "width": out.image.shape[1], "validate_level": {"factor": level.factor, "level": level.level}}
    return dataclasses.replace(item, info=info, image=out.image, true_ids=out.labels)
