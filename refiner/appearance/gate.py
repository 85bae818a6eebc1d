"""Fidelity gate: does a segmenter see the conditioning labels in a generated image as it sees them in the real
image? Pure functions on arrays; the segmenter is any ``eval.segment.registry`` spec (``watershed`` by default,
``unet:PATH`` for a U-Net trained on the fold's real training images).

Pass when the segmenter's F1, split rate and merge rate on generated images (scored against the labels they were
generated from) are within ``tolerance`` of its scores on the real images of the same labels, and the boundary
F-score of the generated images' strong edges at ``boundary_tolerance_px`` is no lower than the render's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np

Segmenter = Callable[[np.ndarray, float], np.ndarray]


@dataclass(frozen=True, slots=True, kw_only=True)
class GateConfig:
    segmenter: str = "watershed"
    tolerance: float = 0.05  # |F1|, |split|, |merge| differences to the real images
    boundary_tolerance_px: int = 2
    boundary_slack: float = 0.0  # generated boundary F may be this much below the render's


def load_segmenter(spec: str) -> Segmenter:
    """(image in [0, 1], pixel_size_nm) -> instance ids, from an ``eval.segment.registry`` spec."""
    from eval.segment.registry import load_model

    model = load_model(spec)

    def segment(image: np.ndarray, pixel_size_nm: float) -> np.ndarray:
        return model(np.clip(image, 0.0, 1.0).astype(np.float32), pixel_size_nm).ids

    return segment


def strong_edges(image: np.ndarray, *, sigma_px: float = 1.5, quantile: float = 0.97) -> np.ndarray:
    """One-pixel strong edges (Canny, high threshold at the gradient-magnitude ``quantile``): the rule of
    ``refiner.fidelity.strong_edges``, here without that module's dataset imports."""
    img = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    smooth = cv2.GaussianBlur(img, (0, 0), sigma_px) if sigma_px > 0 else img
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    high = float(np.quantile(np.hypot(gx, gy), quantile))
    if high <= 0:
        return np.zeros(img.shape, bool)
    scale = 2000.0 / high
    dx = np.clip(np.rint(gx * scale), -32768, 32767).astype(np.int16)
    dy = np.clip(np.rint(gy * scale), -32768, 32767).astype(np.int16)
    return cv2.Canny(dx, dy, 1000.0, 2000.0, L2gradient=True) > 0


def boundary_f(image: np.ndarray, labels: np.ndarray, tolerance_px: int) -> float:
    """F-score of the image's strong edges against the labels' instance boundaries, within ``tolerance_px``."""
    from eval.calibrate.image_stats import boundary_map

    edges, truth = strong_edges(image), boundary_map(labels)
    if not edges.any() or not truth.any():
        return 0.0
    to_truth = cv2.distanceTransform((~truth).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    to_edge = cv2.distanceTransform((~edges).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    p = float((to_truth[edges] <= tolerance_px).mean())
    r = float((to_edge[truth] <= tolerance_px).mean())
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def segmentation_scores(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], pixel_size_nm: float,
                        segment: Segmenter) -> dict[str, float]:
    """F1, split and merge rates of ``segment`` on ``images`` against ``labels`` (summed over images)."""
    from eval.metrics.matching import ImageSample, aggregate_matches, match_image

    matches = [match_image(ImageSample(lab, segment(im, pixel_size_nm), pixel_size_nm))
               for im, lab in zip(images, labels, strict=True)]
    agg = aggregate_matches(matches)
    return {"F1": agg["F1"], "split_rate": agg["split_rate"], "merge_rate": agg["merge_rate"]}


@dataclass(frozen=True, slots=True)
class GateReference:
    """What the gate compares against: segmenter scores on the real images, boundary F of the renders."""

    real: dict
    render_boundary_f: float


def gate_reference(real: Sequence[np.ndarray], renders: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                   pixel_size_nm: float, segment: Segmenter, cfg: GateConfig) -> GateReference:
    bf = float(np.mean([boundary_f(r, lab, cfg.boundary_tolerance_px) for r, lab in zip(renders, labels, strict=True)]))
    return GateReference(segmentation_scores(real, labels, pixel_size_nm, segment), bf)


def judge(generated: Sequence[np.ndarray], labels: Sequence[np.ndarray], pixel_size_nm: float, segment: Segmenter,
          ref: GateReference, cfg: GateConfig) -> dict:
    """A flat record: the generated images' scores, their differences to the reference, ``passed`` and
    ``violation`` (how far outside the tolerances, 0 when passed)."""
    scores = segmentation_scores(generated, labels, pixel_size_nm, segment)
    bf = float(np.mean([boundary_f(g, lab, cfg.boundary_tolerance_px)
                        for g, lab in zip(generated, labels, strict=True)]))
    diffs = {k: scores[k] - ref.real[k] for k in scores}
    excess = sum(max(0.0, abs(d) - cfg.tolerance) for d in diffs.values())
    excess += max(0.0, ref.render_boundary_f - cfg.boundary_slack - bf)
    return {**{f"gen_{k}": v for k, v in scores.items()}, **{f"real_{k}": v for k, v in ref.real.items()},
            **{f"diff_{k}": v for k, v in diffs.items()}, "boundary_f": bf, "render_boundary_f": ref.render_boundary_f,
            "passed": bool(excess == 0.0), "violation": float(excess), "gate": asdict(cfg)}
