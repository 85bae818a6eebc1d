"""Robustness sweeps: simulate controlled conditions, run a model, state where it works.

Data flow: SWEEP.toml -> simulator.io.writer.write_dataset (OUT/dataset, reused or resumed when present) ->
eval.evaluate (model on every image, per-image metrics) -> per-image rows with their sweep point's factor
values -> eval.robustness (rows, binomial, ranges, tables, designs: pass probabilities with Clopper-Pearson
intervals, operating ranges, curves, mPC/rPC, pass maps, sensitivity) -> robustness.json, per_image.csv, report.html.

Per-image measurands: ``D50_rel_err`` (median ECD of the counted predicted particles / that of the counted
true particles - 1), ``F1``, ``PQ``, ``DSC``, ``AP50`` and the counts behind them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from eval.evaluate import EvaluateConfig, labelled_images, per_image_csv, provenance, run_model, score
from eval.jsonable import to_jsonable
from eval.robustness.rows import RangeCriterion, ResultRow
from simulator.io.errors import UserError
from simulator.io.outputs import ROBUSTNESS, check_output_folder, write_marker

HIGHER_IS_BETTER = ("F1", "PQ", "DSC", "AP50", "D50_score")
ERROR_MEASURANDS = ("D50_rel_err",)  # per-image errors (image_measurands) that a pass/fail criterion can bound


@dataclass(frozen=True, slots=True, kw_only=True)
class RobustnessConfig:
    criterion: RangeCriterion = field(default_factory=lambda: RangeCriterion(measurand="D50_rel_err", tau=0.1,
                                                                              alpha=0.2, confidence=0.95))
    robustness_metric: str = "F1"  # higher-is-better metric of the mPC / rPC table
    evaluate: EvaluateConfig = field(default_factory=lambda: EvaluateConfig(n_resamples=100))
    seed: int = 0  # dataset seed
    workers: int = 1

    def __post_init__(self):
        if self.criterion.measurand not in ERROR_MEASURANDS:
            raise UserError("measurand", f"{self.criterion.measurand!r} is not a per-image error",
                            f"one of {', '.join(ERROR_MEASURANDS)} (an image passes when |error| <= tau)")
        if self.robustness_metric not in HIGHER_IS_BETTER:
            raise ValueError(f"robustness_metric must be one of {HIGHER_IS_BETTER}, got {self.robustness_metric!r}")


def image_measurands(row: dict) -> dict[str, float]:
    """Per-image metrics used for pass/fail and curves."""
    tp, fp, fn = row["tp"], row["fp"], row["fn"]
    d_true, d_pred = row.get("D50_true_nm"), row.get("D50_pred_nm")
    d50 = (d_pred / d_true - 1.0) if d_true and d_pred and math.isfinite(d_true) and math.isfinite(d_pred) \
        else float("nan")
    return {
        "D50_rel_err": d50,
        "D50_score": 1.0 - abs(d50) if math.isfinite(d50) else 0.0,
        "F1": 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else float("nan"),
        "PQ": row["PQ"], "DSC": row["DSC"], "AP50": row["AP50"],
        "tp": tp, "fp": fp, "fn": fn, "splits": row["splits"], "merges": row["merges"],
    }


def sweep_rows(predicted, per_image: list[dict]) -> list[ResultRow]:
    rows = []
    for p, row in zip(predicted, per_image, strict=True):
        point = p.labelled.info.get("sweep_point")
        if point is None:
            raise ValueError(f"{p.labelled.info['file_name']}: no sweep_point; robustness needs a sweep dataset")
        rows.append(ResultRow(point["point_id"], point["replicate"], dict(point["factors"]), image_measurands(row)))
    return rows


def simulate_sweep(cfg, sweep, dataset_dir: Path, *, seed: int, workers: int,
                   on_image: Callable[[], None] | None = None) -> dict:
    """Simulate the sweep into ``dataset_dir``; an existing folder of the same plan is reused (or finished)."""
    from simulator.io.writer import write_dataset

    return write_dataset(dataset_dir, cfg, seed=seed, workers=workers, sweep=sweep,
                         resume=(dataset_dir / "run.json").exists(), on_image=on_image)


def analyse(rows: list[ResultRow], mode: str, cfg: RobustnessConfig, log_scale=()) -> dict:
    """Every statistic of the report, as dataclasses (eval.robustness) keyed by name."""
    from eval.robustness.designs import given_data_indices
    from eval.robustness.ranges import marginal_passes, operating_ranges, pass_maps
    from eval.robustness.rows import numeric_factors, with_metric
    from eval.robustness.tables import binned_metric_curves, metric_curves, robustness_table

    crit = cfg.criterion
    out: dict = {"mode": mode}
    metrics = (crit.measurand, "F1", "PQ", "DSC")
    if mode in ("oat", "grid"):
        factors = [f for f in numeric_factors(rows) if len({r.factors[f] for r in rows}) > 1]
        out["ranges"] = operating_ranges(rows, crit, factors=factors)
        out["curves"] = {m: metric_curves(rows, m, factors=factors) for m in metrics}
        out["robustness"] = robustness_table(rows, cfg.robustness_metric, factors=factors)
    else:
        factors = numeric_factors(rows)
        out["marginals"] = marginal_passes(rows, crit, factors=factors, log_scale=log_scale)
        out["maps"] = pass_maps(rows, crit, factors=factors, log_scale=log_scale)
        out["binned_curves"] = {m: binned_metric_curves(rows, m, log_scale=log_scale) for m in metrics}
        abs_rows = with_metric(rows, f"abs_{crit.measurand}", lambda m: abs(m[crit.measurand]))
        out["sensitivity"], out["sensitivity_skipped"] = [], []
        for metric_rows, metric in ((abs_rows, f"abs_{crit.measurand}"), (rows, "F1")):
            try:
                out["sensitivity"].append(given_data_indices(metric_rows, metric, log_scale=log_scale,
                                                               rng=np.random.default_rng(cfg.seed)))
            except ValueError as err:  # too few samples for the estimator: say so in the report
                out["sensitivity_skipped"].append(f"{metric}: {err}")
    out["factors"] = factors
    return out


def point_metrics(predicted, cfg: EvaluateConfig) -> list[dict]:
    """Dataset metrics with bootstrap intervals for each sweep point (its images pooled)."""
    by_point: dict[int, list] = {}
    for p in predicted:
        by_point.setdefault(p.labelled.info["sweep_point"]["point_id"], []).append(p)
    out = []
    for pid in sorted(by_point):
        group = by_point[pid]
        result = score(group, cfg)
        out.append({"point_id": pid, "factors": group[0].labelled.info["sweep_point"]["factors"],
                    "n_images": len(group),
                    "metrics": {k: result["metrics"][k] for k in ("AP50", "PQ", "DSC", "F1", "D50_rel_err")}})
    return out


def robustness(sweep_toml: str | Path, model, out_dir: str | Path, cfg: RobustnessConfig = RobustnessConfig(), *,
               dataset_dir: str | Path | None = None,
               on_stage: Callable[[str, int], Callable[[], None]] | None = None,
               validation: dict | None = None) -> dict:
    """Simulate (or reuse) the sweep, run the model, write robustness.json, per_image.csv and report.html.

    dataset_dir: where the sweep's images are (simulated there unless complete; default OUT/dataset), so that
        several models can be tested on the same images.
    on_stage(name, total) -> per-item callback: progress for "simulate" and "segment".
    validation: what the bench was validated against (``eval.validate.validate.validation_record``), recorded
        as is; None records that it was not validated.
    """
    from simulator.io.files import atomic_write_bytes
    from simulator.sweep import expand, load_run_config

    sweep_toml, out_dir = Path(sweep_toml), Path(out_dir)
    sim_cfg, sweep = load_run_config(sweep_toml)
    if sweep is None:
        raise ValueError(f"{sweep_toml}: no [sweep] section; robustness needs a sweep (docs/scaling.md)")
    n_images = len(expand(sweep, sim_cfg)) * sweep.images_per_point
    dataset_dir = out_dir / "dataset" if dataset_dir is None else Path(dataset_dir)
    # before simulating: OUT may only hold an earlier robustness output (its dataset/ is reused, not deleted)
    check_output_folder(out_dir, ROBUSTNESS, overwrite=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_marker(out_dir, ROBUSTNESS, "robustness")
    timing = {}
    start = time.perf_counter()
    progress = on_stage("simulate", n_images) if on_stage else None
    simulate_sweep(sim_cfg, sweep, dataset_dir, seed=cfg.seed, workers=cfg.workers, on_image=progress)
    timing["simulate_s"] = time.perf_counter() - start
    start = time.perf_counter()
    progress = on_stage("segment", n_images) if on_stage else None
    predicted = run_model(model, labelled_images(dataset_dir, cfg.evaluate), progress)
    timing["segment_s"] = time.perf_counter() - start
    start = time.perf_counter()
    overall = score(predicted, cfg.evaluate)
    rows = sweep_rows(predicted, overall["images"])
    stats = analyse(rows, sweep.mode, cfg, log_scale=sweep.log_scale)
    points = point_metrics(predicted, cfg.evaluate)
    timing["metrics_s"] = time.perf_counter() - start
    result = {
        "sweep": {"file": str(sweep_toml), "mode": sweep.mode, "factors": sweep.factors,
                  "images_per_point": sweep.images_per_point, "n_images": n_images},
        "criterion": asdict(cfg.criterion),
        "robustness_metric": cfg.robustness_metric,
        "overall": overall["metrics"],
        "points": points,
        "statistics": to_jsonable(stats),
        "timing": timing,
        "provenance": provenance(dataset_dir, model, cfg.evaluate),
        "validation": validation,
    }
    result["provenance"]["sweep_toml"] = sweep_toml.read_text()
    start = time.perf_counter()
    from eval.report.report import robustness_report

    html = robustness_report(result, stats, predicted, overall, cfg)
    result["timing"]["report_s"] = time.perf_counter() - start
    atomic_write_bytes(out_dir / "report.html", html.encode())
    per_image = [{**row, **{f"factor:{k}": v for k, v in r.factors.items()}, "point_id": r.point_id,
                  "replicate": r.replicate, **{k: v for k, v in r.metrics.items() if k not in row}}
                 for row, r in zip(overall["images"], rows, strict=True)]
    atomic_write_bytes(out_dir / "per_image.csv", per_image_csv(per_image).encode())
    atomic_write_bytes(out_dir / "robustness.json",
                       (json.dumps(to_jsonable(result), indent=1, allow_nan=False) + "\n").encode())
    return result
