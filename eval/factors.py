"""Influence factors of one SEM image, estimated from the image (and its label map when there is one).

    image (H, W) float in [0, 1], pixel_size_nm [, labels (H, W) int, measured ids]
        -> one pure function per factor (noise, blur, levels, coverage, crowding, sizes)
        -> ``image_factors`` -> ImageFactors (flat, JSON-able)

Without labels the particles are found by Otsu's threshold of a lightly smoothed image (``foreground_mask``);
with labels the label map is the foreground. Estimators reuse ``eval.calibrate.image_stats`` (substrate noise,
edge width) and ``eval.calibrate.fit`` (per-instance ECD, instances per connected region); their recovery on
simulated images of known probe blur, dose and coverage is measured by ``bench/bench_factors.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from eval.calibrate.fit import instance_shapes, instances_per_region
from eval.calibrate.image_stats import gradient_magnitude, near_other_instance
from eval.jsonable import to_jsonable
from simulator.classes import MEASURED_CLASS
from simulator.io.errors import UserError
from simulator.io.reader import Dataset, read_dataset

_BORDER_PX = 3  # pixels this close to a particle outline belong to neither substrate nor particle


def _distance_px(mask: np.ndarray) -> np.ndarray:
    return cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def foreground_mask(image: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """(H, W) bool particle mask: ``labels > 0``, or without labels Otsu's threshold of the image smoothed by a
    Gaussian of 1.5 px (noise would otherwise scatter pixels across the threshold)."""
    if labels is not None:
        return np.asarray(labels) > 0
    smooth = cv2.GaussianBlur(np.asarray(image, np.float32), (0, 0), 1.5, borderType=cv2.BORDER_REFLECT)
    u8 = np.clip(smooth * 255.0 + 0.5, 0, 255).astype(np.uint8)
    _, mask = cv2.threshold(u8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return mask.astype(bool)


def _substrate(foreground: np.ndarray) -> np.ndarray:
    return _distance_px(~foreground) > _BORDER_PX


def _core(foreground: np.ndarray) -> np.ndarray:
    return _distance_px(foreground) > _BORDER_PX + 2


# ----------------------------------------------------------------------------------------------- levels, noise


def substrate_level(image: np.ndarray, labels: np.ndarray | None = None) -> float:
    """Brightness: mean grey level of the substrate (image units, [0, 1])."""
    sub = _substrate(foreground_mask(image, labels))
    return float(np.asarray(image)[sub].mean()) if sub.any() else float("nan")


def particle_contrast(image: np.ndarray, labels: np.ndarray | None = None) -> float:
    """Contrast: mean grey level of particle cores minus the substrate's (image units)."""
    fg = foreground_mask(image, labels)
    core, sub = _core(fg), _substrate(fg)
    if not core.any() or not sub.any():
        return float("nan")
    image = np.asarray(image)
    return float(image[core].mean() - image[sub].mean())


def second_difference_noise_std(image: np.ndarray, region: np.ndarray, *, clip_sigma: float = 3.5) -> float:
    """Pixel noise std in ``region`` from vertical second differences ``I[y-1] - 2 I[y] + I[y+1]`` (variance
    6 sigma^2 for white noise), sigma-clipped at ``clip_sigma``. Across scan lines, as ``image_stats.noise_std``,
    but a second difference also cancels the substrate's linear shading, which first differences count as
    noise (on simulated substrates with texture: +20 % at 500 pA with first differences, +9 % with second)."""
    image = np.asarray(image, np.float32)
    region = np.asarray(region, bool)
    d = (image[2:] - 2 * image[1:-1] + image[:-2])[region[2:] & region[1:-1] & region[:-2]].astype(np.float64)
    if d.size < 100:
        return float("nan")
    keep = np.ones(d.size, bool)
    for _ in range(5):
        centre, sigma = d[keep].mean(), d[keep].std()
        keep = np.abs(d - centre) <= clip_sigma * sigma
    return float(d[keep].std() / math.sqrt(6.0))


def substrate_noise_std(image: np.ndarray, labels: np.ndarray | None = None) -> float:
    """Pixel noise std on the substrate (image units), away from particle outlines
    (``second_difference_noise_std``)."""
    return second_difference_noise_std(image, _substrate(foreground_mask(image, labels)))


def snr(image: np.ndarray, labels: np.ndarray | None = None) -> float:
    """Particle-to-substrate contrast over the substrate noise std (one pixel)."""
    return particle_contrast(image, labels) / substrate_noise_std(image, labels)


def equivalent_counts(image: np.ndarray, labels: np.ndarray | None = None) -> float:
    """Equivalent dose: the Poisson counts per pixel that give the substrate its signal-to-noise ratio,
    ``(substrate mean / substrate noise std)^2``. Proportional to the probe current (dose) when the noise is shot
    noise; a brightness offset of the detector shifts it (it is a dose in the image's own terms)."""
    return (substrate_level(image, labels) / substrate_noise_std(image, labels)) ** 2


# ---------------------------------------------------------------------------------------------------- blur


_REBLUR_PX = (1.0, 2.5)  # the two Gaussian re-blurs whose gradient ratio gives the edge width


def edge_sigma_px(image: np.ndarray, foreground: np.ndarray, *, band_px: int = 3) -> float:
    """Gaussian sigma (px) of the edges at a mask's outline, from the gradient ratio of two re-blurred copies.

    A step of any height blurred by sigma and re-blurred by s has a steepest slope proportional to
    1 / sqrt(sigma^2 + s^2), so the ratio R of the gradient magnitudes after re-blurs s1 < s2 gives
    sigma^2 = (s2^2 - R^2 s1^2) / (R^2 - 1) without knowing the step height (a bright rim or a local contrast
    that differs from the mean would bias ``image_stats.edge_width_nm``, which divides by the mean contrast).
    R is the median over the strongest quarter of the gradients within ``band_px`` of the outline.
    """
    inside, outside = _distance_px(foreground), _distance_px(~foreground)
    band = (foreground & (inside <= band_px)) | (~foreground & (outside <= band_px))
    if band.sum() < 50:
        return float("nan")
    image = np.asarray(image, np.float32)
    g1, g2 = (gradient_magnitude(cv2.GaussianBlur(image, (0, 0), s, borderType=cv2.BORDER_REFLECT), 1.0)
              for s in _REBLUR_PX)
    strong = band & (g1 >= np.percentile(g1[band], 75))
    ratio = float(np.median(g1[strong] / np.maximum(g2[strong], 1e-12)))
    s1, s2 = _REBLUR_PX
    if ratio <= 1.0:
        return float("inf")
    return math.sqrt(max((s2**2 - ratio**2 * s1**2) / (ratio**2 - 1.0), 0.0))


@lru_cache(maxsize=1)
def _sharp_edge_sigma_px() -> float:
    """What ``edge_sigma_px`` reads on a perfectly sharp, point-sampled disc (pixel sampling and the Sobel
    kernel's own width), removed in quadrature by ``blur_sigma_nm``."""
    yy, xx = np.mgrid[:128, :128] + 0.5 - 64
    disc = (np.hypot(yy, xx) < 40.3).astype(np.float32)
    return edge_sigma_px(disc, disc > 0.5)


def blur_sigma_nm(image: np.ndarray, pixel_size_nm: float, labels: np.ndarray | None = None) -> float:
    """Effective probe blur: the sigma (nm) of the Gaussian that blurs a sharp step to the image's particle
    outlines (``edge_sigma_px`` at the label outlines, or at the Otsu mask's without labels), less in quadrature
    what a sharp pixel-sampled step reads. Below about half a pixel the blur is not resolved (reads near 0)."""
    sigma_px = edge_sigma_px(image, foreground_mask(image, labels))
    if not math.isfinite(sigma_px):
        return sigma_px * pixel_size_nm if sigma_px == float("inf") else float("nan")
    return math.sqrt(max(sigma_px**2 - _sharp_edge_sigma_px() ** 2, 0.0)) * pixel_size_nm


# ------------------------------------------------------------------------------------------- crowding, sizes


def coverage(image: np.ndarray, labels: np.ndarray | None = None) -> float:
    """Projected coverage: share of the field covered by particles (label map, or Otsu mask)."""
    return float(foreground_mask(image, labels).mean())


def touching_ids(labels: np.ndarray, gap_px: int = 2) -> set[int]:
    """Instance ids with another instance's pixels within ``gap_px`` + 1 pixels (8-connected window): touching
    particles, also where a manual mask parts them by a background line up to ``gap_px`` wide (the reference
    masks do; exact simulated label maps do not, so 8-neighbours alone would count only the simulated ones)."""
    lab = np.asarray(labels)
    near_other = near_other_instance(lab, 2 * (gap_px + 1) + 1)
    return set(np.unique(lab[near_other]).tolist())


def touching_fraction(labels: np.ndarray, measured_ids: Collection[int] | None = None) -> float:
    """Share of the counted particles that touch another particle (any particle, counted or not). Counted:
    ``measured_ids`` (the measured class), or every instance in the label map."""
    lab = np.asarray(labels)
    present = set(np.unique(lab[lab > 0]).tolist())
    counted = present if measured_ids is None else present & {int(i) for i in measured_ids}
    if not counted:
        return float("nan")
    return len(counted & touching_ids(lab)) / len(counted)


def particles_per_aggregate(labels: np.ndarray) -> float:
    """Mean instances per connected foreground region (gaps of up to 2 px closed, as manual masks leave them)."""
    per_region = instances_per_region(np.asarray(labels))
    return float(per_region.mean()) if per_region.size else float("nan")


def size_percentiles_nm(labels: np.ndarray, pixel_size_nm: float,
                        measured_ids: Collection[int] | None = None) -> tuple[float, float, float]:
    """D10, D50, D90 (nm) of the area-equivalent diameters of the particles not cut by the border (of
    ``measured_ids`` only when given)."""
    ecd, _, border, ids = instance_shapes(np.asarray(labels), pixel_size_nm)
    keep = ~border if measured_ids is None else ~border & np.isin(ids, list(measured_ids))
    if not keep.any():
        return (float("nan"),) * 3
    d10, d50, d90 = np.percentile(ecd[keep], [10, 50, 90])
    return float(d10), float(d50), float(d90)


# ------------------------------------------------------------------------------------------------ per image


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageFactors:
    """Influence factors of one image; NaN where the input does not allow the estimate (no labels, no classes,
    no particles)."""

    pixel_size_nm: float
    substrate_level: float  # brightness, image units [0, 1]
    contrast: float  # particle cores minus substrate, image units
    substrate_noise_std: float  # image units
    snr: float
    equivalent_counts: float  # (substrate mean / noise std)^2
    blur_sigma_nm: float
    coverage: float
    touching_fraction: float  # labels only
    particles_per_aggregate: float  # labels only
    d10_nm: float  # measured class (or all not cut by the border), labels only
    d50_nm: float
    d90_nm: float
    from_labels: bool

    def as_dict(self) -> dict[str, float | bool]:
        return asdict(self)


def image_factors(image: np.ndarray, pixel_size_nm: float, labels: np.ndarray | None = None,
                  measured_ids: Collection[int] | None = None) -> ImageFactors:
    """Every factor of one image (see the functions above)."""
    image = np.asarray(image, np.float32)
    if image.ndim != 2:
        raise ValueError(f"image must be (H, W), got shape {image.shape}")
    if labels is not None and labels.shape != image.shape:
        raise ValueError(f"labels {labels.shape} do not match the image {image.shape}")
    nan = float("nan")
    crowd = (touching_fraction(labels, measured_ids), particles_per_aggregate(labels),
             *size_percentiles_nm(labels, pixel_size_nm, measured_ids)) if labels is not None else (nan,) * 5
    noise = substrate_noise_std(image, labels)
    level, contrast = substrate_level(image, labels), particle_contrast(image, labels)
    return ImageFactors(
        pixel_size_nm=float(pixel_size_nm), substrate_level=level, contrast=contrast, substrate_noise_std=noise,
        snr=contrast / noise, equivalent_counts=(level / noise) ** 2,
        blur_sigma_nm=blur_sigma_nm(image, pixel_size_nm, labels), coverage=coverage(image, labels),
        touching_fraction=crowd[0], particles_per_aggregate=crowd[1], d10_nm=crowd[2], d50_nm=crowd[3],
        d90_nm=crowd[4], from_labels=labels is not None,
    )


def summary(rows: list[ImageFactors]) -> dict[str, dict[str, float]]:
    """Per factor over the images: median, first and third quartile, IQR and the count of finite values."""
    out = {}
    for name, value in asdict(rows[0]).items() if rows else ():
        if isinstance(value, bool):
            continue
        values = np.array([getattr(r, name) for r in rows], float)
        values = values[np.isfinite(values)]
        if not values.size:
            out[name] = {"n": 0, "median": None, "q1": None, "q3": None, "iqr": None}
            continue
        q1, med, q3 = np.percentile(values, [25, 50, 75])
        out[name] = {"n": int(values.size), "median": float(med), "q1": float(q1), "q3": float(q3),
                     "iqr": float(q3 - q1)}
    return out


# -------------------------------------------------------------------------------------------------- datasets


def open_dataset(folder: str | Path) -> Dataset:
    """A dataset folder (simulated, ingested, refined; ``read_dataset``), checked before any work: no
    annotations.json (e.g. a folder of raw SEM images), no images, a missing pixel size or a label map that does
    not fit is a ``UserError`` naming the file."""
    folder = Path(folder)
    if folder.is_dir() and not (folder / "annotations.json").is_file():
        raise UserError(folder, "has no annotations.json (a folder of raw SEM images?)",
                        "a dataset folder: run `cli.py ingest SRC --out DIR --pixel-size-nm ...` first")
    dataset = read_dataset(folder)
    if not len(dataset):
        raise UserError(folder / "annotations.json", "lists no images", "at least one image")
    return dataset.checked(need_pixel_size=True)


def dataset_factors(dataset: Dataset, *, on_image: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Factors of every image of a dataset (``open_dataset``): per-image rows (``file_name`` and the
    ``ImageFactors`` fields) and their summary (median, quartiles, IQR). Label maps are used where an image has
    one, the measured class where the annotations carry classes; the info bar of simulated images is dropped."""
    rows, names = [], []
    for record in dataset:
        record = record.without_info_bar()
        anns = record.annotations
        measured = ({int(a["instance_id"]) for a in anns if a.get("particle_class") == MEASURED_CLASS}
                    if any("particle_class" in a for a in anns) else None)
        rows.append(image_factors(record.image, record.pixel_size_nm, record.labels, measured))
        names.append(record.file_name)
        if on_image is not None:
            on_image(1)
    return to_jsonable({
        "dataset": str(dataset.folder),
        "n_images": len(rows),
        "images": [{"file_name": name, **row.as_dict()} for name, row in zip(names, rows, strict=True)],
        "summary": summary(rows),
    })
