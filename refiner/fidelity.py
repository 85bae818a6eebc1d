"""Label fidelity of a refiner, measured: does a refined image still agree with the labels of its input?

Two scores, each compared between the unrefined and the refined image of the same labels:
- boundary F-score: strong edges of the image (Canny on a lightly smoothed image, thresholds from the image's
  own gradient distribution, so a global gain, offset or gamma barely changes them) against the true instance
  boundaries (both sides of every interface), matched within ``tolerance_px``. It drops when boundaries move
  (on default synthetic images: F ~0.77; shifted by 1 px -0.03, by 2 px -0.22, by 3 px -0.41; gamma 0.7 or
  gain 1.5 change it by < 0.01); the refined score must stay within
  ``max_boundary_f_change`` of the unrefined one.
- frozen-segmenter agreement: a segmenter ``seg(image (H, W) float32 [0, 1], pixel_size_nm) -> (H, W) ids``
  run on both images; the two-class (substrate/particle) mean IoU of its outputs must be >=
  ``min_segmenter_miou``. ``default_segmenter()`` is eval.segment's "watershed" model when that module exists,
  else ``otsu_segmenter`` (Otsu threshold of the smoothed image, connected components).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from refiner.data import boundary_map
from refiner.edges import as_unit_image as _as_unit_image
from refiner.edges import edge_agreement, strong_edges

Segmenter = Callable[[np.ndarray, float], np.ndarray]


@dataclass(frozen=True, slots=True, kw_only=True)
class FidelityThresholds:
    max_boundary_f_change: float = 0.02
    min_segmenter_miou: float = 0.95
    tolerance_px: int = 1  # edge pixels within this distance of a true boundary count as matched
    edge_sigma_px: float = 1.5  # smoothing before edge detection (SEM images are noisy)
    edge_quantile: float = 0.97  # high Canny threshold: this quantile of the gradient magnitude

    def __post_init__(self):
        if self.max_boundary_f_change < 0:
            raise ValueError(f"max_boundary_f_change must be >= 0, got {self.max_boundary_f_change!r}")
        if not 0 <= self.min_segmenter_miou <= 1:
            raise ValueError(f"min_segmenter_miou must be in [0, 1], got {self.min_segmenter_miou!r}")
        if self.tolerance_px < 0:
            raise ValueError(f"tolerance_px must be >= 0, got {self.tolerance_px!r}")
        if not 0 < self.edge_quantile < 1:
            raise ValueError(f"edge_quantile must be in (0, 1), got {self.edge_quantile!r}")


@dataclass(frozen=True, slots=True)
class BoundaryScore:
    precision: float  # fraction of image edge pixels within tolerance of a true boundary
    recall: float  # fraction of true boundary pixels within tolerance of an image edge
    f: float


@dataclass(frozen=True, slots=True)
class FidelityResult:
    """Fidelity of one refined image (or the mean over several, from ``mean_fidelity``)."""

    boundary_f_unrefined: float
    boundary_f_refined: float
    boundary_f_change: float  # refined - unrefined
    segmenter_miou: float  # two-class mean IoU of the segmenter's foreground, unrefined vs refined
    segmenter_foreground_iou: float
    segmenter_pixel_agreement: float
    passed: bool
    n_images: int = 1

    def as_dict(self) -> dict:
        return asdict(self)


def boundary_f_score(edges: np.ndarray, labels: np.ndarray, tolerance_px: int = 1) -> BoundaryScore:
    """Precision/recall/F of image edges against the label map's instance boundaries, matched within
    ``tolerance_px`` (Euclidean distance transform)."""
    precision, recall, f = edge_agreement(edges, boundary_map(labels), tolerance_px)
    return BoundaryScore(precision, recall, f)


def image_boundary_f(image: np.ndarray, labels: np.ndarray, th: FidelityThresholds = FidelityThresholds()) -> float:
    """Boundary F-score of an image's strong edges against its labels."""
    edges = strong_edges(image, sigma_px=th.edge_sigma_px, quantile=th.edge_quantile)
    return boundary_f_score(edges, labels, th.tolerance_px).f


def otsu_segmenter(image: np.ndarray, pixel_size_nm: float) -> np.ndarray:
    """Fallback frozen segmenter: Otsu threshold of the image smoothed over ~10 nm, 8-connected components,
    objects smaller than (20 nm)^2 dropped. Returns (H, W) int32 ids."""
    img = _as_unit_image(image, "image")
    if not pixel_size_nm > 0:
        raise ValueError(f"pixel_size_nm must be > 0, got {pixel_size_nm!r}")
    sigma = max(0.5, 10.0 / pixel_size_nm)
    u8 = np.clip(np.rint(cv2.GaussianBlur(img, (0, 0), sigma) * 255), 0, 255).astype(np.uint8)
    _, fg = cv2.threshold(u8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    n, ids, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    small = stats[:, cv2.CC_STAT_AREA] < (20.0 / pixel_size_nm) ** 2
    small[0] = True
    keep = np.where(small, 0, np.cumsum(~small))
    return keep[ids].astype(np.int32)


def default_segmenter() -> tuple[str, Segmenter]:
    """(name, segmenter): eval.segment's "watershed" model if available, else the Otsu fallback."""
    try:
        from eval.segment.registry import load_model
    except ImportError:
        return "otsu (refiner.fidelity fallback)", otsu_segmenter
    model = load_model("watershed")

    def seg(image: np.ndarray, pixel_size_nm: float) -> np.ndarray:
        out = model(image, pixel_size_nm)
        return np.asarray(getattr(out, "ids", out))

    return "eval.models watershed", seg


def segmenter_agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(two-class mean IoU, foreground IoU, pixel agreement) of the foregrounds (id > 0) of two label maps."""
    fa, fb = np.asarray(a) > 0, np.asarray(b) > 0
    if fa.shape != fb.shape:
        raise ValueError(f"label maps must have the same shape, got {fa.shape} and {fb.shape}")
    inter_fg, union_fg = np.count_nonzero(fa & fb), np.count_nonzero(fa | fb)
    inter_bg, union_bg = np.count_nonzero(~fa & ~fb), np.count_nonzero(~fa | ~fb)
    iou_fg = inter_fg / union_fg if union_fg else 1.0
    iou_bg = inter_bg / union_bg if union_bg else 1.0
    return 0.5 * (iou_fg + iou_bg), iou_fg, float((fa == fb).mean())


@dataclass(frozen=True, slots=True)
class UnrefinedReference:
    """What fidelity compares against, computed once per unrefined image: its boundary F-score and the
    segmenter's output on it."""

    boundary_f: float
    segmentation: np.ndarray


def unrefined_reference(unrefined: np.ndarray, labels: np.ndarray, pixel_size_nm: float,
                        segmenter: Segmenter = otsu_segmenter,
                        thresholds: FidelityThresholds = FidelityThresholds()) -> UnrefinedReference:
    unrefined = _as_unit_image(unrefined, "unrefined")
    if unrefined.shape != np.shape(labels):
        raise ValueError(f"unrefined {unrefined.shape} and labels {np.shape(labels)} must have the same shape")
    return UnrefinedReference(image_boundary_f(unrefined, labels, thresholds),
                              np.asarray(segmenter(unrefined, pixel_size_nm)))


def label_fidelity(unrefined: np.ndarray | UnrefinedReference, refined: np.ndarray, labels: np.ndarray,
                   pixel_size_nm: float, segmenter: Segmenter = otsu_segmenter,
                   thresholds: FidelityThresholds = FidelityThresholds()) -> FidelityResult:
    """Fidelity of one refined image to the labels of its unrefined input (all (H, W), images in [0, 1]);
    ``unrefined`` may be given as its precomputed ``unrefined_reference`` (same segmenter and thresholds)."""
    refined = _as_unit_image(refined, "refined")
    if refined.shape != np.shape(labels):
        raise ValueError(f"refined {refined.shape} and labels {np.shape(labels)} must have the same shape")
    ref = unrefined if isinstance(unrefined, UnrefinedReference) else unrefined_reference(
        unrefined, labels, pixel_size_nm, segmenter, thresholds)
    f1 = image_boundary_f(refined, labels, thresholds)
    miou, iou_fg, agree = segmenter_agreement(ref.segmentation, segmenter(refined, pixel_size_nm))
    return _judged(ref.boundary_f, f1, miou, iou_fg, agree, 1, thresholds)


def mean_fidelity(results: Sequence[FidelityResult],
                  thresholds: FidelityThresholds = FidelityThresholds()) -> FidelityResult:
    """Mean of per-image results, judged on the means."""
    if not results:
        raise ValueError("no fidelity results to average")
    m = {k: float(np.mean([getattr(r, k) for r in results]))
         for k in ("boundary_f_unrefined", "boundary_f_refined", "segmenter_miou", "segmenter_foreground_iou",
                   "segmenter_pixel_agreement")}
    return _judged(m["boundary_f_unrefined"], m["boundary_f_refined"], m["segmenter_miou"],
                   m["segmenter_foreground_iou"], m["segmenter_pixel_agreement"], len(results), thresholds)


def _judged(f0, f1, miou, iou_fg, agree, n, th: FidelityThresholds) -> FidelityResult:
    passed = abs(f1 - f0) <= th.max_boundary_f_change and miou >= th.min_segmenter_miou
    return FidelityResult(boundary_f_unrefined=float(f0), boundary_f_refined=float(f1),
                          boundary_f_change=float(f1 - f0), segmenter_miou=float(miou),
                          segmenter_foreground_iou=float(iou_fg), segmenter_pixel_agreement=float(agree),
                          passed=bool(passed), n_images=int(n))
