"""Scene geometry in nm: fractal aggregates of primaries resting on the substrate, placed in the field.

Each aggregate is built by ``simulator.geometry.aggregate.build_aggregate`` from the primaries' volume-equivalent radii,
turned by a uniformly random 3-D rotation, lowered until its lowest surface point touches z = 0, and dropped at
a uniformly random (x, y) in the field extended by a margin (so that aggregates cut by the image border are as
frequent as in a real micrograph). A placement whose primaries would interpenetrate an earlier aggregate's
(centre distance below the sum of volume-equivalent radii) is retried up to ``field.placement_tries`` times and
then accepted as it is; aggregates may touch and overlap in projection.

The number of aggregates follows either a number density of primaries (Poisson count over the extended field)
or a target surface coverage (aggregates are added until the projected coverage, estimated on a coarse grid of
volume-equivalent discs, reaches it).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from simulator.config import AggregateConfig, FieldConfig, ImageConfig, PrimaryConfig
from simulator.geometry.aggregate import build_aggregate
from simulator.geometry.particles import Primaries, fixed_order_matmul, lowest_point_offset_nm, sample_primaries

_COVERAGE_GRID_PX = 4  # coarse grid cell (image pixels) for the coverage estimate
_MAX_PRIMARIES = 200_000


@dataclass(frozen=True, slots=True)
class Scene:
    """All primaries of one image (world coordinates, nm) and how they were placed."""

    primaries: Primaries
    bottom_nm: np.ndarray  # (N,) height of each primary's lowest surface point above the substrate
    n_aggregates: int
    n_forced_placements: int  # placements accepted despite interpenetration after all tries


def sample_aggregate_size(cfg: AggregateConfig, rng: np.random.Generator) -> int:
    """Primaries per aggregate: log-normal (median, gsd) rounded to an integer in [1, primaries_max]."""
    n = np.exp(rng.normal(np.log(cfg.primaries_median), np.log(cfg.primaries_gsd)))
    return int(np.clip(np.rint(n), 1, cfg.primaries_max))


def build_single_aggregate(
    n: int, primary: PrimaryConfig, aggregate: AggregateConfig, rng: np.random.Generator,
    parts: Primaries | None = None,
) -> tuple[Primaries, np.ndarray]:
    """One aggregate of n primaries (drawn here unless ``parts`` are given), randomly rotated, resting on
    z = 0, centred at x = y = 0; and the height of each primary's lowest point (nm)."""
    if parts is None:
        parts = sample_primaries(n, primary, rng)
    centres = build_aggregate(
        parts.radius_nm,
        fractal_dimension=aggregate.fractal_dimension,
        fractal_prefactor=aggregate.fractal_prefactor,
        overlap=aggregate.overlap,
        rng=rng,
    )
    quat = rng.standard_normal(4)
    rotation = Rotation.from_quat(quat / np.linalg.norm(quat)).as_matrix()
    centres = fixed_order_matmul(centres, rotation.T)
    parts = parts.rotated(rotation)
    bottom = centres[:, 2] + lowest_point_offset_nm(parts)
    centres[:, 2] -= bottom.min()
    centres[:, :2] -= centres[:, :2].mean(axis=0)
    return parts.with_centres(centres, np.zeros(n, np.int32)), bottom - bottom.min()


def _interpenetrates(new_c: np.ndarray, new_r: np.ndarray, old_c: np.ndarray, old_r: np.ndarray) -> bool:
    if len(old_c) == 0:
        return False
    d2 = ((new_c[:, None, :] - old_c[None, :, :]) ** 2).sum(axis=2)
    return bool(np.any(d2 < (new_r[:, None] + old_r[None, :]) ** 2))


def build_scene(
    image: ImageConfig,
    primary: PrimaryConfig,
    aggregate: AggregateConfig,
    field: FieldConfig,
    rng: np.random.Generator,
) -> Scene:
    """Sample every aggregate of one image and place it in the field."""
    width_nm = image.width_px * image.pixel_size_nm
    height_nm = image.height_px * image.pixel_size_nm
    typical_radius_nm = primary.diameter_gmean_nm / 2
    typical_rg_nm = typical_radius_nm * (aggregate.primaries_median / aggregate.fractal_prefactor) ** (
        1 / aggregate.fractal_dimension
    )
    margin_nm = typical_rg_nm + typical_radius_nm
    lo = np.array([-margin_nm, -margin_nm])
    span = np.array([width_nm + 2 * margin_nm, height_nm + 2 * margin_nm])

    # real fields differ in how crowded they are: one log-normal factor per image (median 1)
    density = np.exp(field.density_spread * rng.standard_normal()) if field.density_spread > 0 else 1.0
    coverage = min(field.coverage * density, 0.9)
    if field.coverage > 0:
        n_target = _MAX_PRIMARIES
        grid = np.zeros(
            (image.height_px // _COVERAGE_GRID_PX + 1, image.width_px // _COVERAGE_GRID_PX + 1), np.uint8
        )
        cell_nm = _COVERAGE_GRID_PX * image.pixel_size_nm
    else:
        area_um2 = span[0] * span[1] * 1e-6
        n_target = int(rng.poisson(field.primaries_per_um2 * density * area_um2))

    if field.coverage > 0:
        sizes = None
    else:  # all sizes and primaries up front: one vectorised draw instead of one per aggregate
        sizes = []
        while sum(sizes) < n_target:
            sizes.append(min(sample_aggregate_size(aggregate, rng), n_target - sum(sizes)))
        pool = sample_primaries(n_target, primary, rng)
        starts = np.cumsum([0, *sizes])

    parts: list[Primaries] = []
    bottoms: list[np.ndarray] = []
    placed_c = np.zeros((0, 3))
    placed_r = np.zeros(0)
    n_total, n_forced = 0, 0
    while n_total < n_target:
        if sizes is None:
            if grid.mean() >= coverage:
                break
            n = sample_aggregate_size(aggregate, rng)
            agg, bottom = build_single_aggregate(n, primary, aggregate, rng)
        else:
            k = len(parts)
            n = sizes[k]
            agg, bottom = build_single_aggregate(
                n, primary, aggregate, rng, pool.take(np.arange(starts[k], starts[k + 1]))
            )
        for attempt in range(field.placement_tries):
            offset = lo + span * rng.random(2)
            centres = agg.centre_nm + np.r_[offset, 0.0]
            if not _interpenetrates(centres, agg.radius_nm, placed_c, placed_r):
                break
            if attempt == field.placement_tries - 1:
                n_forced += 1
        agg = agg.with_centres(centres, np.full(n, len(parts), np.int32))
        parts.append(agg)
        bottoms.append(bottom)
        placed_c = np.concatenate([placed_c, centres])
        placed_r = np.concatenate([placed_r, agg.radius_nm])
        n_total += n
        if field.coverage > 0:
            for (x, y, _), r in zip(centres, agg.radius_nm, strict=True):
                cv2.circle(grid, (int(x / cell_nm), int(y / cell_nm)), int(round(r / cell_nm)), 1, -1)
    if field.coverage > 0 and grid.mean() < coverage:
        raise RuntimeError(
            f"field.coverage = {field.coverage} (this image: {coverage:.3f}) not reached with {_MAX_PRIMARIES} "
            "primaries; lower it"
        )
    if not parts:
        empty = sample_primaries(0, primary, rng)
        return Scene(primaries=empty, bottom_nm=np.zeros(0), n_aggregates=0, n_forced_placements=0)
    return Scene(
        primaries=Primaries.concatenate(parts),
        bottom_nm=np.concatenate(bottoms),
        n_aggregates=len(parts),
        n_forced_placements=n_forced,
    )
