"""Post-hoc degradations: what an instrument change would have done to an image that was already acquired.

Each function takes an image ``(H, W)`` float32 in [0, 1], its label map ``(H, W)`` int and its pixel size, and
returns a ``Degraded`` (image, labels, pixel size): labels move with the pixels. Only changes that an acquired
image still allows are possible: more probe blur (never less), a lower dose (never a higher one), coarser
pixels (never finer ones). Asking for the impossible direction raises ``ValueError``.

- Probe blur: the probe is taken as Gaussian, so going from the nominal sigma to a larger one is a convolution
  with a Gaussian of ``sqrt(level^2 - nominal^2)``.
- Dose: a lower dose is a thinned signal. Normalised SEM output keeps its mean and its noise variance grows as
  1 / dose; the image's own noise model ``var = offset_var + gain * mean`` (``estimate_noise_model``: a robust
  line through the mean and variance of flat patches) gives the variance to add at each pixel,
  ``var(local mean) * (nominal / level - 1)``, zero-mean Gaussian. The detector's noise at the new dose is thus
  reproduced in its first two moments, not its skew, and white: correlated noise of a real scan is not.
- Pixel size: a coarser scan at the same dwell time samples the same probe-blurred signal at fewer points,
  each with the same dose. Point sampling (nearest pixel centre, for the image and the labels alike) keeps the
  probe blur in nm and the noise per pixel; averaging pixels would lower the noise as a longer dwell would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import stats


@dataclass(frozen=True, slots=True, eq=False)  # holds arrays
class Degraded:
    image: np.ndarray  # (H, W) float32 in [0, 1]
    labels: np.ndarray  # (H, W) int32, moved with the pixels
    pixel_size_nm: float


def _check_pair(image: np.ndarray, labels: np.ndarray) -> None:
    if image.ndim != 2 or image.shape != labels.shape:
        raise ValueError(f"image and labels must be (H, W) of one shape, got {image.shape} and {labels.shape}")


# ------------------------------------------------------------------------------------------------ probe blur


def added_blur_sigma_nm(level_nm: float, nominal_nm: float) -> float:
    """Gaussian sigma that turns a probe of ``nominal_nm`` into one of ``level_nm`` (Gaussians add in quadrature)."""
    if nominal_nm < 0 or level_nm < nominal_nm:
        raise ValueError(f"probe sigma {level_nm!r} nm is below the nominal {nominal_nm!r} nm: blur cannot be removed "
                         "from an acquired image")
    return math.sqrt(level_nm**2 - nominal_nm**2)


def blur_to_probe_sigma(image: np.ndarray, labels: np.ndarray, pixel_size_nm: float, *, level_nm: float,
                        nominal_nm: float) -> Degraded:
    """The image as a probe of sigma ``level_nm`` would have recorded it (labels unchanged)."""
    _check_pair(image, labels)
    sigma_px = added_blur_sigma_nm(level_nm, nominal_nm) / pixel_size_nm
    out = image.astype(np.float32, copy=True)
    if sigma_px > 0:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=sigma_px, sigmaY=sigma_px, borderType=cv2.BORDER_REFLECT)
    return Degraded(out, labels, pixel_size_nm)


# ---------------------------------------------------------------------------------------------------- dose


@dataclass(frozen=True, slots=True)
class NoiseModel:
    """Noise variance as a function of the local mean: ``max(offset_var + gain * mean, 0)`` (image units^2)."""

    offset_var: float
    gain: float
    n_patches: int  # flat patches the fit used

    def variance(self, mean: np.ndarray) -> np.ndarray:
        return np.maximum(self.offset_var + self.gain * np.asarray(mean, np.float64), 0.0)


def _patches(image: np.ndarray, patch_px: int) -> np.ndarray:
    """(N, patch_px^2) non-overlapping patches (the image cropped to whole patches)."""
    h, w = (image.shape[0] // patch_px) * patch_px, (image.shape[1] // patch_px) * patch_px
    blocks = image[:h, :w].reshape(h // patch_px, patch_px, w // patch_px, patch_px)
    return blocks.transpose(0, 2, 1, 3).reshape(-1, patch_px * patch_px)


def _plane_residual_var(blocks: np.ndarray, patch_px: int) -> np.ndarray:
    """Variance of each patch about its least-squares plane (a slope is structure, not noise)."""
    y, x = np.mgrid[:patch_px, :patch_px]
    design = np.stack([np.ones(patch_px * patch_px), x.ravel(), y.ravel()], axis=1)
    projection = design @ np.linalg.pinv(design)
    residual = blocks - blocks @ projection.T
    return (residual**2).sum(axis=1) / (patch_px * patch_px - 3)


def estimate_noise_model(image: np.ndarray, *, patch_px: int = 8, flat_fraction: float = 0.3, n_bins: int = 8,
                         max_patches: int = 1500) -> NoiseModel:
    """Fit ``var = offset_var + gain * mean`` to the flat patches of one image.

    Patches of ``patch_px`` square: mean and variance about the patch's plane. Flat: within each of ``n_bins``
    brightness bins, the ``flat_fraction`` of patches whose smoothed image (Gaussian, 1.5 px: noise mostly
    removed, structure kept) varies least about its plane. Patches touching 0 or 1 (clipped) are left out.
    Line fit: Theil-Sen (median of pairwise slopes), robust to the edges and textures that remain.
    """
    image = np.asarray(image, np.float32)
    if image.ndim != 2:
        raise ValueError(f"image must be (H, W), got shape {image.shape}")
    smooth = cv2.GaussianBlur(image, (0, 0), sigmaX=1.5, borderType=cv2.BORDER_REFLECT)
    blocks = _patches(image, patch_px).astype(np.float64)
    structure = _plane_residual_var(_patches(smooth, patch_px).astype(np.float64), patch_px)
    variance = _plane_residual_var(blocks, patch_px)
    mean = blocks.mean(axis=1)
    unclipped = (blocks.min(axis=1) > 0.0) & (blocks.max(axis=1) < 1.0)
    mean, variance, structure = mean[unclipped], variance[unclipped], structure[unclipped]
    if mean.size < 4 * n_bins:
        raise ValueError(f"image of shape {image.shape} has {mean.size} unclipped {patch_px} px patches; the noise "
                         f"gain needs at least {4 * n_bins}")
    edges = np.quantile(mean, np.linspace(0.0, 1.0, n_bins + 1))
    bins = np.clip(np.searchsorted(edges, mean, side="right") - 1, 0, n_bins - 1)
    # rank of each patch's structure within its bin, as a fraction: one sort by (bin, structure)
    order = np.lexsort((structure, bins))
    counts = np.bincount(bins, minlength=n_bins)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(mean.size)
    rank[order] = (np.arange(mean.size) - start[bins[order]]) / np.maximum(counts[bins[order]], 1)
    flat = rank < flat_fraction
    mean, variance = mean[flat], variance[flat]
    if mean.size > max_patches:  # deterministic thinning: Theil-Sen is quadratic in the count
        keep = np.linspace(0, mean.size - 1, max_patches).round().astype(int)
        mean, variance = mean[keep], variance[keep]
    if np.ptp(mean) <= 1e-6:
        return NoiseModel(float(np.median(variance)), 0.0, int(mean.size))
    slope, intercept, _, _ = stats.theilslopes(variance, mean)
    return NoiseModel(float(intercept), float(max(slope, 0.0)), int(mean.size))


def dose_noise_factor(level: float, nominal: float) -> float:
    """Extra noise variance, as a multiple of the image's own, of a dose ``level`` below ``nominal``."""
    if not (nominal > 0 and 0 < level <= nominal):
        raise ValueError(f"dose {level!r} is above the nominal {nominal!r}: noise cannot be removed from an acquired "
                         "image")
    return nominal / level - 1.0


def thin_dose(image: np.ndarray, labels: np.ndarray, pixel_size_nm: float, *, level: float, nominal: float,
              noise: NoiseModel, rng: np.random.Generator, local_mean_sigma_px: float = 1.5) -> Degraded:
    """The image at a dose ``level`` (any unit, e.g. probe current in pA) instead of ``nominal``: zero-mean
    Gaussian noise of variance ``noise.variance(local mean) * (nominal / level - 1)``, clipped to [0, 1]."""
    _check_pair(image, labels)
    factor = dose_noise_factor(level, nominal)
    image = image.astype(np.float32, copy=False)
    local_mean = cv2.GaussianBlur(image, (0, 0), sigmaX=local_mean_sigma_px, borderType=cv2.BORDER_REFLECT)
    sd = np.sqrt(noise.variance(local_mean) * factor).astype(np.float32)
    out = image + sd * rng.standard_normal(image.shape, dtype=np.float32)
    return Degraded(np.clip(out, 0.0, 1.0), labels, pixel_size_nm)


# ---------------------------------------------------------------------------------------------- pixel size


def resample_pixel_size(image: np.ndarray, labels: np.ndarray, pixel_size_nm: float, *,
                        level_nm: float) -> Degraded:
    """Point-sample image and labels on a grid of ``level_nm`` pixels covering the same field (nearest sample of
    each new pixel centre). The output is ``floor(H * pixel_size_nm / level_nm)`` rows (likewise columns)."""
    _check_pair(image, labels)
    if level_nm < pixel_size_nm * (1 - 1e-9):
        raise ValueError(f"pixel size {level_nm!r} nm is finer than the image's {pixel_size_nm!r} nm: detail cannot be "
                         "added to an acquired image")
    step = level_nm / pixel_size_nm  # old pixels per new pixel
    h, w = (max(int(n / step + 1e-9), 1) for n in image.shape)
    rows = np.minimum(((np.arange(h) + 0.5) * step).astype(int), image.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * step).astype(int), image.shape[1] - 1)
    return Degraded(image[np.ix_(rows, cols)].copy(), labels[np.ix_(rows, cols)].copy(), float(level_nm))
