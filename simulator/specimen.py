"""The specimen's substrate, before its SE yield: a faint tileable texture and the rims of residue islands.

``substrate_texture`` places a Perlin fBm + ridged-line tile (``noise`` package, computed once per setting) with a
random shift and rotation per image; ``residue_rims`` draws the lobed outlines of dried droplets and film patches;
``substrate_dots`` the small bright dots (fine debris, contamination) that speckle real substrates. All return
per-pixel relative yield changes of the substrate that ``simulator.shading.shade`` multiplies in.
"""

from __future__ import annotations

from functools import cache

import cv2
import noise
import numpy as np

from simulator.config import ShadingConfig

_TILE_PX = 512  # tileable texture: _TILE_CELLS noise cells of _TILE_PX / _TILE_CELLS pixels
_TILE_CELLS = 8


@cache
def _texture_tile(ridges: float) -> np.ndarray:
    """(T, T) float32 tileable substrate texture with zero mean and unit standard deviation.

    A smooth fBm field (slow contamination / thickness variations) plus sparse thin curves (ridged Perlin noise,
    bright where a finer noise field crosses zero, kept only where a third field is high), like the curled
    residues seen on real carbon substrates.
    """
    coords = (np.arange(_TILE_PX) + 0.5) * (_TILE_CELLS / _TILE_PX)

    def field(freq: int, octaves: int, base: int) -> np.ndarray:
        period = _TILE_CELLS * freq
        return np.array(
            [
                [noise.pnoise2(x * freq, y * freq, octaves=octaves, repeatx=period, repeaty=period, base=base)
                 for x in coords]
                for y in coords
            ]
        )

    fbm = field(1, 4, 0)
    curves = (1.0 - np.minimum(np.abs(field(4, 3, 17)) / 0.03, 1.0)) ** 2  # 3 octaves: no zeros pinned to the lattice
    sparse = np.clip((field(2, 2, 29) - 0.05) / 0.15, 0.0, 1.0)
    lines = curves * sparse
    tex = (1 - ridges) * (fbm - fbm.mean()) / fbm.std() + ridges * (lines - lines.mean()) / lines.std()
    return ((tex - tex.mean()) / tex.std()).astype(np.float32)


def substrate_texture(
    shape: tuple[int, int], pixel_size_nm: float, cfg: ShadingConfig, rng: np.random.Generator
) -> np.ndarray:
    """(H, W) float32 zero-mean texture field, one noise cell per ``texture_scale_nm``, random shift and angle."""
    tile = _texture_tile(round(cfg.texture_ridges, 6))
    height, width = shape
    angle = rng.uniform(0, 2 * np.pi)
    shift = rng.uniform(0, _TILE_PX, 2)
    tile_px_per_image_px = (_TILE_PX / _TILE_CELLS) * pixel_size_nm / cfg.texture_scale_nm
    c, s = np.cos(angle) * tile_px_per_image_px, np.sin(angle) * tile_px_per_image_px
    image_to_tile = np.array([[c, -s, shift[0]], [s, c, shift[1]]])
    return cv2.warpAffine(
        tile, image_to_tile, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_WRAP,
    )


_OUTLINE_VERTICES = 32  # polygon vertices of an irregular island outline
_OUTLINE_HARMONICS = np.arange(2, 6)  # lobes: 2 (elongation) to 5 per turn


def residue_rims(
    shape: tuple[int, int], pixel_size_nm: float, cfg: ShadingConfig, rng: np.random.Generator
) -> np.ndarray:
    """(H, W) float32: the rims of residue islands on the substrate, relative yield change per unit ``residue_rims``.

    Islands (dried droplets, thin film patches) are a Boolean model: closed outlines with log-normal diameters
    around ``residue_size_nm`` (sigma of log 0.35) at Poisson positions, as many as put the image's coverage of
    the area inside their union; overlapping ones merge. Each outline is an ellipse (aspect up to 1.4) whose
    radius is modulated by ``residue_irregularity`` times random harmonics of 2 to 5 lobes per turn (amplitude
    falling as 1 / lobes), giving the lobed, kidney and crescent shapes of real residues. Real substrates differ
    from image to image (some nearly clean, some covered in curls): with ``residue_spread`` > 0 the image's
    coverage and rim strength are ``residue_coverage`` and 1 times independent log-normal factors of that sigma.
    The film's height profile is the islands' indicator smoothed by a Gaussian of sigma ``residue_width_nm``. An
    in-lens detector sees its edges bright (edge effect: |grad|, 1 at a step's centre line); an
    Everhart-Thornley detector (``et_fraction``) sees relief (the slope towards the detector: the facing side
    bright, the far side shadowed), mixed as (1 - f) |grad h| + 2 f (grad h . towards detector), both scaled so
    that a step's peak is 1 (times the image's rim strength). Real rims are not even: most are faint, a few bright,
    and many outlines show only as open arcs. ``residue_arc_variation`` > 0 multiplies the rims by a mean-1
    log-normal field of that sigma whose log is a Gaussian random field correlated over a quarter of the island size,
    so the strength changes along an outline and from island to island, and the faint stretches leave open arcs.
    """
    height, width = shape
    coverage, strength = cfg.residue_coverage, 1.0
    if cfg.residue_spread > 0:
        coverage_factor, strength = np.exp(cfg.residue_spread * rng.standard_normal(2))
        coverage = float(np.clip(coverage * coverage_factor, 0.005, 0.6))
    size_px = cfg.residue_size_nm / pixel_size_nm
    log_sigma = 0.35
    # Poisson count from the coverage of a Boolean model: 1 - exp(-density * mean area)
    mean_area_px = np.pi / 4 * size_px**2 * np.exp(2 * log_sigma**2)  # an ellipse of aspect A keeps pi d^2 / 4
    pad = int(np.ceil(2 * size_px))
    area = (height + 2 * pad) * (width + 2 * pad)
    n = rng.poisson(-np.log(1.0 - coverage) * area / mean_area_px)
    centre = rng.uniform((-pad, -pad), (width + pad, height + pad), (n, 2))
    diameter = size_px * np.exp(log_sigma * rng.standard_normal(n))
    aspect = rng.uniform(1.0, 1.4, n)
    angle = rng.uniform(0.0, 180.0, n)
    sub = 16  # cv2 drawing with 4 fractional bits: sub-pixel positions and sizes
    islands = np.zeros((height, width), np.uint8)
    if cfg.residue_irregularity == 0:
        for (x, y), d, a, t in zip(np.rint(centre * sub).astype(int), diameter, aspect, angle, strict=True):
            axes = (max(1, round(d * np.sqrt(a) / 2 * sub)), max(1, round(d / np.sqrt(a) / 2 * sub)))
            cv2.ellipse(islands, (int(x), int(y)), axes, float(t), 0.0, 360.0, 255, -1, cv2.LINE_AA, 4)
    else:
        for outline in _island_outlines(centre, diameter, aspect, np.deg2rad(angle), cfg.residue_irregularity,
                                        rng, sub):
            cv2.fillPoly(islands, [outline], 255, cv2.LINE_AA, 4)
    width_px = max(cfg.residue_width_nm / pixel_size_nm, 0.3)
    film = cv2.GaussianBlur(islands.astype(np.float32) / 255.0, (0, 0), width_px)
    gy, gx = np.gradient(film)
    peak = np.float32(np.sqrt(2 * np.pi) * width_px)  # 1 / (peak slope of a unit step blurred by width_px)
    rims = np.minimum(np.sqrt(gx * gx + gy * gy) * peak, 1.0)
    if cfg.et_fraction > 0:
        # the detector lies at et_azimuth_deg (x = column, y = row, as the particles' normals in _et_collection);
        # going towards it the film rises on the far side of an island and falls on the near one
        az = np.deg2rad(cfg.et_azimuth_deg)
        relief = -(gx * np.float32(np.cos(az)) + gy * np.float32(np.sin(az))) * peak
        rims = (1.0 - cfg.et_fraction) * rims + 2.0 * cfg.et_fraction * np.clip(relief, -1.0, 1.0)
    if strength != 1.0:
        rims *= np.float32(strength)
    if cfg.residue_arc_variation > 0:
        rims *= _arc_modulation(shape, size_px / 4, cfg.residue_arc_variation, rng)
    return rims.astype(np.float32)


def _arc_modulation(shape: tuple[int, int], correlation_px: float, sigma: float,
                    rng: np.random.Generator) -> np.ndarray:
    """(H, W) float32 mean-1 log-normal field: exp(sigma g - sigma^2 / 2), g a unit Gaussian random field.

    g is white noise smoothed by a Gaussian of ``correlation_px`` and scaled by the analytic SD of that smoothing
    (1 / (2 sqrt(pi) s) for unit white noise in 2-D), so its variance does not depend on the image.
    """
    s = max(correlation_px, 0.5)
    white = rng.standard_normal(shape, dtype=np.float32)
    g = cv2.GaussianBlur(white, (0, 0), s, borderType=cv2.BORDER_REFLECT) * np.float32(2 * np.sqrt(np.pi) * s)
    return np.exp(np.float32(sigma) * g - np.float32(sigma * sigma / 2))


def _island_outlines(centre: np.ndarray, diameter: np.ndarray, aspect: np.ndarray, angle_rad: np.ndarray,
                     irregularity: float, rng: np.random.Generator, sub: int) -> np.ndarray:
    """(n, V, 1, 2) int32 polygon vertices (``sub`` fractional units) of lobed ellipses, all at once."""
    n = len(centre)
    theta = np.linspace(0.0, 2 * np.pi, _OUTLINE_VERTICES, endpoint=False)
    amplitude = irregularity / _OUTLINE_HARMONICS * rng.standard_normal((n, len(_OUTLINE_HARMONICS)))
    phase = rng.uniform(0.0, 2 * np.pi, (n, len(_OUTLINE_HARMONICS)))
    wobble = np.exp(np.einsum("nk,nkv->nv", amplitude,
                              np.cos(_OUTLINE_HARMONICS[None, :, None] * theta + phase[:, :, None])))
    half_long, half_short = diameter * np.sqrt(aspect) / 2, diameter / np.sqrt(aspect) / 2
    u = half_long[:, None] * np.cos(theta) * wobble
    v = half_short[:, None] * np.sin(theta) * wobble
    cos_t, sin_t = np.cos(angle_rad)[:, None], np.sin(angle_rad)[:, None]
    x = centre[:, 0:1] + u * cos_t - v * sin_t
    y = centre[:, 1:2] + u * sin_t + v * cos_t
    return np.rint(np.stack([x, y], axis=-1) * sub).astype(np.int32)[:, :, None, :]


_DOT_LOG_SIGMA = 0.5  # spread of the dots' peak gains (log-normal sigma)


def substrate_dots(
    shape: tuple[int, int], pixel_size_nm: float, cfg: ShadingConfig, rng: np.random.Generator
) -> np.ndarray:
    """(H, W) float32: small bright dots on the substrate, relative yield change (peak = the dot's gain).

    Real substrates are speckled with dots a few pixels across, brighter than the substrate by about half its
    level (fine debris, contamination spots, the smallest fragments): isotropic Gaussian blobs of sigma
    ``substrate_dot_size_nm`` at Poisson positions, ``substrate_dots_per_um2`` on average (times the image's
    log-normal factor of sigma ``residue_spread``: contamination varies from image to image like the residue),
    peak gains log-normal around ``substrate_dot_gain`` (sigma 0.5). Each dot's mass is split bilinearly over
    the four pixels around its position, then blurred, so positions are sub-pixel. Particles hide the dots under
    them (``shade`` applies the field to the substrate only).
    """
    height, width = shape
    density = cfg.substrate_dots_per_um2
    if cfg.residue_spread > 0:
        density *= float(np.exp(cfg.residue_spread * rng.standard_normal()))
    area_um2 = height * width * (pixel_size_nm / 1000.0) ** 2
    n = rng.poisson(density * area_um2)
    y = rng.uniform(0.0, height - 1, n)
    x = rng.uniform(0.0, width - 1, n)
    gain = cfg.substrate_dot_gain * np.exp(_DOT_LOG_SIGMA * rng.standard_normal(n))
    sigma_px = max(cfg.substrate_dot_size_nm / pixel_size_nm, 0.5)
    mass = gain * 2 * np.pi * sigma_px**2  # a unit-peak Gaussian of sigma s holds 2 pi s^2
    y0, x0 = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    fy, fx = y - y0, x - x0
    flat = np.zeros(height * width)
    for dy, dx, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        rows, cols = np.minimum(y0 + dy, height - 1), np.minimum(x0 + dx, width - 1)
        flat += np.bincount(rows * width + cols, mass * w, height * width)
    return cv2.GaussianBlur(flat.reshape(shape).astype(np.float32), (0, 0), sigma_px,
                            borderType=cv2.BORDER_CONSTANT)
