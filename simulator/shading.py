"""Secondary-electron (SE) signal of the specimen as collected by the detector, from the render buffers.

Per pixel, the mean number of SE collected per primary electron:

    delta = delta0(material) * min(1 / cos(theta)^n, max_tilt_gain) * (1 + edge) * collection

- tilt contrast: theta is the angle between the surface normal and the beam (normal-based); optional facets
  pull each particle's normals towards a few random facet directions (flat patches, sharp facet edges);
- material contrast: ``particle_yield`` for TiO2 (times a per-primary factor, log-normal with mean 1 and sigma
  ``particle_yield_spread``, and a linear ramp across the primary of random direction, each component of SD
  ``particle_yield_tilt`` per equivalent radius): real particles differ in level and are lit unevenly in no
  preferred direction, far more than their shape's tilt contrast explains (thickness, orientation, surface
  state, local charging of each particle; an empirical model, fitted by ``cli.py fit``);
  ``substrate_yield`` * (1 + texture + rims) for the substrate, whose faint texture is Perlin fBm plus ridged
  Perlin lines (``noise`` package, evaluated once on a tileable grid, then placed with a random shift and
  rotation per image), and whose residue islands (dried droplets and thin film patches: the small closed curls
  that cover real substrates, lobed, in amounts that differ from image to image) show as thin rims: the edge
  effect and the relief of a film edge a few nm high (``residue_rims``);
- base occlusion: substrate beside a particle loses the SE whose escape paths the particle's side wall takes
  (``base_occlusion`` at the silhouette, fading over ``base_occlusion_range_nm``): the dark halo at the foot of
  every particle; optionally (``crevice_occlusion``, off by default) the same on a particle partly under a
  higher neighbour, from where that neighbour's edge covers it: the dark crevice between touching particles;
- edge effect: where the beam lands within the SE escape range of an edge (a step down in height by more
  than ``edge_step_nm``: a particle's silhouette, or a particle lying on another), SE escape through the side
  wall too: edge = edge_gain * exp(-d / R), d the distance to that edge, R = edge_range_nm * (E / 20 keV)^1.67
  (the Kanaya-Okayama energy dependence of the electron range);
- collection: an in-lens detector collects symmetrically (collection = 1); an Everhart-Thornley side detector
  (weight ``et_fraction``) at azimuth/elevation favours surfaces facing it and loses the SE from points whose
  straight path towards it is blocked by higher topography (shadows in the gaps between particles).

Nothing here moves a pixel: the labels of the render buffers stay as they are.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numba
import numpy as np
from scipy.spatial.transform import Rotation

from simulator.config import ShadingConfig
from simulator.geometry.particles import fibonacci_sphere, fixed_order_matmul
from simulator.render import RenderOut

_KANAYA_OKAYAMA_EXPONENT = 1.67


def edge_range_nm(cfg: ShadingConfig) -> float:
    """SE escape range that sets the width of the bright rims, at the configured beam energy."""
    return cfg.edge_range_nm * (cfg.beam_energy_keV / 20.0) ** _KANAYA_OKAYAMA_EXPONENT


@numba.njit(cache=True)
def _upper_edges(height_nm: np.ndarray, step_nm: float) -> np.ndarray:
    """(H, W) uint8: 0 on upper-edge pixels (a 4-neighbour lower by more than ``step_nm``), 1 elsewhere."""
    rows, cols = height_nm.shape
    out = np.ones((rows, cols), np.uint8)
    for r in range(rows):
        for c in range(cols):
            h = height_nm[r, c]
            if (
                (r > 0 and h - height_nm[r - 1, c] > step_nm)
                or (r < rows - 1 and h - height_nm[r + 1, c] > step_nm)
                or (c > 0 and h - height_nm[r, c - 1] > step_nm)
                or (c < cols - 1 and h - height_nm[r, c + 1] > step_nm)
            ):
                out[r, c] = 0
    return out


def _edge_distance_px(height_nm: np.ndarray, step_nm: float) -> np.ndarray:
    """Distance (px) of every pixel to the nearest upper-edge pixel (5 x 5 chamfer, within 2 % of Euclidean)."""
    return cv2.distanceTransform(_upper_edges(height_nm, np.float32(step_nm)), cv2.DIST_L2, cv2.DIST_MASK_5)


@numba.njit(cache=True)
def _blocked_rows(h: np.ndarray, rise_per_px: float) -> np.ndarray:
    """Per row, looking towards +x: is some later pixel higher than the sight line rising at rise_per_px?

    horizon(x) = max_{k >= 1} h(x + k) - k * rise, by the recursion horizon(x) = max(h(x+1), horizon(x+1)) - rise.
    """
    rows, cols = h.shape
    blocked = np.zeros((rows, cols), np.bool_)
    for r in range(rows):
        horizon = -np.inf
        for c in range(cols - 2, -1, -1):
            horizon = max(h[r, c + 1], horizon) - rise_per_px
            blocked[r, c] = horizon > h[r, c]
    return blocked


def _distance_to_particles_nm(particle: np.ndarray, pixel_size_nm: float) -> np.ndarray:
    """(H, W) float32: distance of every pixel from the nearest particle pixel, in nm (0 on particles)."""
    return cv2.distanceTransform((~particle).astype(np.uint8), cv2.DIST_L2, 3) * np.float32(pixel_size_nm)


def crevice_distance_nm(instance_id: np.ndarray, height_nm: np.ndarray, step_nm: float,
                        pixel_size_nm: float) -> np.ndarray:
    """(H, W) float32: for particle pixels, the distance (nm) to the nearest point of their own particle that
    lies under a neighbour's edge (a 4-neighbour of another particle standing more than ``step_nm`` higher);
    inf where there is none (substrate, particles not overlapped)."""
    ids, h = instance_id, height_nm
    under = np.zeros(h.shape, bool)
    lo, hi, all_ = slice(None, -1), slice(1, None), slice(None)
    pairs = (((hi, all_), (lo, all_)), ((lo, all_), (hi, all_)), ((all_, hi), (all_, lo)), ((all_, lo), (all_, hi)))
    for p, q in pairs:  # pixels p and their 4-neighbours q (above, below, left, right)
        under[p] |= (ids[p] > 0) & (ids[q] > 0) & (ids[q] != ids[p]) & (h[q] - h[p] > step_nm)
    out = np.full(h.shape, np.inf, np.float32)
    if not under.any():
        return out
    dist, nearest = cv2.distanceTransformWithLabels((~under).astype(np.uint8), cv2.DIST_L2, 5,
                                                    labelType=cv2.DIST_LABEL_PIXEL)
    owner = np.zeros(int(under.sum()) + 1, instance_id.dtype)  # label k: the k-th zero pixel, row-major
    owner[1:] = instance_id[under]
    same = (instance_id > 0) & (owner[nearest] == instance_id)
    out[same] = dist[same] * np.float32(pixel_size_nm)
    return out


def _et_collection(
    render: RenderOut, cfg: ShadingConfig, pixel_size_nm: float, dist_nm: np.ndarray | None = None
) -> np.ndarray:
    """Relative collection efficiency of a side (Everhart-Thornley) detector: facing term times shadowing.

    ``dist_nm``: ``_distance_to_particles_nm`` when the caller has it (computed here otherwise).

    Shadowing: the height map is turned so that the detector lies towards +x, each row is scanned once for
    the horizon (O(pixels)), and the blocked mask is turned back.
    """
    az, el = np.deg2rad(cfg.et_azimuth_deg), np.deg2rad(cfg.et_elevation_deg)
    towards = np.array([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)], np.float32)
    facing = np.ones(render.shape, np.float32)  # the flat substrate faces the detector as the reference
    particle = render.instance_id > 0
    cos_towards = fixed_order_matmul(render.normal[particle], towards[:, None])[:, 0]
    facing[particle] = np.clip(cos_towards, 0.0, 1.0) / towards[2]
    if cfg.et_shadow == 0 or not np.any(particle):
        return facing
    # Shadows vary slowly: they are traced on a half-resolution height map and interpolated back.
    height, width = render.shape
    h = cv2.resize(render.height_nm, ((width + 1) // 2, (height + 1) // 2), interpolation=cv2.INTER_AREA)
    small_h, small_w = h.shape
    diag = int(np.ceil(np.hypot(small_h, small_w))) + 2
    centre = np.array([small_w / 2, small_h / 2])
    # Rotation by -azimuth maps the detector direction onto +x, into a square canvas that holds every pixel.
    turn = cv2.getRotationMatrix2D(tuple(centre), np.rad2deg(az), 1.0)
    turn[:, 2] += diag / 2 - centre
    turned = cv2.warpAffine(h, turn, (diag, diag), flags=cv2.INTER_LINEAR, borderValue=0.0)
    blocked = _blocked_rows(turned, float(np.tan(el) * 2 * pixel_size_nm)).astype(np.float32)
    back = cv2.warpAffine(blocked, turn, (small_w, small_h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    back = cv2.resize(back, (width, height), interpolation=cv2.INTER_LINEAR)
    if cfg.et_shadow_range_nm > 0:
        # The collector's field bends SE paths around obstacles: only points close to one lose their SE.
        if dist_nm is None:
            dist_nm = _distance_to_particles_nm(particle, pixel_size_nm)
        back *= np.exp(-dist_nm / np.float32(cfg.et_shadow_range_nm))
    return facing * (1.0 - cfg.et_shadow * back)


def facet_normals(render: RenderOut, strength: float, count: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) shading normals with facets: each particle's normal is pulled towards the nearest of ``count``
    facet directions (a Fibonacci set, randomly turned per primary), so brightness varies in flat patches with
    sharp boundaries, like the faceted surfaces of real TiO2 crystals. Geometry and labels are unchanged.
    """
    if strength == 0 or render.n_instances == 0:
        return render.normal
    quat = rng.standard_normal((render.n_instances, 4))
    turns = Rotation.from_quat(quat / np.linalg.norm(quat, axis=1, keepdims=True)).as_matrix()
    dirs = np.einsum("nij,fj->nfi", turns, fibonacci_sphere(count)).astype(np.float32)  # (N, F, 3)
    return _snap_normals(render.instance_id, render.normal, dirs, np.float32(strength))


@numba.njit(cache=True)
def _snap_normals(instance_id, normal, dirs, strength):
    """Per particle pixel: normalise((1 - s) n + s d*), d* the facet direction of its primary closest to n."""
    rows, cols = instance_id.shape
    out = normal.copy()
    for r in range(rows):
        for c in range(cols):
            p = instance_id[r, c] - 1
            if p < 0:
                continue
            n0, n1, n2 = normal[r, c, 0], normal[r, c, 1], normal[r, c, 2]
            best, best_dot = 0, -2.0
            for f in range(dirs.shape[1]):
                dot = n0 * dirs[p, f, 0] + n1 * dirs[p, f, 1] + n2 * dirs[p, f, 2]
                if dot > best_dot:
                    best, best_dot = f, dot
            m0 = (1 - strength) * n0 + strength * dirs[p, best, 0]
            m1 = (1 - strength) * n1 + strength * dirs[p, best, 1]
            m2 = (1 - strength) * n2 + strength * dirs[p, best, 2]
            norm = np.sqrt(m0 * m0 + m1 * m1 + m2 * m2)
            out[r, c, 0], out[r, c, 1], out[r, c, 2] = m0 / norm, m1 / norm, m2 / norm
    return out


def particle_gains(n_instances: int, spread: float, tilt: float, rng: np.random.Generator) -> np.ndarray | None:
    """(n_instances, 3) float32 per primary: a yield factor (log-normal, mean 1, log-sigma ``spread``) and a
    yield gradient (gx, gy), each component normal with SD ``tilt``, in relative yield per equivalent radius.
    None when both are 0 (no draw: images without them are unchanged byte for byte)."""
    if (spread == 0 and tilt == 0) or n_instances == 0:
        return None
    z = rng.standard_normal((n_instances, 3))
    level = np.exp(spread * z[:, 0] - 0.5 * spread**2)
    return np.column_stack([level, tilt * z[:, 1], tilt * z[:, 2]]).astype(np.float32)


def gain_map(instance_id: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Per particle pixel, the yield factor of its primary: level x (1 + g . (x - centre) / radius), centre and
    equivalent radius of the primary's visible pixels; floored at 0.05. Returns (P,) float32 for the pixels of
    ``instance_id > 0`` in row-major order."""
    particle = instance_id > 0
    ids = instance_id[particle] - 1
    rows, cols = np.nonzero(particle)
    n = len(gains)
    count = np.bincount(ids, minlength=n).astype(np.float64)
    safe = np.maximum(count, 1)
    cy, cx = np.bincount(ids, rows, n) / safe, np.bincount(ids, cols, n) / safe
    radius = np.sqrt(safe / np.pi)
    rel = (gains[ids, 1] * (cols - cx[ids]) + gains[ids, 2] * (rows - cy[ids])) / radius[ids]
    return (gains[ids, 0] * np.maximum(1.0 + rel, 0.05)).astype(np.float32)


def shade(
    render: RenderOut,
    cfg: ShadingConfig,
    pixel_size_nm: float,
    texture: np.ndarray | None = None,
    normal: np.ndarray | None = None,
    rims: np.ndarray | None = None,
    gains: np.ndarray | None = None,
    dots: np.ndarray | None = None,
) -> np.ndarray:
    """Render buffers -> (H, W) float32 mean SE collected per primary electron. Labels are not touched.

    ``normal`` overrides the render's normals for shading (e.g. ``facet_normals``); heights still give edges.
    ``gains`` (``particle_gains``): per primary (indexed by instance id - 1) a yield level and gradient.
    ``dots`` (``simulator.specimen.substrate_dots``): relative yield change of the substrate from small dots.
    """
    if normal is not None:
        render = replace(render, normal=normal)
    particle = render.instance_id > 0
    if texture is not None and cfg.substrate_texture > 0:
        delta = cfg.substrate_yield * (1.0 + cfg.substrate_texture * texture)
    else:
        delta = np.full(render.shape, cfg.substrate_yield, np.float32)
    if rims is not None and cfg.residue_rims > 0:
        delta += np.float32(cfg.substrate_yield * cfg.residue_rims) * rims
    if dots is not None:
        delta += np.float32(cfg.substrate_yield) * dots
    # Particles only (the substrate faces the beam: no tilt gain, no edge): power and exp on few pixels.
    cos_theta = np.clip(render.normal[particle, 2], 1e-6, 1.0)
    on_particle = cfg.particle_yield * np.minimum(cos_theta ** (-cfg.tilt_exponent), cfg.max_tilt_gain)
    if cfg.edge_gain > 0 and cfg.edge_range_nm > 0:
        dist_px = _edge_distance_px(render.height_nm, cfg.edge_step_nm)
        on_particle *= 1.0 + cfg.edge_gain * np.exp(-dist_px[particle] * (pixel_size_nm / edge_range_nm(cfg)))
    if gains is not None:
        on_particle *= gain_map(render.instance_id, gains)
    delta[particle] = on_particle
    # One distance map serves the base occlusion and the fading side-detector shadows.
    dist_nm = None
    if np.any(particle) and ((cfg.base_occlusion > 0 and cfg.base_occlusion_range_nm > 0)
                             or (cfg.et_fraction > 0 and cfg.et_shadow > 0 and cfg.et_shadow_range_nm > 0)):
        dist_nm = _distance_to_particles_nm(particle, pixel_size_nm)
    if cfg.base_occlusion > 0 and cfg.base_occlusion_range_nm > 0 and dist_nm is not None:
        # SE leaving the substrate beside a particle: part of their escape hemisphere is the particle's side wall
        substrate = ~particle
        lost = cfg.base_occlusion * np.exp(-dist_nm[substrate] / cfg.base_occlusion_range_nm)
        delta[substrate] *= (1.0 - lost).astype(np.float32)
    if cfg.crevice_occlusion > 0 and cfg.base_occlusion_range_nm > 0 and np.any(particle):
        # The same on a particle partly under a neighbour: the neighbour's edge takes part of the escape
        # hemisphere of the surface beneath it (the dark crevice between touching particles).
        crevice = crevice_distance_nm(render.instance_id, render.height_nm, cfg.edge_step_nm, pixel_size_nm)
        near = np.isfinite(crevice)
        lost = cfg.crevice_occlusion * np.exp(-crevice[near] / cfg.base_occlusion_range_nm)
        delta[near] *= (1.0 - lost).astype(np.float32)
    if cfg.et_fraction > 0:
        delta *= (1.0 - cfg.et_fraction) + cfg.et_fraction * _et_collection(render, cfg, pixel_size_nm, dist_nm)
    if cfg.se2_fraction > 0 and np.any(particle):
        delta = se2_spread(delta, particle, cfg.se2_fraction, cfg.se2_range_nm / pixel_size_nm)
    return np.maximum(delta, 0.0).astype(np.float32)


def se2_spread(delta: np.ndarray, particle: np.ndarray, fraction: float, sigma_px: float) -> np.ndarray:
    """Replace ``fraction`` of the yield on particle pixels by its Gaussian average over particle pixels only.

    The SE1 signal comes from where the beam enters (local tilt, edges, collection); the SE2 signal is excited
    by backscattered electrons leaving the particle up to a BSE range away, so with the beam at a pixel it is
    the yield of the particle surface around it, averaged with the BSE exit density (a Gaussian of
    ``sigma_px``, normalised over particle pixels: blur of yield x mask over blur of mask). Substrate pixels
    are neither averaged in nor changed. Particles closer than about sigma share their SE2 (the model does not
    separate aggregates).
    """
    mask = particle.astype(np.float32)
    weight = cv2.GaussianBlur(mask, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)
    smooth = cv2.GaussianBlur(delta * mask, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)
    out = delta.copy()
    spread = smooth[particle] / np.maximum(weight[particle], 1e-6)
    out[particle] = (1.0 - fraction) * delta[particle] + fraction * spread
    return out
