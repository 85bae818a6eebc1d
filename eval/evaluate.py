"""Run a segmentation model over a labelled dataset and score it against the exact labels.

Data flow: dataset folder (images/, labels/, annotations.json) -> model (eval.segment.registry) per image -> predicted
label maps -> metrics with bootstrap intervals over images (eval.metrics.bootstrap) -> metrics.json, per_image.csv,
report.html (eval.report.report). Particles cut by the image border and particles hidden beyond
``max_occluded_fraction`` are "ignore" regions (neither a miss nor a false detection), as metrology protocols do.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from eval.jsonable import to_jsonable
from eval.metrics.bootstrap import evaluate_predictions
from eval.metrics.matching import ImageSample, MatchConfig, aggregate_matches, match_image
from simulator.classes import CLASSES
from simulator.io.errors import UserError
from simulator.io.outputs import EVALUATION, check_output_folder, staged_output
from simulator.io.reader import Dataset, read_dataset, read_manifest
from simulator.io.records import counted_ignore_ids


@dataclass(frozen=True, slots=True, kw_only=True)
class EvaluateConfig:
    measured_class: str | None = "full"  # the particle class that counts (others: ignore regions); None: all
    max_occluded_fraction: float = 0.5  # without classes: true particles hidden beyond this are ignore regions
    iou_threshold: float = 0.5
    n_resamples: int = 200  # bootstrap resamples over images
    confidence: float = 0.95
    seed: int = 0
    limit: int | None = None  # evaluate only the first N images

    def __post_init__(self):
        if not 0.0 <= self.max_occluded_fraction <= 1.0:
            raise ValueError(f"max_occluded_fraction must be in [0, 1], got {self.max_occluded_fraction!r}")
        if not 0.0 < self.iou_threshold < 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1), got {self.iou_threshold!r}")
        if self.n_resamples < 1:
            raise ValueError(f"n_resamples must be >= 1, got {self.n_resamples!r}")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence!r}")
        if self.measured_class not in (None, *CLASSES):
            raise ValueError(f"measured_class must be one of {list(CLASSES)} or None, got {self.measured_class!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit!r}")


@dataclass(frozen=True, slots=True, eq=False)
class LabelledImage:
    info: dict  # the image's COCO record
    image: np.ndarray  # (H, W) float32 in [0, 1]
    true_ids: np.ndarray  # (H, W) int32
    ignore_ids: frozenset[int]
    annotations: tuple[dict, ...] = ()  # the image's COCO annotations (particle classes, occlusion, border)


@dataclass(frozen=True, slots=True, eq=False)
class PredictedImage:
    labelled: LabelledImage
    pred_ids: np.ndarray  # (H, W) int32
    scores: dict[int, float] | None
    seconds: float  # model inference time


def usable_images(folder: str | Path, cfg: EvaluateConfig = EvaluateConfig(), model=None) -> Dataset:
    """The labelled images to evaluate, every check done before any work: the annotations' structure, each
    image and label map readable and of matching size, pixel sizes, and the model's own input checks (a
    predictions file must match the dataset's images)."""
    folder = Path(folder)
    dataset = read_dataset(folder).labelled()
    if not len(dataset):
        raise UserError(folder / "annotations.json", "no image has a label map (label_file is null everywhere)",
                        "a labelled dataset: evaluation needs the true instances (labels/)")
    dataset = dataset[: cfg.limit].checked(need_pixel_size=True)
    check = getattr(model, "check_images", None)
    if check is not None:
        check([dataset.infos[k] for k in dataset.indices])
    return dataset


def labelled_images(folder: str | Path, cfg: EvaluateConfig = EvaluateConfig(), *,
                    dataset: Dataset | None = None) -> Iterator[LabelledImage]:
    """Every image of a dataset that has a label map, with its ignore ids (``dataset``: ``usable_images``'s
    result, to skip the checks already made)."""
    for record in usable_images(folder, cfg) if dataset is None else dataset:
        yield LabelledImage(record.info, record.image, record.labels,
                            record.ignore_ids(cfg.max_occluded_fraction, cfg.measured_class), record.annotations)


def run_model(model, images, on_image: Callable[[], None] | None = None) -> list[PredictedImage]:
    """The model's prediction for every image, with its inference time."""
    out = []
    for item in images:
        start = time.perf_counter()
        try:
            pred = model(item.image, float(item.info["pixel_size_nm"]), item.info)
        except Exception as err:
            if not getattr(model, "external", False):
                raise  # a built-in model failing is a bug, not bad input
            raise UserError(model.spec, f"failed on {item.info['file_name']}: {type(err).__name__}: {err}",
                            "a label map or Prediction of the image's shape") from err
        seconds = time.perf_counter() - start
        if pred.ids.shape != item.true_ids.shape:
            raise ValueError(f"model {model.spec!r} returned shape {pred.ids.shape} for {item.info['file_name']}, "
                             f"expected {item.true_ids.shape}")
        out.append(PredictedImage(item, pred.ids, pred.scores, seconds))
        if on_image is not None:
            on_image()
    return out


def score(predicted: list[PredictedImage], cfg: EvaluateConfig = EvaluateConfig()) -> dict:
    """Metrics with bootstrap intervals over images, and per-image rows (see eval.metrics.bootstrap)."""
    samples = [
        ImageSample(p.labelled.true_ids, p.pred_ids, float(p.labelled.info["pixel_size_nm"]), p.scores,
                    p.labelled.ignore_ids)
        for p in predicted
    ]
    result = evaluate_predictions(samples, match_config=MatchConfig(iou_threshold=cfg.iou_threshold),
                                  n_resamples=cfg.n_resamples, confidence=cfg.confidence, seed=cfg.seed)
    by_class = metrics_by_class(predicted, cfg)
    if by_class:
        result["by_class"] = by_class
    for row, p in zip(result["images"], predicted, strict=True):
        row["file_name"] = p.labelled.info["file_name"]
        row["inference_s"] = p.seconds
        if "sweep_point" in p.labelled.info:
            row["point_id"] = p.labelled.info["sweep_point"]["point_id"]
    return result


def metrics_by_class(predicted: list[PredictedImage], cfg: EvaluateConfig = EvaluateConfig()) -> dict:
    """Point metrics (no intervals) with each particle class counted in turn, the others ignored; empty when
    the dataset has no classes. A prediction on a particle of another class is ignored, not a false positive."""
    if not any("particle_class" in a for p in predicted for a in p.labelled.annotations):
        return {}
    out = {}
    match_cfg = MatchConfig(iou_threshold=cfg.iou_threshold)
    for name in CLASSES:
        matches = [
            match_image(ImageSample(p.labelled.true_ids, p.pred_ids, float(p.labelled.info["pixel_size_nm"]),
                                    p.scores, counted_ignore_ids(p.labelled.annotations, measured_class=name)),
                        match_cfg)
            for p in predicted
        ]
        agg = aggregate_matches(matches)
        n_true = sum(m.n_true for m in matches)
        out[name] = {"n_counted": int(n_true),
                     **{k: agg[k] for k in ("F1", "precision", "recall", "split_rate", "merge_rate", "ECD_bias_nm")}}
    return out


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def provenance(folder: Path, model, cfg: EvaluateConfig) -> dict:
    """What an auditor needs to reproduce the numbers: inputs, hashes, versions, settings."""
    from simulator.io.files import package_versions

    manifest = read_manifest(folder) or {}
    return {
        "dataset": str(folder.resolve()),
        "dataset_generator": manifest.get("generator"),
        "dataset_seed": manifest.get("seed"),
        "dataset_config_hash": manifest.get("config_hash"),
        "annotations_sha256": _sha256(folder / "annotations.json"),
        "model": {"spec": model.spec, **model.describe()},
        "evaluate_config": asdict(cfg),
        "packages": package_versions(),
    }


def per_image_csv(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def evaluate(dataset: str | Path, model, out_dir: str | Path, cfg: EvaluateConfig = EvaluateConfig(), *,
             on_image: Callable[[], None] | None = None, report: bool = True) -> dict:
    """Run ``model`` on a dataset, write metrics.json, per_image.csv and report.html to ``out_dir``."""
    from simulator.io.files import atomic_write_bytes

    dataset, out_dir = Path(dataset), Path(out_dir)
    checked = usable_images(dataset, cfg, model)
    check_output_folder(out_dir, EVALUATION, overwrite=True)  # replaces only an earlier evaluation
    predicted = run_model(model, labelled_images(dataset, cfg, dataset=checked), on_image)
    start = time.perf_counter()
    result = score(predicted, cfg)
    metrics_s = time.perf_counter() - start
    inference = [p.seconds for p in predicted]
    result["timing"] = {"inference_s_total": float(np.sum(inference)),
                        "inference_s_per_image": float(np.mean(inference)), "metrics_s": metrics_s}
    result["provenance"] = provenance(dataset, model, cfg)
    html = None
    if report:
        from eval.report.report import evaluation_report

        start = time.perf_counter()
        html = evaluation_report(result, predicted, cfg)
        result["timing"]["report_s"] = time.perf_counter() - start
    with staged_output(out_dir, EVALUATION, "evaluate", overwrite=True) as stage:  # all files or none
        if html is not None:
            atomic_write_bytes(stage / "report.html", html.encode())
        atomic_write_bytes(stage / "per_image.csv", per_image_csv(result["images"]).encode())
        atomic_write_bytes(stage / "metrics.json",
                           (json.dumps(to_jsonable(result), indent=1, allow_nan=False) + "\n").encode())
    return result
