"""The classical baseline: threshold, distance-transform markers, marker watershed."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from eval.segment.interface import Prediction, check_input, relabel_sequential, remove_small_instances


def marker_watershed(surface: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Flood ``surface`` (low = instance centre) from ``markers`` within ``mask``. A connected component of
    the mask without a marker gets one at its lowest point, so no foreground is lost. Returns (H, W) int32."""
    from skimage.segmentation import watershed

    markers = np.where(mask, markers, 0).astype(np.int32)
    components, n = ndimage.label(mask)
    if n:
        has_marker = np.zeros(n + 1, bool)
        has_marker[components[markers > 0]] = True
        missing = np.flatnonzero(~has_marker[1:]) + 1
        if len(missing):
            lowest = ndimage.minimum_position(surface, components, missing)
            next_id = int(markers.max()) + 1
            for k, pos in enumerate(lowest):
                markers[pos] = next_id + k
    ids = watershed(surface, markers, mask=mask)
    return relabel_sequential(ids.astype(np.int32))[0]


def disk(radius_px: float) -> np.ndarray:
    """Boolean disk footprint of the given radius (at least a single pixel)."""
    r = max(int(math.floor(radius_px)), 0)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return yy**2 + xx**2 <= max(radius_px, 0) ** 2 + 1e-9


# ---------------------------------------------------------------------------------------- watershed baseline
THRESHOLD_METHODS = ("otsu", "li", "triangle", "mean")


@dataclass(frozen=True, slots=True, kw_only=True)
class WatershedConfig:
    """Classical baseline: smooth, threshold, distance transform, markers, watershed. Lengths in nm so that it
    behaves the same at any pixel size."""

    smoothing_nm: float = 3.0  # Gaussian sigma before thresholding (0 = none)
    threshold: str | float = "otsu"  # one of THRESHOLD_METHODS, or a fixed level in [0, 1]
    threshold_scale: float = 1.0  # multiplies the automatic threshold (< 1 keeps dimmer particle edges)
    fill_holes: bool = True
    opening_nm: float = 0.0  # radius of a morphological opening of the foreground (0 = none)
    min_separation_nm: float = 40.0  # markers (distance maxima) closer than this merge
    min_prominence_nm: float = 2.0  # a distance maximum must rise this much above the saddle to its neighbour
    min_area_nm2: float = 1000.0  # smaller instances are dropped

    def __post_init__(self):
        if isinstance(self.threshold, str):
            if self.threshold not in THRESHOLD_METHODS:
                raise ValueError(f"watershed.threshold must be one of {THRESHOLD_METHODS} or a number in [0, 1], "
                                 f"got {self.threshold!r}")
        elif not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"watershed.threshold must be in [0, 1], got {self.threshold!r}")
        for name in ("smoothing_nm", "opening_nm", "min_separation_nm", "min_prominence_nm", "min_area_nm2"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"watershed.{name} must be a finite number >= 0, got {value!r}")
        if not (math.isfinite(self.threshold_scale) and self.threshold_scale > 0):
            raise ValueError(f"watershed.threshold_scale must be > 0, got {self.threshold_scale!r}")


def foreground_threshold(image: np.ndarray, cfg: WatershedConfig) -> float:
    """The grey level that separates particles from the substrate."""
    if not isinstance(cfg.threshold, str):
        return float(cfg.threshold)
    from skimage import filters

    method = {"otsu": filters.threshold_otsu, "li": filters.threshold_li,
              "triangle": filters.threshold_triangle, "mean": filters.threshold_mean}[cfg.threshold]
    if float(image.max()) == float(image.min()):
        return float(image.max())  # flat image: nothing above the threshold
    return float(method(image)) * cfg.threshold_scale


def distance_markers(distance_nm: np.ndarray, mask: np.ndarray, pixel_size_nm: float, *,
                     min_separation_nm: float, min_prominence_nm: float) -> np.ndarray:
    """Markers at the maxima of a distance map: regional maxima that rise ``min_prominence_nm`` above their
    surroundings (h-maxima), merged when closer than ``min_separation_nm``. Returns (H, W) int32 labels."""
    from skimage.morphology import h_maxima

    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    # h-maxima on a fine integer grid (the float version is sensitive to round-off on plateaus)
    quantum_nm = 0.25
    levels = np.round(np.where(mask, distance_nm, 0) / quantum_nm).astype(np.int64)
    h = max(int(round(min_prominence_nm / quantum_nm)), 1)
    peaks = h_maxima(levels, h).astype(bool) & mask
    radius_px = 0.5 * min_separation_nm / pixel_size_nm
    if radius_px >= 1:
        # peaks within min_separation of each other fuse into one marker (dilation stays inside the mask)
        grown = cv2.dilate(peaks.astype(np.uint8), disk(radius_px).astype(np.uint8)).astype(bool) & mask
        blobs, _ = ndimage.label(grown, structure=np.ones((3, 3)))
        markers = np.where(peaks, blobs, 0)
    else:
        markers, _ = ndimage.label(peaks, structure=np.ones((3, 3)))
    return relabel_sequential(markers.astype(np.int32))[0]


def watershed_segment(image: np.ndarray, pixel_size_nm: float, cfg: WatershedConfig) -> np.ndarray:
    """Instance label map (H, W) int32 of bright particles on a dark substrate."""
    check_input(image, pixel_size_nm)
    pixel_nm = float(pixel_size_nm)
    smooth = image.astype(np.float32)
    if cfg.smoothing_nm > 0:
        smooth = cv2.GaussianBlur(smooth, (0, 0), cfg.smoothing_nm / pixel_nm, borderType=cv2.BORDER_REFLECT)
    mask = smooth > foreground_threshold(smooth, cfg)
    if cfg.opening_nm > 0:
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, disk(cfg.opening_nm / pixel_nm).astype(np.uint8))
        mask = mask.astype(bool)
    if cfg.fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    distance_nm = ndimage.distance_transform_edt(mask) * pixel_nm
    markers = distance_markers(distance_nm, mask, pixel_nm, min_separation_nm=cfg.min_separation_nm,
                               min_prominence_nm=cfg.min_prominence_nm)
    ids = marker_watershed(-distance_nm, markers, mask)
    return remove_small_instances(ids, cfg.min_area_nm2 / pixel_nm**2)


class WatershedModel:
    """``watershed``: the classical baseline as a model."""

    def __init__(self, cfg: WatershedConfig, spec: str = "watershed"):
        self.cfg = cfg
        self.spec = spec

    def __call__(self, image: np.ndarray, pixel_size_nm: float, image_info: Mapping | None = None) -> Prediction:
        return Prediction(ids=watershed_segment(image, pixel_size_nm, self.cfg))

    def describe(self) -> dict:
        return {"kind": "watershed", "spec": self.spec, **dataclasses.asdict(self.cfg)}
