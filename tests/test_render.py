"""Geometry and z-buffer: oracles (sphere and ellipsoid areas, heights, normals), depth order, invariants."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import small_config, spheres
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.config import PrimaryConfig
from simulator.geometry.particles import implicit_surface, lowest_point_offset_nm, sample_primaries
from simulator.geometry.scene import build_scene, build_single_aggregate
from simulator.render import render

PX = 7.344


def _disc_bounds(radius_px: float) -> tuple[float, float]:
    """Pixel-centre sampling of a disc of radius R px counts between pi (R - s)^2 and pi (R + s)^2 pixels,
    s = sqrt(2)/2: a pixel square inside the smaller disc has its centre inside, any pixel whose centre is
    inside lies within the larger one."""
    s = np.sqrt(2) / 2
    return np.pi * max(radius_px - s, 0) ** 2, np.pi * (radius_px + s) ** 2


@settings(max_examples=30, deadline=None)
@given(
    radius_px=st.floats(2.0, 30.0),
    fx=st.floats(0.0, 1.0),
    fy=st.floats(0.0, 1.0),
)
def test_isolated_sphere_area_is_pi_r_squared(radius_px, fx, fy):
    r_nm = radius_px * PX
    centre = [(40 + fx) * PX, (40 + fy) * PX, r_nm]
    out = render(spheres(centre, r_nm), 80, 80, PX)
    area = int((out.instance_id == 1).sum())
    lo, hi = _disc_bounds(radius_px)
    assert lo <= area <= hi
    # With an exact count check on top: the pixels whose centres lie in the disc, counted independently.
    yy, xx = np.mgrid[0:80, 0:80]
    inside = ((xx + 0.5) * PX - centre[0]) ** 2 + ((yy + 0.5) * PX - centre[1]) ** 2 < r_nm**2
    assert np.array_equal(out.instance_id == 1, inside)
    assert np.array_equal(out.amodal_mask(1), inside)


def test_sphere_height_and_normals_are_exact():
    r_nm = 20 * PX
    c = np.array([32 * PX, 32 * PX, r_nm])
    out = render(spheres(c, r_nm), 64, 64, PX)
    yy, xx = np.nonzero(out.instance_id == 1)
    dx, dy = (xx + 0.5) * PX - c[0], (yy + 0.5) * PX - c[1]
    z = c[2] + np.sqrt(r_nm**2 - dx**2 - dy**2)
    np.testing.assert_allclose(out.height_nm[yy, xx], z, rtol=1e-5)
    expected = np.stack([dx, dy, z - c[2]], axis=1) / r_nm
    np.testing.assert_allclose(out.normal[yy, xx], expected, atol=1e-5)
    substrate = out.instance_id == 0
    assert np.all(out.height_nm[substrate] == 0) and np.all(out.normal[substrate] == [0, 0, 1])


def _on_a_grid(prim, *, columns: int, step_px: int, z_nm: float):
    """The primaries centred on a grid of ``columns`` columns, ``step_px`` apart, at height ``z_nm``."""
    n = len(prim)
    half = step_px // 2
    centres = np.array([[(half + step_px * (k % columns)) * PX, (half + step_px * (k // columns)) * PX, z_nm]
                        for k in range(n)])
    return prim.with_centres(centres, np.arange(n))


def test_ellipsoid_projected_area_matches_its_shadow_ellipse():
    cfg = PrimaryConfig(shape="ellipsoid", diameter_gmean_nm=250, diameter_gsd=1.0, aspect_ratio_gmean=2.0)
    prim = _on_a_grid(sample_primaries(6, cfg, np.random.default_rng(3)), columns=3, step_px=60, z_nm=100.0)
    out = render(prim, 180, 120, PX)
    inverse = np.linalg.inv(prim.shape_matrix)
    for k in range(6):
        # Orthographic shadow of x^T M x <= 1 is the ellipse with matrix (A_xy)^-1, A = M^-1: area pi sqrt(det).
        area_px = np.pi * np.sqrt(np.linalg.det(inverse[k, :2, :2])) / PX**2
        semi_minor_px = np.sqrt(np.linalg.eigvalsh(inverse[k, :2, :2]).min()) / PX
        measured = (out.instance_id == k + 1).sum()
        # Same sampling argument as for the disc, with the perimeter of the shadow ellipse bounded by 2 pi a.
        assert abs(measured - area_px) <= np.sqrt(2) * np.pi * (area_px / (np.pi * semi_minor_px)) + 2


def test_depth_order_where_two_primaries_overlap():
    r = 12 * PX
    low, high = [30 * PX, 30 * PX, r], [42 * PX, 30 * PX, r + 15.0]
    for order in ([low, high], [high, low]):
        out = render(spheres(order, [r, r]), 80, 60, PX)
        top = 2 if order[1] is high else 1
        a1, a2 = out.amodal_mask(1), out.amodal_mask(2)
        overlap = a1 & a2
        assert overlap.sum() > 50
        # Inside the overlap the visible id is the primary whose surface is higher there.
        yy, xx = np.nonzero(overlap)
        heights = []
        for c in order:
            dz = r**2 - ((xx + 0.5) * PX - c[0]) ** 2 - ((yy + 0.5) * PX - c[1]) ** 2
            heights.append(c[2] + np.sqrt(np.maximum(dz, 0)))
        expected = np.where(heights[0] >= heights[1], 1, 2)
        assert np.array_equal(out.instance_id[yy, xx], expected)
        assert (out.instance_id[overlap] == top).mean() > 0.5


def test_irregular_bodies_hit_their_surface_and_misses_are_true_misses():
    cfg = PrimaryConfig(shape="irregular", roughness=0.15, roughness_degree=4, diameter_gmean_nm=200)
    prim = _on_a_grid(sample_primaries(8, cfg, np.random.default_rng(7)), columns=4, step_px=50, z_nm=150.0)
    centres = prim.centre_nm
    out = render(prim, 200, 100, PX)
    for k in range(8):
        def surface(yy, xx, t, k=k):
            q = np.stack([(xx + 0.5) * PX - centres[k, 0], (yy + 0.5) * PX - centres[k, 1], t], axis=1)
            return implicit_surface(q, prim.shape_matrix[k], prim.coeff[k])

        mask = out.instance_id == k + 1
        yy, xx = np.nonzero(mask)
        t = out.height_nm[yy, xx].astype(float) - centres[k, 2]
        # Every pixel of an isolated body lies on its surface (F = 0; float32 heights limit this to ~1e-6) ...
        assert np.abs(surface(yy, xx, t)).max() < 1e-5
        # ... and nothing above the hit is inside the body: it is the top surface.
        for frac in (0.02, 0.1, 0.3):
            assert np.all(surface(yy, xx, t + frac * prim.radius_nm[k]) > 0)
        # Around the body, missed pixels are true misses: a dense march finds no inside point either.
        ring = np.zeros_like(mask)
        cy, cx = int(centres[k, 1] / PX), int(centres[k, 0] / PX)
        ring[max(cy - 25, 0) : cy + 25, max(cx - 25, 0) : cx + 25] = True
        ring &= ~out.amodal_mask(k + 1)
        yy, xx = np.nonzero(ring)
        r_out = prim.radius_nm[k] * 2
        march = np.stack([surface(yy, xx, np.full(len(xx), z)) for z in np.linspace(-r_out, r_out, 400)])
        assert march.min() > -1e-3
        # Normals are unit vectors on the beam side and agree with the gradient of F by finite differences.
        n = out.normal[mask]
        np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1, atol=1e-5)
        assert np.all(n[:, 2] > -1e-3)
        yy, xx = np.nonzero(mask)
        t = out.height_nm[yy, xx].astype(float) - centres[k, 2]
        q = np.stack([(xx + 0.5) * PX - centres[k, 0], (yy + 0.5) * PX - centres[k, 1], t], axis=1)
        grad = np.stack([
            (implicit_surface(q + e, prim.shape_matrix[k], prim.coeff[k])
             - implicit_surface(q - e, prim.shape_matrix[k], prim.coeff[k])) / 0.02
            for e in np.eye(3) * 0.01
        ], axis=1)
        grad /= np.linalg.norm(grad, axis=1, keepdims=True)
        np.testing.assert_allclose(n, grad, atol=1e-3)


def test_primary_sizes_follow_the_lognormal_and_volumes_are_preserved():
    cfg = PrimaryConfig(shape="irregular", diameter_gmean_nm=150, diameter_gsd=1.3, diameter_min_nm=1,
                        diameter_max_nm=1e4, roughness=0.1)
    prim = sample_primaries(4000, cfg, np.random.default_rng(0))
    d = 2 * prim.radius_nm
    assert abs(np.exp(np.log(d).mean()) / 150 - 1) < 0.02
    assert abs(np.exp(np.log(d).std()) / 1.3 - 1) < 0.03
    # Monte Carlo volume of a few perturbed bodies equals the sphere of the drawn diameter within 2 %.
    rng = np.random.default_rng(1)
    few = prim.take(np.arange(5))
    for k in range(5):
        half = few.radius_nm[k] * 2.5
        pts = rng.uniform(-half, half, (400_000, 3))
        inside = (implicit_surface(pts, few.shape_matrix[k], few.coeff[k]) < 0).mean() * (2 * half) ** 3
        assert abs(inside / (4 / 3 * np.pi * few.radius_nm[k] ** 3) - 1) < 0.02


def test_aggregates_rest_on_the_substrate():
    cfg = small_config(primary={"shape": "ellipsoid"})
    rng = np.random.default_rng(5)
    for n in (1, 2, 7, 30):
        agg, bottom = build_single_aggregate(n, cfg.primary, cfg.aggregate, rng)
        lowest = agg.centre_nm[:, 2] + lowest_point_offset_nm(agg)
        assert abs(lowest.min()) < 1e-6 and np.all(lowest >= -1e-6)
        np.testing.assert_allclose(bottom, lowest, atol=1e-9)


def test_scene_invariants_visible_disjoint_union_amodal_contains_visible(small_cfg):
    scene = build_scene(small_cfg.image, small_cfg.primary, small_cfg.aggregate, small_cfg.field,
                        np.random.default_rng(11))
    out = render(scene.primaries, 160, 120, PX)
    assert scene.n_aggregates >= 2 and len(scene.primaries) >= 10
    union = np.zeros(out.shape, int)
    for k in range(1, out.n_instances + 1):
        visible = out.instance_id == k
        union += visible
        assert np.all(out.amodal_mask(k)[visible])
    assert union.max() <= 1
    assert np.array_equal(union > 0, out.instance_id > 0)
    amodal_union = np.zeros(out.shape, bool)
    amodal_union.flat[out.amodal_pixel] = True
    assert np.array_equal(amodal_union, out.instance_id > 0)


@pytest.mark.slow
def test_faceted_bodies_are_cut_ellipsoids_rendered_exactly():
    """Cut ellipsoids, turned after sampling as aggregates turn them: hits on the surface, misses true misses,
    normals of the face that bounds the top, flat faces actually visible, volume and lowest point exact."""
    cfg = PrimaryConfig(shape="faceted", diameter_gmean_nm=200, diameter_gsd=1.0, facet_depth=0.85)
    prim = sample_primaries(6, cfg, np.random.default_rng(3))
    turn = np.linalg.qr(np.random.default_rng(4).standard_normal((3, 3)))[0]
    centres = np.array([[(25 + 50 * (k % 3)) * PX, (25 + 50 * (k // 3)) * PX, 150.0] for k in range(6)])
    prim = prim.rotated(turn).with_centres(centres, np.arange(6))
    assert prim.planes.shape == (6, 14, 4)
    out = render(prim, 150, 100, PX)
    lowest = lowest_point_offset_nm(prim)
    rng = np.random.default_rng(1)
    for k in range(6):
        def surface(q, k=k):
            return implicit_surface(q, prim.shape_matrix[k], prim.coeff[k], prim.planes[k])

        mask = out.instance_id == k + 1
        yy, xx = np.nonzero(mask)
        q = np.stack([(xx + 0.5) * PX - centres[k, 0], (yy + 0.5) * PX - centres[k, 1],
                      out.height_nm[yy, xx].astype(float) - centres[k, 2]], axis=1)
        assert np.abs(surface(q)).max() < 1e-5
        for frac in (0.02, 0.1, 0.3):
            assert np.all(surface(q + [0, 0, frac * prim.radius_nm[k]]) > 0)
        # The normal is the outward normal of whichever constraint is active at the hit.
        on_plane = q @ prim.planes[k, :, :3].T / prim.planes[k, :, 3] - 1.0  # (M, P)
        which = on_plane.argmax(axis=1)
        plane_top = on_plane.max(axis=1) > -1e-6
        n = out.normal[mask]
        np.testing.assert_allclose(n[plane_top], prim.planes[k, which[plane_top], :3], atol=1e-5)
        grad = q[~plane_top] @ prim.shape_matrix[k]
        np.testing.assert_allclose(n[~plane_top], grad / np.linalg.norm(grad, axis=1, keepdims=True), atol=1e-4)
        assert 0.2 < plane_top.mean() < 0.995  # flat faces and rounded ellipsoid corners both show
        # Missed pixels around the body are true misses (dense march).
        ring = np.zeros_like(mask)
        cy, cx = int(centres[k, 1] / PX), int(centres[k, 0] / PX)
        ring[max(cy - 25, 0): cy + 25, max(cx - 25, 0): cx + 25] = True
        ring &= ~out.amodal_mask(k + 1)
        yy, xx = np.nonzero(ring)
        xy = np.stack([(xx + 0.5) * PX - centres[k, 0], (yy + 0.5) * PX - centres[k, 1]], axis=1)
        for z in np.linspace(-2 * prim.radius_nm[k], 2 * prim.radius_nm[k], 300):
            assert surface(np.column_stack([xy, np.full(len(xy), z)])).min() > -1e-9
        # Volume: the sphere of the drawn diameter (Monte Carlo, 1 M points: 0.6 % standard error).
        half = prim.radius_nm[k] * 2.5
        pts = rng.uniform(-half, half, (1_000_000, 3))
        inside = surface(pts) < 0
        assert abs(inside.mean() * (2 * half) ** 3 / (4 / 3 * np.pi * prim.radius_nm[k] ** 3) - 1) < 0.025
        # Lowest point: no inside point lies below it, and a dense grid of inside points comes within 1 nm.
        assert pts[inside, 2].min() >= lowest[k] - 1e-9
        g = np.linspace(-1.2, 1.2, 121) * prim.radius_nm[k]
        gx, gy, gz = np.meshgrid(g, g, lowest[k] + np.linspace(0.0, 1.0, 11))
        dense = np.stack([gx.ravel(), gy.ravel(), gz.ravel()], axis=1)
        assert surface(dense).min() < 0
        assert dense[surface(dense) < 0, 2].min() >= lowest[k] - 1e-9


def test_lowest_point_of_cut_bodies_matches_closed_forms():
    """Vertex, cut-ellipse and uncut cases against closed forms: a turned cube inside a large sphere rests on a
    corner at -s (|R31| + |R32| + |R33|); a sphere cut by a tilted plane rests on the lowest point of its cut
    circle; a sphere whose planes all lie above its bottom rests on its own bottom."""
    from dataclasses import replace

    s, big = 50.0, 200.0
    cube = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
    turns = [np.linalg.qr(np.random.default_rng(k).standard_normal((3, 3)))[0] for k in range(5)]
    bodies = replace(spheres(np.zeros((5, 3)), np.full(5, big)),
                     planes=np.stack([np.column_stack([cube @ t.T, np.full(6, s)]) for t in turns]))
    expected = [-s * np.abs(t[2]).sum() for t in turns]
    np.testing.assert_allclose(lowest_point_offset_nm(bodies), expected, rtol=1e-9)
    r, h = 100.0, 60.0
    theta = np.radians([0.0, 10.0, 25.0, 40.0])
    normals = np.column_stack([np.sin(theta), np.zeros(4), -np.cos(theta)])
    tilted = replace(spheres(np.zeros((4, 3)), np.full(4, r)),
                     planes=np.column_stack([normals, np.full(4, h)])[:, None])
    circle = -h * np.cos(theta) - np.sqrt(r * r - h * h) * np.sin(theta)
    np.testing.assert_allclose(lowest_point_offset_nm(tilted), circle, rtol=1e-9)
    above = replace(spheres(np.zeros((1, 3)), [r]), planes=np.array([[[0.0, 0.0, 1.0, 50.0], [1.0, 0.0, 0.0, 70.0]]]))
    np.testing.assert_allclose(lowest_point_offset_nm(above), [-r], rtol=1e-12)
