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

import numpy as np

from refiner.edges import edge_agreement, strong_edges

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


def boundary_f(image: np.ndarray, labels: np.ndarray, tolerance_px: int) -> float:
    """F-score of the image's strong edges against the labels' instance boundaries, within ``tolerance_px``."""
    from eval.calibrate.image_stats import boundary_map

    return edge_agreement(strong_edges(image), boundary_map(labels), tolerance_px)[2]


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
