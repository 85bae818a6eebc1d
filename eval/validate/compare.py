"""Compare a model's errors on real and synthetic images: values, differences with bootstrap intervals, verdicts.

Both sides are scored by the evaluate module's own matching (``eval.metrics.matching.match_image``) and COCO per-image
evaluation (``eval.metrics.coco``), counting the measured particle class only (``eval.evaluate.labelled_images``
with ``simulator.io.records.counted_ignore_ids``: other classes and border particles are ignore regions). The difference
of a metric is real - synthetic. Its interval is a two-sample percentile bootstrap: in each resample the real
images and the synthetic images are drawn independently, with replacement, by *image* (never by particle:
particles of one image share its conditions), and every metric is recomputed from the drawn images' contents.

Verdict: ``agrees`` when |difference| <= the metric's tolerance, ``disagrees`` otherwise, ``undefined`` when a
side has no value (e.g. no matched pair). ``interval`` says what the bootstrap interval adds: ``inside`` (the
whole interval lies within +-tolerance: agreement shown at the confidence level), ``outside`` (it lies wholly
beyond: disagreement shown), ``straddles`` (more images would be needed to decide).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from eval.metrics.bootstrap import ImageRecord, Interval
from eval.metrics.coco import coco_accumulate, coco_evaluate_images
from eval.metrics.matching import ImageSample, MatchConfig, aggregate_matches, match_image
from eval.metrics.meanings import METRIC_MEANINGS  # noqa: F401  (validate's report reads it from here)
from eval.metrics.psd import pooled_sizes, psd_metrics

VALIDATED_METRICS = ("AP50", "F1", "precision", "recall", "split_rate", "merge_rate", "ECD_rel_bias",
                     "D10_rel_err", "D50_rel_err", "D90_rel_err")
DEFAULT_TOLERANCE = 0.05
DEFAULT_TOLERANCES = {"F1": 0.05, "split_rate": 0.03, "merge_rate": 0.05, "D50_rel_err": 0.05}  # issue 20


def tolerances(overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """Tolerance of every validated metric: the issue's defaults, ``DEFAULT_TOLERANCE`` elsewhere, overrides."""
    out = {name: DEFAULT_TOLERANCES.get(name, DEFAULT_TOLERANCE) for name in VALIDATED_METRICS}
    for name, value in (overrides or {}).items():
        if name not in out:
            raise ValueError(f"tolerance for unknown metric {name!r} (expected one of {', '.join(VALIDATED_METRICS)})")
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"tolerance {name}={value!r} (expected a number >= 0)")
        out[name] = float(value)
    return out


def parse_tolerances(items: Iterable[str]) -> dict[str, float]:
    """``["F1=0.03", ...]`` -> ``{"F1": 0.03}`` (values checked by ``tolerances``)."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"--tolerance {item!r} (expected NAME=VALUE, e.g. F1=0.05)")
    return tolerances(out)


# ------------------------------------------------------------------------------------------------- metrics


def image_records(samples: Sequence[ImageSample], match_config: MatchConfig = MatchConfig()) -> list[ImageRecord]:
    """Matching and COCO per-image evaluation of each image, computed once (resamples reuse them)."""
    if not samples:
        raise ValueError("image_records needs at least one image, got none")
    cocos = coco_evaluate_images(samples)
    return [ImageRecord(match_image(s, match_config), c) for s, c in zip(samples, cocos, strict=True)]


def validation_metrics(records: Sequence[ImageRecord]) -> dict[str, float]:
    """Every metric of ``VALIDATED_METRICS`` for a list of images (repeats count repeatedly)."""
    matches = [r.match for r in records]
    out = aggregate_matches(matches)
    out["AP50"] = coco_accumulate([r.coco for r in records])["AP50"]
    out.update(psd_metrics(*pooled_sizes(matches)))
    true_ecd = np.concatenate([m.pair_true_ecd_nm for m in matches])
    pred_ecd = np.concatenate([m.pair_pred_ecd_nm for m in matches])
    out["ECD_rel_bias"] = float(np.mean(pred_ecd / true_ecd - 1.0)) if true_ecd.size else float("nan")
    return {k: float(out[k]) for k in VALIDATED_METRICS}


# ------------------------------------------------------------------------------------------- the bootstrap


@dataclass(frozen=True, slots=True)
class TwoSampleIntervals:
    real: Interval
    synthetic: Interval
    difference: Interval  # real - synthetic


def _percentiles(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    finite = draws[np.isfinite(draws)]
    if not finite.size:
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


def _resampled(records: Sequence, statistic: Callable, keys: Sequence[str], rng: np.random.Generator,
               n_resamples: int, on_resample: Callable[[], None] | None = None) -> np.ndarray:
    """(n_resamples, len(keys)) statistic of resamples of ``records`` (indices sorted: order-stable ties)."""
    index = np.sort(rng.integers(0, len(records), size=(n_resamples, len(records))), axis=1)
    draws = np.empty((n_resamples, len(keys)))
    for b, rows in enumerate(index):
        value = statistic([records[i] for i in rows])
        draws[b] = [value[k] for k in keys]
        if on_resample is not None:
            on_resample()
    return draws


def two_sample_bootstrap(real: Sequence, synthetic: Sequence, statistic: Callable[[Sequence], Mapping[str, float]],
                         *, rng: np.random.Generator, n_resamples: int = 1000, confidence: float = 0.95,
                         on_resample: Callable[[], None] | None = None) -> dict[str, TwoSampleIntervals]:
    """Percentile intervals of each named statistic on each side and of their difference (real - synthetic),
    the two sides resampled independently (one record per image); ``on_resample`` is called 2 n_resamples
    times (progress)."""
    if not real or not synthetic:
        raise ValueError(f"both sides need images, got {len(real)} real and {len(synthetic)} synthetic")
    if n_resamples < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"need n_resamples >= 1 and 0 < confidence < 1, got {n_resamples!r}, {confidence!r}")
    value_r, value_s = statistic(list(real)), statistic(list(synthetic))
    keys = list(value_r)
    rng_r, rng_s = rng.spawn(2)
    draws_r = _resampled(real, statistic, keys, rng_r, n_resamples, on_resample)
    draws_s = _resampled(synthetic, statistic, keys, rng_s, n_resamples, on_resample)
    out = {}
    for j, key in enumerate(keys):
        r, s = float(value_r[key]), float(value_s[key])
        out[key] = TwoSampleIntervals(Interval(r, *_percentiles(draws_r[:, j], confidence)),
                                      Interval(s, *_percentiles(draws_s[:, j], confidence)),
                                      Interval(r - s, *_percentiles(draws_r[:, j] - draws_s[:, j], confidence)))
    return out


# ------------------------------------------------------------------------------------------------ verdicts


@dataclass(frozen=True, slots=True)
class MetricComparison:
    metric: str
    real: Interval
    synthetic: Interval
    difference: Interval  # real - synthetic
    tolerance: float
    verdict: str  # agrees | disagrees | undefined
    interval: str  # inside | outside | straddles | undefined (the difference's interval against +-tolerance)

    def as_dict(self) -> dict:
        return {"metric": self.metric, "real": self.real.as_dict(), "synthetic": self.synthetic.as_dict(),
                "difference": self.difference.as_dict(), "tolerance": self.tolerance, "verdict": self.verdict,
                "interval": self.interval}


def verdict(difference: float, tolerance: float) -> str:
    if not math.isfinite(difference):
        return "undefined"
    return "agrees" if abs(difference) <= tolerance else "disagrees"


def interval_status(diff: Interval, tolerance: float) -> str:
    if not (math.isfinite(diff.ci_low) and math.isfinite(diff.ci_high)):
        return "undefined"
    if -tolerance <= diff.ci_low and diff.ci_high <= tolerance:
        return "inside"
    if diff.ci_low > tolerance or diff.ci_high < -tolerance:
        return "outside"
    return "straddles"


def compare_records(real: Sequence[ImageRecord], synthetic: Sequence[ImageRecord], tols: Mapping[str, float], *,
                    rng: np.random.Generator, n_resamples: int = 1000, confidence: float = 0.95,
                    on_resample: Callable[[], None] | None = None) -> list[MetricComparison]:
    """One ``MetricComparison`` per validated metric, in ``VALIDATED_METRICS`` order."""
    boot = two_sample_bootstrap(real, synthetic, validation_metrics, rng=rng, n_resamples=n_resamples,
                                confidence=confidence, on_resample=on_resample)
    return [MetricComparison(name, b.real, b.synthetic, b.difference, tols[name],
                             verdict(b.difference.value, tols[name]), interval_status(b.difference, tols[name]))
            for name, b in ((name, boot[name]) for name in VALIDATED_METRICS)]
