"""Confidence intervals by bootstrap over images, and ``evaluate_predictions``: every metric with its interval.

Images, not particles, are resampled: particles of one image share its imaging conditions and its crowding,
so they are not independent, and resampling them would give intervals that are too narrow. Each resample
draws as many images as there are, with replacement (an image drawn twice counts twice), and recomputes
every statistic from the drawn images' contents: counts are re-summed for PQ / F1, PSD samples re-pooled,
COCO precision / recall re-accumulated from each image's stored per-detection matches. The interval is the
percentile interval of the resampled values; resamples where a statistic is undefined (NaN, e.g. no TP pair
to measure a size error on) are left out of that statistic's interval.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from eval.metrics.coco import CocoImageEval, coco_accumulate, coco_evaluate_images
from eval.metrics.matching import ImageMatch, MatchConfig, aggregate_matches, as_sample, match_image
from eval.metrics.psd import pooled_sizes, psd_metrics, psd_summary

T = TypeVar("T")

METRICS = (
    "AP", "AP50", "AP75", "AR",
    "PQ", "SQ", "RQ", "DSC", "F1", "precision", "recall", "split_rate", "merge_rate",
    "ECD_bias_nm", "ECD_sd_nm", "FeretMin_bias_nm", "FeretMin_sd_nm", "FeretMax_bias_nm", "FeretMax_sd_nm",
    "D10_rel_err", "D50_rel_err", "D90_rel_err", "dg_rel_err", "sigmag_rel_err", "W1_nm", "KS",
    "D50_true_nm", "D50_pred_nm", "dg_true_nm", "dg_pred_nm", "sigmag_true", "sigmag_pred",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Interval:
    value: float  # the statistic on all images
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high}


def bootstrap_ci(
    records: Sequence[T],
    statistic: Callable[[Sequence[T]], Mapping[str, float]],
    *,
    rng: np.random.Generator,
    n_resamples: int = 200,
    confidence: float = 0.95,
) -> dict[str, Interval]:
    """Percentile bootstrap intervals of every named value that ``statistic`` returns, resampling ``records``
    (one per image) with replacement.

    statistic : list of records -> {name: float}; called once on all records, then once per resample. The
        records of a resample are passed in their original order (indices sorted), so a resample is exactly
        the dataset made of the drawn images (this matters only for ties broken by order, as COCO's).
    """
    if len(records) == 0:
        raise ValueError("bootstrap_ci needs at least one record, got none")
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    records = list(records)
    value = {k: float(v) for k, v in statistic(records).items()}
    n = len(records)
    draws = np.full((int(n_resamples), len(value)), np.nan)
    index = np.sort(rng.integers(0, n, size=(int(n_resamples), n)), axis=1)
    keys = list(value)
    for b, rows in enumerate(index):
        result = statistic([records[i] for i in rows])
        draws[b] = [result.get(k, np.nan) for k in keys]
    tail = 100.0 * (1.0 - confidence) / 2.0
    out = {}
    for j, key in enumerate(keys):
        finite = draws[:, j][np.isfinite(draws[:, j])]
        low, high = np.percentile(finite, [tail, 100.0 - tail]) if finite.size else (np.nan, np.nan)
        out[key] = Interval(value[key], float(low), float(high))
    return out


# ------------------------------------------------------------------------------------ the entry point


@dataclass(frozen=True, slots=True, eq=False)  # holds arrays: compare fields explicitly
class ImageRecord:
    """What the dataset statistics need from one image: its matching and its COCO per-image evaluation."""

    match: ImageMatch
    coco: CocoImageEval


def dataset_metrics(records: Sequence[ImageRecord]) -> dict[str, float]:
    """Every metric of ``METRICS`` for a list of images (repeats count repeatedly)."""
    matches = [r.match for r in records]
    out = {**aggregate_matches(matches), **coco_accumulate([r.coco for r in records])}
    out.update(psd_metrics(*pooled_sizes(matches)))
    return {k: out[k] for k in METRICS}


def evaluate_predictions(
    samples: Sequence,
    *,
    match_config: MatchConfig = MatchConfig(),
    n_resamples: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
    max_dets: int | None = None,
) -> dict:
    """Evaluate predicted label maps against the truth: metrics with bootstrap intervals, and per-image rows.

    samples : ``ImageSample``s or tuples ``(true_ids, pred_ids, scores, pixel_size_nm, ignore_ids)`` (see
        ``eval.metrics.matching``); scores may be None (COCO then uses 1.0 for every prediction).
    match_config : matching thresholds (IoU, ignore, split / merge parts).
    n_resamples, confidence, seed : bootstrap over images (``np.random.default_rng(seed)``).
    max_dets : COCO detections kept per image (default: all of them).

    Returns a JSON-able dict (NaN where a metric is undefined):
      "metrics": {name: {"value", "ci_low", "ci_high"}} for every name in ``METRICS``;
      "images": one row per image: tp, fp, fn, n_true, n_pred, ignored counts, splits, merges, PQ, SQ, RQ,
          DSC, AP, AP50, D50_true_nm, D50_pred_nm;
      "counts": dataset totals (tp, fp, fn, n_true, n_pred, ignored); "settings": what was used.
    """
    samples = [as_sample(s) for s in samples]
    if not samples:
        raise ValueError("evaluate_predictions needs at least one image, got none")
    matches = [match_image(s, match_config) for s in samples]
    cocos = coco_evaluate_images(samples, max_dets=max_dets)
    records = [ImageRecord(m, c) for m, c in zip(matches, cocos, strict=True)]
    intervals = bootstrap_ci(
        records, dataset_metrics, rng=np.random.default_rng(seed), n_resamples=n_resamples, confidence=confidence
    )
    rows = []
    for k, (m, c) in enumerate(zip(matches, cocos, strict=True)):
        ap = coco_accumulate([c])
        rows.append(
            {
                "image": k,
                **m.row(),
                "AP": ap["AP"],
                "AP50": ap["AP50"],
                "D50_true_nm": psd_summary(m.true_ecd_nm)["D50_nm"],
                "D50_pred_nm": psd_summary(m.pred_ecd_nm)["D50_nm"],
            }
        )
    count_keys = ("tp", "fp", "fn", "n_true", "n_pred", "n_true_ignored", "n_pred_ignored", "splits", "merges")
    return {
        "metrics": {name: intervals[name].as_dict() for name in METRICS},
        "images": rows,
        "counts": {key: int(sum(row[key] for row in rows)) for key in count_keys},
        "settings": {
            "n_images": len(samples),
            "n_resamples": int(n_resamples),
            "confidence": float(confidence),
            "seed": int(seed),
            "max_dets": max_dets,
            "match": dataclasses.asdict(match_config),
        },
    }
