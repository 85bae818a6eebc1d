"""Image statistics measured the same way on real and synthetic SEM images (both with a foreground mask)."""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

_BORDER_PX = 3  # pixels next to a particle boundary belong to neither the substrate nor the particle interior


def _distance_px(mask: np.ndarray) -> np.ndarray:
    return cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def noise_std(image: np.ndarray, region: np.ndarray) -> float:
    """Pixel noise in ``region``: sigma-clipped std of differences between vertically adjacent pixels / sqrt(2).

    Vertical neighbours lie on different scan lines, so the detector's along-line correlation does not hide
    noise, and slow texture cancels in the difference; clipping at 3.5 sigma drops texture edges. (A median
    absolute deviation would be quantised to whole grey levels on 8-bit images.)
    """
    d = (image[1:] - image[:-1])[region[1:] & region[:-1]].astype(np.float64)
    if d.size < 100:
        return float("nan")
    keep = np.ones(d.size, bool)
    for _ in range(5):
        centre, sigma = d[keep].mean(), d[keep].std()
        keep = np.abs(d - centre) <= 3.5 * sigma
    return float(d[keep].std() / np.sqrt(2))


def boundary_map(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels with a 4-neighbour of another instance id (both sides of every interface,
    particle/substrate and particle/particle)."""
    lab = np.asarray(labels)
    out = np.zeros(lab.shape, bool)
    dy = lab[1:] != lab[:-1]
    dx = lab[:, 1:] != lab[:, :-1]
    out[1:] |= dy
    out[:-1] |= dy
    out[:, 1:] |= dx
    out[:, :-1] |= dx
    return out


def radial_power_spectrum(image: np.ndarray, pixel_size_nm: float, n_bins: int = 40):
    """Radially averaged power spectrum (Hann window): (spatial frequency in 1/nm, power), log-spaced bins."""
    img = image - image.mean()
    window = np.outer(np.hanning(img.shape[0]), np.hanning(img.shape[1]))
    power = np.abs(np.fft.fftshift(np.fft.fft2(img * window))) ** 2 / window.sum() ** 2
    fy = np.fft.fftshift(np.fft.fftfreq(img.shape[0], d=pixel_size_nm))
    fx = np.fft.fftshift(np.fft.fftfreq(img.shape[1], d=pixel_size_nm))
    radius = np.hypot(*np.meshgrid(fx, fy))
    edges = np.geomspace(1.0 / (min(img.shape) * pixel_size_nm), 0.5 / pixel_size_nm, n_bins + 1)
    idx = np.digitize(radius.ravel(), edges) - 1
    ok = (idx >= 0) & (idx < n_bins)
    sums = np.bincount(idx[ok], weights=power.ravel()[ok], minlength=n_bins)
    counts = np.bincount(idx[ok], minlength=n_bins)
    centres = np.sqrt(edges[:-1] * edges[1:])
    return centres, sums / np.maximum(counts, 1)


def gradient_magnitude(image: np.ndarray, pixel_size_nm: float) -> np.ndarray:
    """Sobel gradient magnitude in intensity per nm (per pixel with ``pixel_size_nm = 1``)."""
    gx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    return np.hypot(gx, gy) / pixel_size_nm


def edge_width_nm(image: np.ndarray, foreground: np.ndarray, pixel_size_nm: float, band_px: int = 3) -> float:
    """Effective edge blur (nm): the sigma of a Gaussian-blurred step with the same contrast and steepest slope.

    For a step of height C blurred by a Gaussian of SD sigma the steepest gradient is C / (sigma sqrt(2 pi)).
    Here C = particle mean - substrate mean, and the steepest gradient is the 90th percentile of the Sobel
    gradient magnitude within ``band_px`` of the mask boundary (a hand-drawn boundary may be off by a pixel or
    two; the band covers it). Measured the same way on real and simulated images it drives the probe blur fit.
    """
    inside, outside = _distance_px(foreground), _distance_px(~foreground)
    band = (foreground & (inside <= band_px)) | (~foreground & (outside <= band_px))
    if band.sum() < 50 or (inside > 5).sum() < 50:
        return float("nan")
    img = image.astype(np.float32)
    slope = float(np.percentile(gradient_magnitude(img, 1.0)[band], 90))
    contrast = float(img[inside > 5].mean() - img[outside > band_px].mean())
    return contrast / (slope * np.sqrt(2 * np.pi)) * pixel_size_nm if slope > 0 else float("nan")


def image_statistics(image: np.ndarray, foreground: np.ndarray, pixel_size_nm: float) -> dict[str, float]:
    """Substrate level and noise, particle/substrate contrast, rim-to-centre ratio, spectral slope, dots.

    image: (H, W) float in [0, 1]; foreground: (H, W) bool particle mask.
    """
    inside = _distance_px(foreground)
    outside = _distance_px(~foreground)
    substrate = outside > _BORDER_PX
    rim = foreground & (inside <= 2)
    core = inside > 5
    sub_mean = float(image[substrate].mean())
    particle_mean = float(image[foreground].mean()) if foreground.any() else float("nan")
    freq, power = radial_power_spectrum(image, pixel_size_nm)
    band = (freq > 1 / 300) & (freq < 1 / 30)
    slope = float(np.polyfit(np.log(freq[band]), np.log(power[band] + 1e-30), 1)[0])
    return {
        "substrate_mean": sub_mean,
        "substrate_noise_std": noise_std(image, substrate),
        "particle_noise_std": noise_std(image, core) if core.sum() >= 200 else float("nan"),
        "substrate_std": float(image[substrate].std()),
        "particle_mean": particle_mean,
        "contrast": particle_mean / sub_mean if sub_mean > 0 else float("nan"),
        "rim_to_centre": float(image[rim].mean() / image[core].mean()) if core.any() else float("nan"),
        "coverage": float(foreground.mean()),
        "spectrum_slope": slope,
        "edge_width_nm": edge_width_nm(image, foreground, pixel_size_nm),
        **dict(zip(("substrate_dots_per_um2", "substrate_dot_amplitude"),
                   substrate_dots(image, foreground, pixel_size_nm), strict=True)),
    }


def substrate_dots(image: np.ndarray, foreground: np.ndarray, pixel_size_nm: float, *,
                   threshold_sigma: float = 6.0, margin_px: float = 8.0) -> tuple[float, float]:
    """Small bright dots on the substrate: how many, and how bright.

    On the substrate further than ``margin_px`` from any particle, the image minus its 5 x 5 median is noise
    plus whatever is smaller than the filter; connected groups of pixels above ``threshold_sigma`` robust SDs
    (1.4826 MAD) of it are dots. Returns (dots per um^2 of that substrate, median peak height over the local
    median level); (nan, nan) without enough substrate. Noise alone gives a few (a Gaussian tail beyond 6
    SDs is 1e-9, but shot noise at low counts is skewed): compare real and simulated images measured alike.
    """
    img = np.asarray(image, np.float32)
    fg = np.asarray(foreground, bool)
    region = _distance_px(~fg) > margin_px
    if region.sum() < 1000:
        return float("nan"), float("nan")
    local = cv2.medianBlur(img, 5)
    residual = img - local
    values = residual[region]
    sigma = 1.4826 * float(np.median(np.abs(values - np.median(values))))
    if sigma <= 0:
        return float("nan"), float("nan")
    blobs, n = ndimage.label((residual > threshold_sigma * sigma) & region)
    area_um2 = region.sum() * (pixel_size_nm / 1000.0) ** 2
    if n == 0:
        return 0.0, float("nan")
    index = np.arange(1, n + 1)
    peak = np.asarray(ndimage.maximum(residual, blobs, index))
    level = np.asarray(ndimage.mean(local, blobs, index))
    return float(n / area_um2), float(np.median(peak / np.maximum(level, 1e-6)))


def particle_shading_spread(image: np.ndarray, labels: np.ndarray, *, core_px: int = 3,
                            min_pixels: int = 80) -> np.ndarray:
    """How unevenly each particle is lit: the 10-90 % inter-percentile range of its core's intensities.

    image: (H, W) float (scale it by its levels first, e.g. ``eval.realism.data.normalized``, to compare images);
    labels: (H, W) int instance ids, 0 = substrate. A particle's core is its pixels more than ``core_px`` px
    from any other id (substrate or another particle: rims and edges excluded); particles with fewer than
    ``min_pixels`` core pixels are skipped. Returns one value per particle, in the image's units.
    """
    lab = np.asarray(labels)
    core = (lab > 0) & (_distance_px((lab > 0) & ~boundary_map(lab)) > core_px)
    ids, values = lab[core], np.asarray(image)[core]
    order = np.argsort(ids, kind="stable")
    ids, values = ids[order], values[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    spreads = [np.subtract(*np.percentile(v, [90, 10]))
               for v in np.split(values, starts[1:]) if len(v) >= min_pixels]
    return np.asarray(spreads, np.float64)


def particle_lighting(image: np.ndarray, labels: np.ndarray, ids=None, *, min_pixels: int = 150) -> np.ndarray:
    """Per particle, its mean level and its linear brightness ramp, in units of the image's particle contrast.

    image: (H, W) float; labels: (H, W) int instance ids, 0 = substrate; ids: the particles to measure (default
    every instance with at least ``min_pixels`` visible pixels). Contrast c = median particle level - median
    substrate level. Returns (N, 3): (mean - substrate median) / c, and the least-squares slope of the level
    across the particle (x to the right, y down), times the particle's equivalent radius, over c.
    """
    lab = np.asarray(labels)
    img = np.asarray(image, np.float64)
    fg = lab > 0
    if not fg.any() or fg.all():
        return np.zeros((0, 3))
    sub = float(np.median(img[~fg]))
    contrast = float(np.median(img[fg])) - sub
    n_all = np.bincount(lab.ravel())
    chosen = np.flatnonzero(n_all >= min_pixels)
    chosen = chosen[chosen > 0]
    if ids is not None:
        chosen = np.intersect1d(chosen, np.fromiter(ids, np.int64))
    if not len(chosen) or abs(contrast) < 1e-9:
        return np.zeros((0, 3))
    slot = np.zeros(len(n_all), np.int64)
    slot[chosen] = np.arange(1, len(chosen) + 1)
    k = slot[lab]
    sel = k > 0
    k = k[sel] - 1
    rows, cols = np.nonzero(sel)
    v = img[sel]

    def per(a):
        return np.bincount(k, a, len(chosen))

    n = per(np.ones_like(v))
    mx, my, mv = per(cols) / n, per(rows) / n, per(v) / n
    dx, dy, dv = cols - mx[k], rows - my[k], v - mv[k]
    sxx, syy, sxy, sxv, syv = per(dx * dx), per(dy * dy), per(dx * dy), per(dx * dv), per(dy * dv)
    det = np.maximum(sxx * syy - sxy**2, 1e-9)
    radius = np.sqrt(n / np.pi)
    gx = (syy * sxv - sxy * syv) / det * radius / contrast
    gy = (sxx * syv - sxy * sxv) / det * radius / contrast
    return np.column_stack([(mv - sub) / contrast, gx, gy])


def particle_profile(image: np.ndarray, labels: np.ndarray, ids=None, *, n_bins: int = 8) -> np.ndarray:
    """Mean level of the particles from outline to centre, in units of the particle contrast.

    Each pixel of the chosen particles (default: all) is binned by its depth: its distance to the particle's
    outline (any other id) over the particle's largest such distance, in ``n_bins`` equal bins from the outline
    (0) to the centre (1). Returns (n_bins,) pooled mean levels, (level - substrate median) / contrast, contrast
    = median particle level - median substrate level; NaN where a bin is empty.
    """
    lab = np.asarray(labels)
    img = np.asarray(image, np.float64)
    fg = lab > 0
    if not fg.any() or fg.all():
        return np.full(n_bins, np.nan)
    sub = float(np.median(img[~fg]))
    contrast = float(np.median(img[fg])) - sub
    chosen = fg if ids is None else np.isin(lab, np.fromiter(ids, np.int64))
    if not chosen.any() or abs(contrast) < 1e-9:
        return np.full(n_bins, np.nan)
    depth = _distance_px(fg & ~boundary_map(lab)) + 1.0  # boundary pixels at depth 1
    deepest = ndimage.maximum(depth, lab, index=np.arange(lab.max() + 1))
    rel = depth[chosen] / np.asarray(deepest)[lab[chosen]]
    b = np.minimum((rel * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(b, minlength=n_bins)
    total = np.bincount(b, (img[chosen] - sub) / contrast, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def profile_statistics(profile: np.ndarray) -> dict[str, float]:
    """From a ``particle_profile`` of 8 bins: the outer quarter's level (bins 0-1) and the central quarter's
    (bins 6-7), each over the middle quarter's (bins 3-4). A thin bright rim raises the first; shading that
    darkens particles towards their centre (normal incidence there) lowers the second."""
    middle = float(np.mean(profile[3:5]))
    if not np.isfinite(middle) or middle <= 0:
        return {"rim_to_middle": float("nan"), "centre_to_middle": float("nan")}
    return {"rim_to_middle": float(np.mean(profile[:2]) / middle),
            "centre_to_middle": float(np.mean(profile[6:8]) / middle)}


def lighting_statistics(per_particle: np.ndarray, et_azimuth_deg: float = 135.0) -> dict[str, float]:
    """Summary of ``particle_lighting`` rows pooled over images: the spread of particle levels (SD), the
    typical ramp (median magnitude), and the mean ramp towards a side detector at ``et_azimuth_deg``
    (the simulator's convention: from the image's +x axis towards +y, the row index): near 0 in-lens."""
    if len(per_particle) < 2:
        nan = float("nan")
        return {"particle_level_spread": nan, "particle_ramp": nan, "particle_ramp_to_detector": nan}
    az = np.radians(et_azimuth_deg)
    towards = per_particle[:, 1] * np.cos(az) + per_particle[:, 2] * np.sin(az)
    return {
        "particle_level_spread": float(per_particle[:, 0].std()),
        "particle_ramp": float(np.median(np.hypot(per_particle[:, 1], per_particle[:, 2]))),
        "particle_ramp_to_detector": float(towards.mean()),
    }


def near_other_instance(labels: np.ndarray, size: int) -> np.ndarray:
    """(H, W) bool: pixels of an instance with another instance's pixel in the ``size`` x ``size`` window around
    them (touching particles, also across a background line narrower than the window: manual masks draw one)."""
    lab = np.asarray(labels).astype(np.int32)
    fg = lab > 0
    big = np.iinfo(np.int32).max
    highest = ndimage.maximum_filter(lab, size=size)
    lowest = ndimage.minimum_filter(np.where(fg, lab, big), size=size)
    return fg & ((highest != lab) | ((lowest != lab) & (lowest != big)))


def contact_darkening(image: np.ndarray, labels: np.ndarray, pixel_size_nm: float, *,
                      band_nm: float = 25.0, gap_px: int = 2) -> tuple[float, float]:
    """How much darker particles are where they touch another particle than where they border the substrate.

    Within ``band_nm`` of a particle's outline, pixels nearer to another particle's pixels than to substrate
    pixels form the contact band, the others the free band; both levels are given relative to the level of
    the particles' interiors (further than the band from any outline), in units of the particle contrast
    (median particle level - median substrate level). Returns (contact - interior, free - interior): the dark
    crevices between touching particles make the first negative; the edge effect makes the second positive.
    """
    lab = np.asarray(labels)
    img = np.asarray(image, np.float64)
    fg = lab > 0
    if not fg.any() or fg.all():
        return float("nan"), float("nan")
    contrast = float(np.median(img[fg]) - np.median(img[~fg]))
    band_px = band_nm / pixel_size_nm
    # Manual masks part touching particles by a background line: a gap up to ``gap_px`` wide is contact.
    size = 2 * gap_px + 1
    closed = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((size, size), np.uint8)) > 0
    to_substrate = _distance_px(closed)  # inside a particle: distance to the nearest substrate pixel
    touching = near_other_instance(lab, size)
    to_other = _distance_px(~touching) if touching.any() else np.full(lab.shape, np.inf)
    nearest = np.minimum(to_substrate, to_other)
    interior = fg & (nearest > band_px)
    band = fg & (nearest <= band_px)
    contact = band & (to_other < to_substrate)
    free = band & ~contact
    if not interior.any() or abs(contrast) < 1e-9:
        return float("nan"), float("nan")
    ref = img[interior].mean()
    level = lambda m: float((img[m].mean() - ref) / contrast) if m.sum() >= 50 else float("nan")  # noqa: E731
    return level(contact), level(free)
