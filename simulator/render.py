"""Orthographic top-view z-buffer over all primaries: exact labels by construction.

Pixel convention: pixel (row i, col j) is the vertical ray through its centre,
x = (j + 0.5) * pixel_size_nm, y = (i + 0.5) * pixel_size_nm, looking down -z. A primary covers a pixel
(amodal mask) when that ray meets the body; the visible instance of a pixel is the primary whose top surface
along the ray is highest. Labels therefore come from the geometry alone, never from the rendered image.

One compiled pass (numba) casts the ray of every pixel in each primary's bounding box, records the amodal hits
and keeps the highest hit per pixel; normals are computed afterwards for the visible surface only.

Ray-surface intersection: for ellipsoids the top root of a quadratic (exact); for cut ellipsoids that chord
clipped by every cut plane (exact; the normal is the plane's where a plane bounds the top). For perturbed bodies
the surface lies between an inner and an outer scaled ellipsoid (``shell_in``, ``shell_out``); rays that enter
the inner ellipsoid are bracketed between the two entry points; rays that only meet the outer shell are sampled
at ``RIM_SAMPLES`` points along the outer shell's whole chord (the body may bulge below its middle), and where F
came within L h / 2 of zero (L a Lipschitz bound of F, h the sample spacing) a golden-section search looks for a
dip between samples, so a missed ray is a true miss. Every bracket is refined by the Illinois (modified regula
falsi) method until |F| < ``F_TOL`` (heights to about 1e-4 nm). ``tests/test_render.py`` checks hits
against the implicit surface and misses against a dense brute-force march.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from simulator.geometry.particles import Primaries, monomial_exponents

RIM_SAMPLES = 8  # samples along the outer shell's chord for rays that miss the inner shell
GOLDEN_STEPS = 12  # golden-section iterations on near misses
MAX_REFINE_STEPS = 40  # Illinois iterations at most (typically 3 to 6)
F_TOL = 1e-6  # convergence of F (relative radius units): heights to about 1e-4 nm


@dataclass(frozen=True, slots=True)
class RenderOut:
    """Per-pixel buffers of the top view and the amodal masks of all primaries.

    instance_id: (H, W) int32, 0 = substrate, k = primary k - 1 (order of ``Primaries``).
    height_nm:   (H, W) float32, height of the visible surface above the substrate (0 on the substrate).
    normal:      (H, W, 3) float32 unit outward normal (x = column, y = row, z = up); (0, 0, 1) on substrate.
    amodal_instance, amodal_pixel: (M,) every (instance id, row-major flat pixel index) pair where the
        primary's full projection covers the pixel, sorted by instance, then in column-major pixel order.
    """

    instance_id: np.ndarray
    height_nm: np.ndarray
    normal: np.ndarray
    amodal_instance: np.ndarray
    amodal_pixel: np.ndarray
    n_instances: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.instance_id.shape

    def amodal_mask(self, instance: int) -> np.ndarray:
        """(H, W) bool full projected mask of one instance (1-based id)."""
        lo, hi = np.searchsorted(self.amodal_instance, [instance, instance + 1])
        mask = np.zeros(self.shape, bool)
        mask.flat[self.amodal_pixel[lo:hi]] = True
        return mask

    def amodal_area_px(self) -> np.ndarray:
        """(n_instances + 1,) amodal pixel count per instance id (index 0 unused)."""
        return np.bincount(self.amodal_instance, minlength=self.n_instances + 1)


@numba.njit(cache=True, fastmath=True, error_model="numpy", inline="always")
def _surface_along_ray(t, a, b, c, r2, q, degree):
    """F(q(t)) for one ray; q[d, l] holds the ray's perturbation polynomial as sum_d |q|^-d sum_l q[d, l] t^l."""
    ellipsoid = np.sqrt(max(a * t * t + 2.0 * b * t + c, 0.0))
    rho = 1.0 / np.sqrt(r2 + t * t)
    total = 0.0
    for d in range(degree, -1, -1):
        inner = 0.0
        for e in range(d, -1, -1):
            inner = inner * t + q[d, e]
        total = total * rho + inner
    return ellipsoid - 1.0 - total


@numba.njit(cache=True, fastmath=True, error_model="numpy", inline="always")
def _illinois(t_hi, f_hi, t_lo, f_lo, a, b, c, r2, q, degree, max_steps, tol):
    side = 0
    t_new = t_lo
    for _ in range(max_steps):
        denom = f_hi - f_lo
        t_new = (t_lo * f_hi - t_hi * f_lo) / denom if denom > 0 else t_lo
        f_new = _surface_along_ray(t_new, a, b, c, r2, q, degree)
        if abs(f_new) <= tol:
            break
        if f_new >= 0:
            if side == 1:
                f_lo *= 0.5
            t_hi, f_hi, side = t_new, f_new, 1
        else:
            if side == -1:
                f_hi *= 0.5
            t_lo, f_lo, side = t_new, f_new, -1
    return t_new


@numba.njit(cache=True, fastmath=True, error_model="numpy", inline="always")
def _golden_min(lo, hi, a, b, c, r2, q, degree, steps):
    g = (np.sqrt(5.0) - 1.0) / 2.0
    x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
    f1 = _surface_along_ray(x1, a, b, c, r2, q, degree)
    f2 = _surface_along_ray(x2, a, b, c, r2, q, degree)
    for _ in range(steps):
        if f1 < f2:
            hi, x2, f2 = x2, x1, f1
            x1 = hi - g * (hi - lo)
            f1 = _surface_along_ray(x1, a, b, c, r2, q, degree)
        else:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + g * (hi - lo)
            f2 = _surface_along_ray(x2, a, b, c, r2, q, degree)
    return (x1, f1) if f1 < f2 else (x2, f2)


@numba.njit(cache=True, fastmath=True, error_model="numpy", inline="always")
def _normal_at(x, y, t, p, m6, coeff, exps, degree, out, p0, p1, p2):
    """Unit outward normal grad F / |grad F| at q = (x, y, t) into ``out`` (3,); p0, p1, p2 are scratch
    arrays of length degree + 1."""
    mq0 = m6[p, 0] * x + m6[p, 1] * y + m6[p, 2] * t
    mq1 = m6[p, 1] * x + m6[p, 3] * y + m6[p, 4] * t
    mq2 = m6[p, 2] * x + m6[p, 4] * y + m6[p, 5] * t
    inv_e = 1.0 / np.sqrt(max(mq0 * x + mq1 * y + mq2 * t, 1e-300))
    g0, g1, g2 = mq0 * inv_e, mq1 * inv_e, mq2 * inv_e
    if degree > 0:
        norm = np.sqrt(x * x + y * y + t * t)
        u0, u1, u2 = x / norm, y / norm, t / norm
        p0[0] = p1[0] = p2[0] = 1.0
        for d in range(1, degree + 1):
            p0[d], p1[d], p2[d] = p0[d - 1] * u0, p1[d - 1] * u1, p2[d - 1] * u2
        d0 = d1 = d2 = 0.0
        for k in range(exps.shape[0]):
            i, j, e = exps[k, 0], exps[k, 1], exps[k, 2]
            ck = coeff[p, k]
            if i > 0:
                d0 += ck * i * p0[i - 1] * p1[j] * p2[e]
            if j > 0:
                d1 += ck * j * p0[i] * p1[j - 1] * p2[e]
            if e > 0:
                d2 += ck * e * p0[i] * p1[j] * p2[e - 1]
        radial = d0 * u0 + d1 * u1 + d2 * u2
        g0 -= (d0 - radial * u0) / norm
        g1 -= (d1 - radial * u1) / norm
        g2 -= (d2 - radial * u2) / norm
    gn = np.sqrt(g0 * g0 + g1 * g1 + g2 * g2)
    out[0], out[1], out[2] = g0 / gn, g1 / gn, g2 / gn


@numba.njit(cache=True, fastmath=True, error_model="numpy", inline="always")
def _rough_ray_top(a, b, c, r2, q, degree, s_out, s_in, lip):
    """Top intersection of a vertical ray with a perturbed body; the ray is q^T M q = a t^2 + 2 b t + c with
    r2 = x^2 + y^2 and its perturbation polynomial q (see ``_surface_along_ray``). Returns (hit, t in nm).

    Only scalars and one array cross this call: array arguments cost reference counting on every ray.
    """
    disc_out = b * b - a * (c - s_out * s_out)
    if disc_out <= 0:
        return False, 0.0
    t_out = (-b + np.sqrt(disc_out)) / a
    t_exit = (-b - np.sqrt(disc_out)) / a
    f_out = _surface_along_ray(t_out, a, b, c, r2, q, degree)
    if f_out <= 0:  # the outer bound touches the surface here: the entry point is the hit
        return True, t_out
    found = False
    t_hi, f_hi, t_lo, f_lo = t_out, f_out, t_out, f_out
    disc_in = b * b - a * (c - s_in * s_in)
    if disc_in > 0:
        t_lo = (-b + np.sqrt(disc_in)) / a
        f_lo = _surface_along_ray(t_lo, a, b, c, r2, q, degree)
        found = f_lo <= 0
    if not found:
        # March down the outer chord (the body may bulge below its middle) until F <= 0.
        step = (t_out - t_exit) / (RIM_SAMPLES - 1)
        f_prev, f_min, k_min = f_out, f_out, 0
        for k in range(1, RIM_SAMPLES):
            tk = t_out - step * k
            fk = _surface_along_ray(tk, a, b, c, r2, q, degree)
            if fk <= 0:
                t_hi, f_hi, t_lo, f_lo = tk + step, f_prev, tk, fk
                found = True
                break
            f_prev = fk
            if fk < f_min:
                f_min, k_min = fk, k
        if not found and f_min <= 0.5 * lip * step:
            # Near miss: F came within L h / 2 of zero, so it may dip below between samples.
            k_c = min(max(k_min, 1), RIM_SAMPLES - 2)
            upper = t_out - step * (k_c - 1)
            t_g, f_g = _golden_min(t_out - step * (k_c + 1), upper, a, b, c, r2, q, degree, GOLDEN_STEPS)
            if f_g <= 0:
                t_hi, t_lo, f_lo = upper, t_g, f_g
                f_hi = max(_surface_along_ray(upper, a, b, c, r2, q, degree), 0.0)
                found = True
    if not found:
        return False, 0.0
    return True, _illinois(t_hi, f_hi, t_lo, f_lo, a, b, c, r2, q, degree, MAX_REFINE_STEPS, F_TOL)


@numba.njit(cache=True, fastmath=True, error_model="numpy", inline="always")
def _cut_chord(x, y, t_top, t_bottom, planes, p):
    """Clip the chord [t_bottom, t_top] of a vertical ray at (x, y) by the cut planes n . q <= h of primary p.
    Returns (t_top, t_bottom, k): k is the plane that bounds the top, -1 if the ellipsoid does."""
    k_top = -1
    for k in range(planes.shape[1]):
        nz = planes[p, k, 2]
        rest = planes[p, k, 3] - planes[p, k, 0] * x - planes[p, k, 1] * y
        if nz > 1e-12:
            if rest / nz < t_top:
                t_top, k_top = rest / nz, k
        elif nz < -1e-12:
            t_bottom = max(t_bottom, rest / nz)
        elif rest < 0:
            return -1e30, 1e30, -1
    return t_top, t_bottom, k_top


@numba.njit(cache=True, fastmath=True, error_model="numpy")
def _zbuffer(boxes, centre, m6, coeff, exps, degree, rough, shell_out, shell_in, lipschitz, planes, pixel_size_nm,
             offsets, width, height):
    """Cast the ray of every pixel of every primary's box; keep the highest hit per pixel.

    boxes (N, 4): row0, row1, col0, col1 (inclusive, clipped); offsets (H, W, 2) px or (0, 0, 2) for none.
    Returns instance_id (H*W,), height (H*W,), normal (H*W, 3), amodal instance and pixel (M,) each.
    """
    n_pix = width * height
    instance = np.zeros(n_pix, np.int32)
    z_top = np.full(n_pix, -1e30, np.float32)  # finite sentinel: fastmath assumes no infinities
    top_plane = np.full(n_pix, -1, np.int32)  # cut plane that bounds the visible top (-1: the curved surface)
    total = 0
    for p in range(boxes.shape[0]):
        total += max(boxes[p, 1] - boxes[p, 0] + 1, 0) * max(boxes[p, 3] - boxes[p, 2] + 1, 0)
    amodal_instance = np.empty(total, np.int32)
    amodal_pixel = np.empty(total, np.int64)
    n_amodal = 0
    shifted = offsets.shape[0] > 0
    cut = planes.shape[1] > 0  # cut ellipsoids (never perturbed: ``render`` checks)
    q = np.zeros((degree + 1, degree + 1))
    px = np.ones(degree + 1)
    py = np.ones(degree + 1)
    for p in range(boxes.shape[0]):
        # Column by column: each primary's amodal pixels come out in COCO's column-major order.
        for col in range(boxes[p, 2], boxes[p, 3] + 1):
            for row in range(boxes[p, 0], boxes[p, 1] + 1):
                xr, yr = col + 0.5, row + 0.5
                if shifted:
                    xr += offsets[row, col, 0]
                    yr += offsets[row, col, 1]
                x = xr * pixel_size_nm - centre[p, 0]
                y = yr * pixel_size_nm - centre[p, 1]
                a = m6[p, 5]
                b = m6[p, 2] * x + m6[p, 4] * y
                c = m6[p, 0] * x * x + 2.0 * m6[p, 1] * x * y + m6[p, 3] * y * y
                k_top = -1
                if not rough[p]:  # ellipsoid: the top root of a quadratic
                    disc = b * b - a * (c - 1.0)
                    if disc <= 0:
                        continue
                    t = (-b + np.sqrt(disc)) / a
                    if cut:
                        t, t_bottom, k_top = _cut_chord(x, y, t, (-b - np.sqrt(disc)) / a, planes, p)
                        if t < t_bottom:
                            continue
                else:
                    if b * b - a * (c - shell_out[p] * shell_out[p]) <= 0:
                        continue
                    for d in range(1, degree + 1):
                        px[d], py[d] = px[d - 1] * x, py[d - 1] * y
                    q[:, :] = 0.0
                    for k in range(exps.shape[0]):
                        i, j, e = exps[k, 0], exps[k, 1], exps[k, 2]
                        q[i + j + e, e] += coeff[p, k] * px[i] * py[j]
                    hit, t = _rough_ray_top(a, b, c, x * x + y * y, q, degree, shell_out[p], shell_in[p], lipschitz[p])
                    if not hit:
                        continue
                pix = row * width + col
                amodal_instance[n_amodal] = p + 1
                amodal_pixel[n_amodal] = pix
                n_amodal += 1
                z = centre[p, 2] + t
                if z > z_top[pix]:
                    z_top[pix], instance[pix], top_plane[pix] = z, p + 1, k_top
    # Normals of the visible surface only.
    normal = np.zeros((n_pix, 3), np.float32)
    g = np.zeros(3)
    p0 = np.ones(degree + 1)
    p1 = np.ones(degree + 1)
    p2 = np.ones(degree + 1)
    for pix in range(n_pix):
        p = instance[pix] - 1
        if p < 0:
            normal[pix, 2] = 1.0
            z_top[pix] = 0.0
            continue
        k = top_plane[pix]
        if k >= 0:  # a flat face of a cut ellipsoid: its plane's normal
            normal[pix, 0], normal[pix, 1], normal[pix, 2] = planes[p, k, 0], planes[p, k, 1], planes[p, k, 2]
            continue
        row, col = pix // width, pix % width
        xr, yr = col + 0.5, row + 0.5
        if shifted:
            xr += offsets[row, col, 0]
            yr += offsets[row, col, 1]
        x = xr * pixel_size_nm - centre[p, 0]
        y = yr * pixel_size_nm - centre[p, 1]
        t = z_top[pix] - centre[p, 2]
        _normal_at(x, y, t, p, m6, coeff, exps, degree if rough[p] else 0, g, p0, p1, p2)
        normal[pix, 0], normal[pix, 1], normal[pix, 2] = g[0], g[1], g[2]
    return instance, z_top, normal, amodal_instance[:n_amodal], amodal_pixel[:n_amodal]


def _boxes(primaries: Primaries, width_px: int, height_px: int, pixel_size_nm: float, margin_px: int) -> np.ndarray:
    """(N, 4) int64 pixel box (row0, row1, col0, col1; inclusive) of each primary's outer-shell shadow, grown by
    ``margin_px`` for displaced rays and clipped to the image (empty when row1 < row0 or col1 < col0)."""
    inverse = np.linalg.inv(primaries.shape_matrix)
    ext_x = primaries.shell_out * np.sqrt(inverse[:, 0, 0])
    ext_y = primaries.shell_out * np.sqrt(inverse[:, 1, 1])
    cx, cy = primaries.centre_nm[:, 0], primaries.centre_nm[:, 1]
    col0 = np.maximum(np.ceil((cx - ext_x) / pixel_size_nm - 0.5) - margin_px, 0)
    col1 = np.minimum(np.floor((cx + ext_x) / pixel_size_nm - 0.5) + margin_px, width_px - 1)
    row0 = np.maximum(np.ceil((cy - ext_y) / pixel_size_nm - 0.5) - margin_px, 0)
    row1 = np.minimum(np.floor((cy + ext_y) / pixel_size_nm - 0.5) + margin_px, height_px - 1)
    return np.stack([row0, row1, col0, col1], axis=1).astype(np.int64)


def render(
    primaries: Primaries,
    width_px: int,
    height_px: int,
    pixel_size_nm: float,
    offsets_px: np.ndarray | None = None,
) -> RenderOut:
    """Z-buffer of all primaries: visible instance ids, heights, normals and amodal masks.

    offsets_px: optional (H, W, 2) displacement (x, y) in pixels of each pixel's ray from its nominal centre,
    for scan distortions: the image and every label are then sampled at the same displaced positions.
    Where two surfaces are exactly level, the primary listed first is the visible one.
    """
    margin = 0
    if offsets_px is not None:
        if offsets_px.shape != (height_px, width_px, 2):
            raise ValueError(f"offsets_px must have shape {(height_px, width_px, 2)}, got {offsets_px.shape}")
        margin = int(np.ceil(np.abs(offsets_px).max())) + 1
    else:
        offsets_px = np.zeros((0, 0, 2), np.float32)
    planes = primaries.planes
    if planes.shape[1] and np.any(primaries.coeff != 0):
        raise ValueError("render: cut planes apply to unperturbed ellipsoids only; got primaries with both")
    iu = np.triu_indices(3)
    instance, height_nm, normal, amodal_instance, amodal_pixel = _zbuffer(
        _boxes(primaries, width_px, height_px, pixel_size_nm, margin),
        np.ascontiguousarray(primaries.centre_nm, dtype=np.float64),
        np.ascontiguousarray(primaries.shape_matrix[:, iu[0], iu[1]]),
        np.ascontiguousarray(primaries.coeff, dtype=np.float64),
        monomial_exponents(primaries.degree),
        primaries.degree,
        np.any(primaries.coeff != 0, axis=1),
        np.ascontiguousarray(primaries.shell_out, dtype=np.float64),
        np.ascontiguousarray(primaries.shell_in, dtype=np.float64),
        np.ascontiguousarray(primaries.lipschitz_per_nm, dtype=np.float64),
        np.ascontiguousarray(planes, dtype=np.float64),
        float(pixel_size_nm),
        np.ascontiguousarray(offsets_px, dtype=np.float32),
        width_px,
        height_px,
    )
    return RenderOut(
        instance_id=instance.reshape(height_px, width_px),
        height_nm=height_nm.reshape(height_px, width_px),
        normal=normal.reshape(height_px, width_px, 3),
        amodal_instance=amodal_instance,
        amodal_pixel=amodal_pixel,
        n_instances=len(primaries),
    )
