"""SEM image formation: every effect measured from the images it produces, labels checked to move with pixels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import small_config, spheres
from scipy.special import erf

from simulator.config import ChargingConfig, DetectorConfig, ProbeConfig, ScanConfig, ShadingConfig
from simulator.detector import detect, dose_electrons
from simulator.instrument.charging import charge
from simulator.instrument.probe import probe_blur
from simulator.instrument.scan import scan_offsets_px
from simulator.pipeline import simulate_image
from simulator.preview import instance_boundaries
from simulator.render import RenderOut, render
from simulator.shading import facet_normals, shade

PLAIN = ShadingConfig(substrate_texture=0.0, residue_rims=0.0, edge_gain=0.0, et_fraction=0.0, base_occlusion=0.0)


def _flat_buffers(shape, normal=(0.0, 0.0, 1.0), instance=1) -> RenderOut:
    normals = np.broadcast_to(np.asarray(normal, np.float32), (*shape, 3)).copy()
    return RenderOut(
        instance_id=np.full(shape, instance, np.int32), height_nm=np.full(shape, 50.0, np.float32),
        normal=normals, amodal_instance=np.zeros(0, np.int32), amodal_pixel=np.zeros(0, np.int64), n_instances=1,
    )


@pytest.mark.parametrize("current_pA", [0.4, 60.0])  # exact Poisson-Poisson-Gamma chain, and its normal regime
def test_noise_on_a_flat_region_falls_as_one_over_sqrt_dose(current_pA):
    delta, k = 0.5, 2.0
    signal = np.full((256, 256), delta, np.float32)
    stds = []
    for factor in (1.0, 4.0):
        cfg = DetectorConfig(probe_current_pA=current_pA * factor, gain_shape=k, contrast=0.3, brightness=0.05)
        out = detect(signal, cfg, 1.0, rng=np.random.default_rng(1))
        dose = dose_electrons(cfg, 1.0)
        assert out.mean() == pytest.approx(0.05 + 0.3 * delta, rel=0.02)
        expected_var = 0.3**2 * delta * (1 + delta + 1 / k) / dose
        assert out.var() == pytest.approx(expected_var, rel=0.06)
        stds.append(out.std())
    assert stds[0] / stds[1] == pytest.approx(2.0, rel=0.1)


def test_detector_gamma_compresses_the_bright_end_and_its_noise_and_is_the_identity_at_one():
    dark, bright = 0.4, 1.6
    signal = np.concatenate([np.full((128, 256), dark), np.full((128, 256), bright)]).astype(np.float32)
    linear = DetectorConfig(probe_current_pA=60.0, contrast=0.3, brightness=0.05)
    same = dataclasses.replace(linear, gamma=1.0)
    assert np.array_equal(detect(signal, linear, 1.0, np.random.default_rng(3)),
                          detect(signal, same, 1.0, np.random.default_rng(3)))
    ratios = {}
    for gamma in (1.0, 0.6):
        cfg = dataclasses.replace(linear, gamma=gamma)
        out = detect(signal, cfg, 1.0, rng=np.random.default_rng(2))
        # mean levels follow brightness + contrast * delta^gamma (noise small against the level)
        assert out[:128].mean() == pytest.approx(0.05 + 0.3 * dark**gamma, rel=0.01)
        assert out[128:].mean() == pytest.approx(0.05 + 0.3 * bright**gamma, rel=0.01)
        ratios[gamma] = out[128:].std() / out[:128].std()
    # noise ~ gamma y^(gamma - 1) sigma(y): the bright/dark noise ratio falls by (bright/dark)^(gamma - 1)
    assert ratios[0.6] / ratios[1.0] == pytest.approx((bright / dark) ** (0.6 - 1.0), rel=0.08)


@pytest.mark.parametrize(
    ("probe", "sigma_x_nm", "sigma_y_nm"),
    [
        (ProbeConfig(sigma_nm=12.0), 12.0, 12.0),
        (ProbeConfig(sigma_nm=6.0, defocus_nm=2000.0, convergence_mrad=5.0), np.hypot(6, 10), np.hypot(6, 10)),
        (ProbeConfig(sigma_nm=10.0, astigmatism_ratio=4.0, astigmatism_angle_deg=0.0), 20.0, 5.0),
    ],
)
def test_blurred_step_edge_has_the_configured_sigma(probe, sigma_x_nm, sigma_y_nm):
    px = 1.0
    n = 201
    grid = np.arange(n) - n // 2
    for axis, expected in ((1, sigma_x_nm), (0, sigma_y_nm)):
        step = (np.broadcast_to(grid, (n, n)) if axis == 1 else np.broadcast_to(grid[:, None], (n, n))) >= 0
        out = probe_blur(np.where(step, 0.8, 0.2).astype(np.float32), probe, px)
        profile = out[n // 2, :] if axis == 1 else out[:, n // 2]
        # Least-squares fit of an erf edge; the fitted sigma is what the image shows.
        sigmas = np.linspace(0.5 * expected, 1.5 * expected, 401)
        x = grid + 0.0
        errors = [np.sum((0.5 + 0.3 * erf((x + 0.5) / (np.sqrt(2) * s / px)) - profile) ** 2) for s in sigmas]
        fitted = sigmas[int(np.argmin(errors))]
        assert fitted == pytest.approx(expected, rel=0.1)


@pytest.mark.parametrize("n", [0.8, 1.3])
def test_tilted_plane_brightness_follows_delta0_over_cos_n(n):
    cfg = dataclasses.replace(PLAIN, particle_yield=0.4, tilt_exponent=n, max_tilt_gain=50.0)
    detector = DetectorConfig(noise=False, contrast=1.0, brightness=0.0)
    for theta_deg in (0, 20, 40, 60, 70):
        theta = np.deg2rad(theta_deg)
        buffers = _flat_buffers((32, 32), normal=(np.sin(theta), 0.0, np.cos(theta)))
        image = detect(probe_blur(shade(buffers, cfg, 5.0), ProbeConfig(sigma_nm=5.0), 5.0), detector, 1.0, None)
        assert image.mean() == pytest.approx(0.4 / np.cos(theta) ** n, rel=1e-4)


def test_sphere_rim_is_brighter_than_its_centre_and_more_so_at_higher_beam_energy():
    px, r = 2.0, 100.0
    buffers = render(spheres([100 * px, 100 * px, r], r), 200, 200, px)
    yy, xx = np.mgrid[0:200, 0:200]
    radius = np.hypot((xx + 0.5) * px - 100 * px, (yy + 0.5) * px - 100 * px) / r
    rim, centre = (radius > 0.9) & (radius < 1.0), radius < 0.3
    ratios = []
    for energy in (5.0, 10.0, 20.0, 30.0):
        cfg = dataclasses.replace(PLAIN, edge_gain=0.5, edge_range_nm=12.0, beam_energy_keV=energy)
        signal = shade(buffers, cfg, px)
        ratios.append(signal[rim].mean() / signal[centre].mean())
    assert ratios[0] > 1.0
    assert all(b > a * 1.01 for a, b in zip(ratios, ratios[1:], strict=False))
    # Without the edge effect only the tilt term remains, and it does not depend on the energy.
    flat = [shade(buffers, dataclasses.replace(PLAIN, beam_energy_keV=e), px) for e in (5.0, 30.0)]
    assert np.array_equal(flat[0], flat[1])


def _gradient_alignment(image: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of the strongest image gradients (top 3 %) lying within 1 px of a label boundary."""
    gy, gx = np.gradient(image.astype(np.float64))
    magnitude = np.hypot(gx, gy)
    strong = magnitude > np.quantile(magnitude, 0.97)
    edge = instance_boundaries(labels) | instance_boundaries(np.where(labels > 0, 0, 1))
    near = np.zeros_like(edge)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            near |= np.roll(np.roll(edge, dy, axis=0), dx, axis=1)
    return float((strong & near).sum() / strong.sum())


def test_drift_and_jitter_move_image_edges_and_mask_edges_together():
    scan = ScanConfig(line_jitter_px=1.5, drift_x_nm_per_s=3000.0, drift_y_nm_per_s=-2000.0,
                      vibration_amplitude_nm=12.0, vibration_frequency_hz=900.0, vibration_angle_deg=30.0)
    cfg = small_config(shading={"substrate_texture": 0.0}, probe={"sigma_nm": 2.0}, detector={"noise": False})
    still = simulate_image(cfg, 5, 0)
    moved = simulate_image(dataclasses.replace(cfg, scan=scan), 5, 0)
    # Same geometry (the scan has its own random stream), but the scan moved the labels ...
    assert np.array_equal(still.scene.primaries.centre_nm, moved.scene.primaries.centre_nm)
    changed = (still.render.instance_id != moved.render.instance_id).mean()
    assert changed > 0.01
    # ... and the image edges moved with them: the strongest gradients sit on the moved mask boundaries as
    # well as they sat on the still ones, and far better than on the still boundaries.
    aligned = _gradient_alignment(moved.image, moved.render.instance_id)
    baseline = _gradient_alignment(still.image, still.render.instance_id)
    stale = _gradient_alignment(moved.image, still.render.instance_id)
    assert aligned > 0.9 and aligned >= baseline - 0.02
    assert stale < aligned - 0.1


def test_scan_offsets_follow_the_scan_time():
    scan = ScanConfig(drift_x_nm_per_s=1000.0, dwell_time_us=2.0, flyback_time_us=50.0)
    off = scan_offsets_px((10, 20), 5.0, scan, np.random.default_rng(0))
    line_time_s = (20 * 2.0 + 50.0) * 1e-6
    assert off[9, 19, 0] == pytest.approx(1000.0 * (9 * line_time_s + 19 * 2e-6) / 5.0, rel=1e-5)
    assert np.all(off[..., 1] == 0)
    assert scan_offsets_px((10, 20), 5.0, ScanConfig(), np.random.default_rng(0)) is None


def test_every_effect_off_reproduces_the_ideal_signal():
    cfg = small_config(
        shading={"substrate_texture": 0.0, "residue_rims": 0.0, "edge_gain": 0.0, "et_fraction": 0.0,
                 "tilt_exponent": 0.0, "facets": 0.0, "base_occlusion": 0.0},
        probe={"sigma_nm": 0.0}, charging={"strength": 0.0},
        detector={"noise": False, "contrast": 1.0, "brightness": 0.0},
    )
    sim = simulate_image(cfg, 2, 0)
    assert np.array_equal(sim.image, sim.ideal)
    particle = sim.render.instance_id > 0
    assert np.all(sim.image[particle] == np.float32(cfg.shading.particle_yield))
    assert np.all(sim.image[~particle] == np.float32(cfg.shading.substrate_yield))


def test_side_detector_shadows_the_far_side_of_a_particle():
    px, r = 4.0, 80.0
    buffers = render(spheres([100 * px, 50 * px, r], r), 200, 100, px)
    cfg = dataclasses.replace(PLAIN, et_fraction=1.0, et_azimuth_deg=0.0, et_elevation_deg=30.0, et_shadow=0.8,
                              et_shadow_range_nm=0.0)
    signal = shade(buffers, cfg, px)
    row = signal[50]
    gap = int(r / px) + 5
    towards, away = row[100 + gap : 100 + gap + 10].mean(), row[100 - gap - 10 : 100 - gap].mean()
    assert away < 0.5 * towards  # substrate in the particle's shadow, on the side away from the detector
    # With a range, the shadow fades with the distance from the particle: loss 0.8 exp(-d / range).
    faded = shade(buffers, dataclasses.replace(cfg, et_shadow_range_nm=20.0), px)[50]
    edge = 100 - int(r / px)  # first substrate column left of the silhouette, about
    for d_px in (2, 10):
        d_nm = d_px * px
        loss = 1 - faded[edge - d_px] / towards
        assert loss == pytest.approx(0.8 * np.exp(-d_nm / 20.0), abs=0.1)
    facing, turned_away = signal[50, 100 + 10], signal[50, 100 - 10]
    assert facing > turned_away  # the side of the particle that faces the detector is brighter


def test_charging_brightens_poorly_connected_aggregates_with_halo_and_streak():
    cfg = small_config(field={"primaries_per_um2": 12.0})
    sim = simulate_image(cfg, 3, 0)
    base = sim.ideal
    charged = charge(base, sim.render, sim.scene, ChargingConfig(strength=1.0, halo_nm=40.0, streak_length_px=30,
                                                                 streak_gain=0.5), cfg.image.pixel_size_nm)
    gain = charged / base
    particle = sim.render.instance_id > 0
    assert gain[particle].max() > 1.2 and gain.min() >= 1.0 - 1e-6
    # Streak: substrate just right of particles (scan direction) gains more than just left of them.
    right = np.zeros_like(particle)
    right[:, 3:] = particle[:, :-3]
    left = np.zeros_like(particle)
    left[:, :-3] = particle[:, 3:]
    right &= ~particle
    left &= ~particle
    assert gain[right].mean() > gain[left].mean() + 0.01


def test_info_bar_rows_carry_no_labels():
    cfg = small_config(detector={"info_bar": True, "info_bar_height_px": 24})
    sim = simulate_image(cfg, 0, 0)
    assert sim.image.shape == (120 + 24, 160) and sim.render.instance_id.shape == sim.image.shape
    assert not sim.render.instance_id[120:].any() and sim.image[120:].max() > 0.9


def test_common_random_numbers_noise_changes_keep_geometry_and_masks():
    a = simulate_image(small_config(detector={"probe_current_pA": 20.0}), 9, 1)
    b = simulate_image(small_config(detector={"probe_current_pA": 200.0}, probe={"sigma_nm": 9.0}), 9, 1)
    assert np.array_equal(a.render.instance_id, b.render.instance_id)
    assert np.array_equal(a.render.amodal_pixel, b.render.amodal_pixel)
    assert not np.array_equal(a.image, b.image)


def test_facets_shade_flat_patches_without_touching_labels():
    px, r = 2.0, 60.0
    buffers = render(spheres([64 * px, 64 * px, r], r), 128, 128, px)
    smooth = facet_normals(buffers, 0.0, 14, np.random.default_rng(0))
    full = facet_normals(buffers, 1.0, 14, np.random.default_rng(0))
    assert smooth is buffers.normal
    inside = buffers.instance_id == 1
    # Fully faceted: the normals take at most 14 distinct directions on the particle, and nothing else moves.
    assert len(np.unique(np.round(full[inside], 5), axis=0)) <= 14
    assert np.array_equal(full[~inside], buffers.normal[~inside])
    cfg = dataclasses.replace(PLAIN, particle_yield=0.5)
    faceted = shade(buffers, cfg, px, normal=full)
    plain = shade(buffers, cfg, px)
    assert np.array_equal(faceted[~inside], plain[~inside]) and not np.array_equal(faceted, plain)


def _island_masks(rims: np.ndarray) -> tuple[np.ndarray, int]:
    """Labelled regions of the substrate enclosed by rims (not touching the frame), and their count."""
    from scipy import ndimage

    regions, n = ndimage.label(~(rims > 0.5))
    border = np.unique(np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]]))
    inner = np.setdiff1d(np.arange(1, n + 1), border)
    return np.where(np.isin(regions, inner), regions, 0), len(inner)


@pytest.mark.parametrize("irregularity", [0.0, 0.35])  # ellipses, lobed outlines
def test_residue_rims_are_thin_closed_curves_with_relief_towards_the_side_detector(irregularity):
    import cv2
    from scipy import ndimage

    from simulator.specimen import residue_rims

    shape, px = (384, 384), 7.344
    islands_cfg = {"residue_size_nm": 150.0, "residue_width_nm": 7.0, "residue_coverage": 0.3,  # rims >= 1 px
                   "residue_irregularity": irregularity, "residue_spread": 0.0}
    in_lens = residue_rims(shape, px, ShadingConfig(et_fraction=0.0, **islands_cfg), np.random.default_rng(3))
    assert in_lens.min() >= 0 and in_lens.max() <= 1
    rim = in_lens > 0.5
    assert 0.02 < rim.mean() < 0.2
    # Thin lines, not areas: no rim pixel is more than 2 px from the rim's edge.
    assert cv2.distanceTransform(rim.astype(np.uint8), cv2.DIST_L2, 3).max() <= 2.5
    # Closed curves: many regions of the substrate are enclosed by a rim (the islands), and islands with their
    # rims cover about the configured fraction (less the islands cut by the frame).
    labels, n_islands = _island_masks(in_lens)
    islands = labels > 0
    assert n_islands >= 25
    assert 0.5 * 0.3 < (islands | rim).mean() < 1.2 * 0.3
    # Side detector at azimuth 0 (towards +x): the same islands (same draws), their +x rims bright and their
    # -x rims dark; the opposite azimuth negates the relief.
    side = {az: residue_rims(shape, px, ShadingConfig(et_fraction=1.0, et_azimuth_deg=az, **islands_cfg),
                             np.random.default_rng(3)) for az in (0.0, 180.0)}
    assert np.allclose(side[0.0], -side[180.0], atol=1e-6)
    leaving = -np.gradient(ndimage.gaussian_filter(islands.astype(np.float32), 1.0), axis=1)  # > 0 on +x edges
    near = np.abs(leaving) > 0.05
    assert np.mean(np.sign(side[0.0][near]) == np.sign(leaving[near])) > 0.8


def test_irregular_residue_islands_are_lobed_and_their_coverage_and_strength_vary_from_image_to_image():
    import cv2

    from simulator.specimen import residue_rims

    shape, px = (320, 320), 7.344
    base = {"residue_size_nm": 180.0, "residue_width_nm": 7.0, "residue_coverage": 0.08, "et_fraction": 0.0}

    def solidity(irregularity: float) -> float:
        """Median area / convex-hull area of the enclosed islands (1 for ellipses, less for lobed outlines)."""
        values = []
        for seed in range(3):
            rims = residue_rims(shape, px, ShadingConfig(residue_irregularity=irregularity, **base),
                                np.random.default_rng(seed))
            labels, _ = _island_masks(rims)
            for k in np.unique(labels)[1:]:
                mask = (labels == k).astype(np.uint8)
                if mask.sum() < 40:
                    continue
                contour = max(cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0], key=len)
                values.append(cv2.contourArea(contour) / max(cv2.contourArea(cv2.convexHull(contour)), 1.0))
        return float(np.median(values))

    assert solidity(0.0) > 0.9
    assert solidity(0.45) < solidity(0.0) - 0.03

    def per_image(spread: float) -> tuple[np.ndarray, np.ndarray]:
        """Fraction of the frame enclosed by islands and the brightest rim, for 16 images."""
        cover, peak = [], []
        for seed in range(16):
            rims = residue_rims(shape, px, ShadingConfig(residue_spread=spread, **base), np.random.default_rng(seed))
            labels, _ = _island_masks(rims / rims.max())  # outlines at half the image's rim strength
            cover.append(max((labels > 0).mean(), 1e-4))
            peak.append(rims.max())
        return np.log(cover), np.log(peak)

    fixed_cover, fixed_peak = per_image(0.0)
    spread_cover, spread_peak = per_image(0.8)
    # the Boolean model's own scatter, then times exp(0.8 z)
    assert fixed_cover.std() < 0.45 and spread_cover.std() > 2 * fixed_cover.std()
    assert np.ptp(fixed_peak) < 0.05 and spread_peak.std() > 0.4  # rim strength: exp(0.8 z) per image
    assert abs(np.median(spread_cover) - np.median(fixed_cover)) < 0.6  # the configured coverage is the median


def test_arc_variation_leaves_open_arcs_on_the_same_outlines_with_the_mean_strength_kept():
    from simulator.specimen import residue_rims

    shape, px = (384, 384), 7.344
    base = {"residue_size_nm": 150.0, "residue_width_nm": 7.0, "residue_coverage": 0.3, "residue_spread": 0.0,
            "et_fraction": 0.0}
    even = residue_rims(shape, px, ShadingConfig(**base), np.random.default_rng(4))
    varied = residue_rims(shape, px, ShadingConfig(residue_arc_variation=1.0, **base), np.random.default_rng(4))
    on_rim = even > 0.5
    # the same outlines (the islands are drawn before the modulation): nothing appears off them
    assert np.array_equal(varied > 0, even > 0)
    ratio = varied[on_rim] / even[on_rim]
    assert 0.8 < ratio.mean() < 1.25  # mean-1 log-normal: the average rim strength is kept
    # uneven along the outlines: a quarter or more of the outline length fades below a third of its even
    # strength (open arcs), and a few stretches are much brighter
    assert np.mean(ratio < 1 / 3) > 0.2 and np.mean(ratio > 2.5) > 0.03
    assert np.std(np.log(ratio)) == pytest.approx(1.0, rel=0.25)
    # correlated along the outline, not per pixel: neighbours on the rim share their factor
    shifted = np.roll(varied / np.maximum(even, 1e-6), 1, axis=1)[on_rim & np.roll(on_rim, 1, axis=1)]
    here = (varied / np.maximum(even, 1e-6))[on_rim & np.roll(on_rim, 1, axis=1)]
    assert np.corrcoef(np.log(here), np.log(shifted))[0, 1] > 0.7


def test_substrate_dots_land_on_the_substrate_only_and_are_counted_back():
    import cv2

    from eval.calibrate.image_stats import substrate_dots

    shading = {"residue_rims": 0.0, "substrate_texture": 0.0, "residue_spread": 0.0}
    field = {"image": {"width_px": 400, "height_px": 300}, "field": {"primaries_per_um2": 2.0}}  # room for dots
    plain = simulate_image(small_config(shading=shading, **field), 5, 0)
    dotted = simulate_image(small_config(shading={**shading, "substrate_dots_per_um2": 60.0}, **field), 5, 0)
    particle = plain.render.instance_id > 0
    assert np.array_equal(plain.render.instance_id, dotted.render.instance_id)  # labels untouched
    assert np.array_equal(plain.ideal[particle], dotted.ideal[particle])  # particles hide the dots
    changed = np.abs(dotted.ideal - plain.ideal) > 1e-6
    assert changed[~particle].mean() > 0.05
    # Measured back from the noiseless yield plus a faint jitter (the count's robust SD): about as many blobs per
    # um^2 of free substrate as drawn (a few merge), peak gains about the configured median (1.2 x a yield of
    # 0.34 over 0.34, lowered by the bilinear split and the 5 x 5 median).
    px = 7.344
    rng = np.random.default_rng(0)
    image = dotted.ideal + 1e-4 * rng.standard_normal(dotted.ideal.shape).astype(np.float32)
    per_um2, amplitude = substrate_dots(image, particle, px)
    assert 0.6 * 60 < per_um2 < 1.1 * 60
    assert 0.5 < amplitude < 1.6
    # default: no dots and no draw, the image is byte-identical to one without the term
    again = simulate_image(small_config(shading={**shading, "substrate_dots_per_um2": 0.0}, **field), 5, 0)
    assert np.array_equal(again.image, plain.image)
    assert cv2.countNonZero((dotted.image != plain.image).astype(np.uint8)) > 0


def test_density_spread_varies_the_crowding_from_image_to_image_around_the_configured_median():
    from simulator.geometry.scene import build_scene

    def counts(spread: float) -> np.ndarray:
        cfg = small_config(field={"density_spread": spread})
        return np.array([len(build_scene(cfg.image, cfg.primary, cfg.aggregate, cfg.field,
                                         np.random.default_rng(seed)).primaries) for seed in range(24)])

    fixed, spread = counts(0.0), counts(0.6)
    assert np.log(fixed).std() < 0.3  # Poisson and aggregate-size scatter only
    assert np.log(np.maximum(spread, 1)).std() > 0.45
    assert 0.6 < np.median(spread) / np.median(fixed) < 1.6


def test_residue_rims_change_the_substrate_only():
    plain = simulate_image(small_config(shading={"residue_rims": 0.0}), 5, 0)
    rims = simulate_image(small_config(shading={"residue_rims": 0.6}), 5, 0)
    particle = plain.render.instance_id > 0
    assert np.array_equal(plain.render.instance_id, rims.render.instance_id)
    assert np.array_equal(plain.ideal[particle], rims.ideal[particle])  # same draws for everything else
    substrate = ~particle
    assert np.abs(rims.ideal[substrate] - plain.ideal[substrate]).max() > 0.05


@pytest.mark.parametrize("range_nm", [20.0, 60.0])
def test_base_occlusion_darkens_the_substrate_at_a_particles_foot_and_fades_over_its_range(range_nm):
    import cv2

    px, r = 2.0, 60.0
    buffers = render(spheres([100 * px, 100 * px, r], r), 200, 200, px)
    cfg = dataclasses.replace(PLAIN, base_occlusion=0.5, base_occlusion_range_nm=range_nm)
    dark, plain = shade(buffers, cfg, px), shade(buffers, PLAIN, px)
    particle = buffers.instance_id > 0
    assert np.array_equal(dark[particle], plain[particle])
    dist_nm = cv2.distanceTransform((~particle).astype(np.uint8), cv2.DIST_L2, 5) * px
    loss = 1 - dark / plain  # fraction of the substrate yield lost
    for d_nm in (5.0, range_nm, 3 * range_nm):
        ring = ~particle & (np.abs(dist_nm - d_nm) < 1.0)
        assert np.median(loss[ring]) == pytest.approx(0.5 * np.exp(-d_nm / range_nm), abs=0.02)


def test_crevice_occlusion_darkens_a_particle_only_beside_the_neighbour_that_overlaps_it():
    import cv2

    # Two spheres side by side, the right one standing higher and overlapping the left one in the image.
    px, r, range_nm = 2.0, 60.0, 20.0
    buffers = render(spheres([[140.0, 200.0, r], [230.0, 200.0, 2 * r]], [r, r]), 400, 400, px)
    ids = buffers.instance_id
    low, high = ids[100, 70], ids[100, 115]  # left / right sphere's pixels
    assert low != high and low > 0 and high > 0
    base = dataclasses.replace(PLAIN, base_occlusion_range_nm=range_nm)
    dark, plain = shade(buffers, dataclasses.replace(base, crevice_occlusion=0.5), px), shade(buffers, base, px)
    assert np.array_equal(dark[ids != low], plain[ids != low])  # the upper sphere and the substrate keep theirs
    # Along the left sphere: the yield lost is 0.5 exp(-d / range) with d the distance to where the upper sphere's
    # edge covers it (oracle: OpenCV's distance to that interface).
    under = np.zeros(ids.shape, bool)
    under[:, :-1] |= (ids[:, :-1] == low) & (ids[:, 1:] == high)
    under[:-1, :] |= (ids[:-1, :] == low) & (ids[1:, :] == high)
    under[1:, :] |= (ids[1:, :] == low) & (ids[:-1, :] == high)
    dist_nm = cv2.distanceTransform((~under).astype(np.uint8), cv2.DIST_L2, 5) * px
    loss = 1 - dark / plain
    for d_nm in (2.0, range_nm, 2 * range_nm):
        band = (ids == low) & (np.abs(dist_nm - d_nm) < 1.0)
        assert band.sum() > 5
        assert np.median(loss[band]) == pytest.approx(0.5 * np.exp(-d_nm / range_nm), abs=0.03)
    assert loss[(ids == low) & (dist_nm > 4 * range_nm)].max() < 0.5 * np.exp(-4) + 0.002  # its far side: ~nothing


def test_se2_spread_mixes_the_particle_yield_with_its_mean_over_the_particle_only():
    # A sphere with a bright rim (edge effect, tilt): SE2 replaces a fraction f of the local yield by its
    # average over the particle around the beam, so the rim-to-centre contrast falls and the substrate keeps
    # its yield.
    px, r = 2.0, 60.0
    buffers = render(spheres([100 * px, 100 * px, r], r), 200, 200, px)
    particle = buffers.instance_id > 0
    base = dataclasses.replace(PLAIN, edge_gain=0.5, base_occlusion=0.5)
    plain = shade(buffers, base, px)
    rim, centre = particle & ~np.roll(particle, 3, axis=1), (slice(95, 105), slice(95, 105))

    def contrast(img):
        return img[rim].mean() - img[centre].mean()

    for f in (0.3, 0.7):
        wide = shade(buffers, dataclasses.replace(base, se2_fraction=f, se2_range_nm=5000.0), px)
        assert np.array_equal(wide[~particle], plain[~particle])
        # Range far beyond the particle: the SE2 part is the particle's mean yield (substrate not averaged in).
        np.testing.assert_allclose(wide[particle], (1 - f) * plain[particle] + f * plain[particle].mean(), rtol=2e-3)
        near = shade(buffers, dataclasses.replace(base, se2_fraction=f, se2_range_nm=30.0), px)
        assert np.array_equal(near[~particle], plain[~particle])
        # Range half the sphere's radius: between no change and the particle-wide mean (1 - f), and the mean
        # yield stays (each beam position averages its own neighbourhood, so it is kept to a few per cent).
        assert 1 - f < contrast(near) / contrast(plain) < 1 - 0.25 * f
        assert abs(near[particle].mean() / plain[particle].mean() - 1) < 0.05


def test_particle_yield_level_and_ramp_are_measured_back_from_the_image_and_leave_labels_alone():
    from eval.calibrate.image_stats import lighting_statistics, particle_lighting
    from simulator.shading import gain_map, particle_gains

    # Many separate flat discs (no tilt contrast, no edge): each one's level and ramp come from its draw only.
    px, r = 2.0, 30.0
    centres = [[x, y, r] for x in np.arange(40.0, 800.0, 80.0) for y in np.arange(40.0, 800.0, 80.0)]
    buffers = render(spheres(centres, [r] * len(centres)), 400, 400, px)
    buffers = dataclasses.replace(buffers, normal=np.broadcast_to(np.float32([0, 0, 1]), (400, 400, 3)).copy())
    assert particle_gains(buffers.n_instances, 0.0, 0.0, np.random.default_rng(0)) is None  # off: no draw at all
    gains = particle_gains(buffers.n_instances, 0.3, 0.2, np.random.default_rng(0))
    assert gains.shape == (buffers.n_instances, 3)
    assert np.exp(np.log(gains[:, 0]).std()) == pytest.approx(np.exp(0.3), rel=0.1)
    plain = shade(buffers, PLAIN, px)
    lit = shade(buffers, PLAIN, px, gains=gains)
    ids = buffers.instance_id
    assert np.array_equal(lit[ids == 0], plain[ids == 0])  # the substrate keeps its yield
    assert np.allclose(lit[ids > 0], plain[ids > 0] * gain_map(ids, gains))
    # Measured from the image alone: each disc's mean level is its draw's level (the ramp averages out over
    # the disc), its ramp per radius is the drawn (gx, gy) in image axes (x right, y down).
    rows = particle_lighting(lit, ids)
    sub, par = np.median(lit[ids == 0]), np.median(lit[ids > 0])
    level = sub + rows[:, 0] * (par - sub)
    assert np.allclose(level, PLAIN.particle_yield * gains[:, 0], rtol=1e-3)
    ramp = rows[:, 1:] * (par - sub) / (PLAIN.particle_yield * gains[:, :1])
    assert np.allclose(ramp, gains[:, 1:], atol=0.02)
    stats = lighting_statistics(rows)
    assert abs(stats["particle_ramp_to_detector"]) < 0.1  # random directions: no side-detector signature


def test_contact_darkening_reads_the_crevice_between_touching_particles_and_the_bright_free_edges():
    from eval.calibrate.image_stats import contact_darkening

    # Two touching squares 1 and 2 (as manual masks draw them: a one-pixel background line between them).
    labels = np.zeros((120, 200), np.int32)
    labels[30:90, 30:99] = 1
    labels[30:90, 100:170] = 2
    image = np.full(labels.shape, 0.1)
    image[labels > 0] = 0.6
    xx = np.arange(200)[None, :].repeat(120, 0)
    crevice = (labels > 0) & (np.abs(xx - 99) <= 6)
    image[crevice] = 0.45  # darker where the two touch
    rim = (labels > 0) & ~crevice & ((np.abs(xx - 30) <= 2) | (np.abs(xx - 169) <= 2))
    image[rim] = 0.8  # bright free edges
    contact, free = contact_darkening(image, labels, pixel_size_nm=2.0, band_nm=14.0)
    assert contact < -0.1 and free > 0.05
    flat = np.where(labels > 0, 0.6, 0.1)
    assert contact_darkening(flat, labels, 2.0, band_nm=14.0) == pytest.approx((0.0, 0.0), abs=1e-9)
