"""``cli.py validate``: does the bench (a simulator config) predict how a model fails on real images?

Data flow: inputs checked (``check_inputs``: every file problem found before any expensive work) -> synthetic
images simulated from the config into OUT/synthetic (or a given simulated dataset) -> the model on the real and
the synthetic images (``eval.evaluate.run_model``), the measured particle class counted
(``eval.evaluate.labelled_images``) -> ``compare.compare_records``: values, differences with a two-sample
bootstrap over images, verdicts -> along a sweep (optional, ``eval.validate.sweep``): the real images degraded
post hoc and the config simulated at each testable level, compared the same way -> validation.json and
validation.html (``eval.validate.report``) in OUT.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from eval.validate.compare import MetricComparison, compare_records, image_records, tolerances
from simulator.classes import CLASSES
from simulator.io.errors import UserError
from simulator.io.outputs import VALIDATION, check_output_folder, write_marker
from simulator.io.reader import read_coco


class InputError(ValueError):
    """Bad input, found before any expensive work; the message reads ``<file>: <what> (expected ...)``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidateConfig:
    measured_class: str = "full"  # the particle class counted; the others are ignore regions
    n_resamples: int = 1000  # two-sample bootstrap resamples over images
    confidence: float = 0.95
    seed: int = 0  # bootstrap and post-hoc noise (not the simulation seed)
    iou_threshold: float = 0.5
    max_occluded_fraction: float = 0.5  # counting rule of datasets without particle classes
    tolerances: Mapping[str, float] = field(default_factory=tolerances)
    n_crops: int = 3  # example crops per error type and side

    def __post_init__(self):
        if self.measured_class not in CLASSES:
            raise InputError(f"--measured-class: {self.measured_class!r} (expected one of {', '.join(CLASSES)})")
        if self.n_resamples < 1:
            raise InputError(f"--n-resamples: {self.n_resamples!r} (expected an integer >= 1)")
        if not 0.5 <= self.confidence < 1.0:
            raise InputError(f"confidence: {self.confidence!r} (expected a number in [0.5, 1))")
        object.__setattr__(self, "tolerances", tolerances(self.tolerances))


@dataclass(frozen=True, slots=True)
class DatasetCheck:
    folder: Path
    n_images: int  # labelled images
    pixel_sizes_nm: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class SyntheticSource:
    """Where the synthetic side comes from: a config to simulate, or a simulated dataset."""

    folder: Path  # the dataset (OUT/synthetic when simulated)
    config: object | None  # SimConfig, when known (simulated here, or read from the dataset's manifest)
    config_file: Path | None
    seed: int
    n_images: int


@dataclass(frozen=True, slots=True)
class Inputs:
    real: DatasetCheck
    synthetic: SyntheticSource
    sweep_file: Path | None
    sweep: object | None  # simulator.sweep.SweepSpec
    out: Path


# ---------------------------------------------------------------------------------------------- checks


def check_dataset(folder: Path, role: str) -> DatasetCheck:
    """A labelled dataset: annotations.json, labelled images whose files exist, pixel sizes > 0."""
    folder = Path(folder)
    layout = "a labelled dataset folder: images/, labels/, annotations.json (cli.py simulate or ingest)"
    if not folder.is_dir():
        raise InputError(f"{folder}: {role} folder not found (expected {layout})")
    path = folder / "annotations.json"
    if not path.is_file():
        raise InputError(f"{path}: missing (expected {layout})")
    try:
        coco = read_coco(folder)
    except UserError as err:
        raise InputError(str(err)) from None
    images = [im for im in coco["images"] if im.get("label_file")]
    if not images:
        raise InputError(f"{path}: no image has a label map (expected {role} images with masks: label_file entries, "
                         "e.g. cli.py ingest of images with masks)")
    sizes = []
    for info in images:
        px = info.get("pixel_size_nm")
        if not isinstance(px, int | float) or isinstance(px, bool) or not (math.isfinite(px) and px > 0):
            raise InputError(f"{path}: image {info.get('file_name')!r} has pixel_size_nm {px!r} (expected a pixel "
                             "size > 0 nm; cli.py ingest --pixel-size-nm sets it for images without metadata)")
        for name in (Path("images") / str(info.get("file_name")), Path(str(info["label_file"]))):
            if not (folder / name).is_file():
                raise InputError(f"{folder / name}: missing (expected the file annotations.json names)")
        sizes.append(float(px))
    return DatasetCheck(folder, len(images), tuple(sizes))


def _check_out(out: Path) -> None:
    """OUT is absent, empty or an earlier validation output (whose synthetic/ datasets are kept and reused), and
    writable; anything else in it is refused, listing the foreign entries, before any simulation or model run."""
    check_output_folder(out, VALIDATION, overwrite=True)


def _synthetic_from_dataset(folder: Path, check: DatasetCheck) -> SyntheticSource:
    """The dataset's own config and seed (semsynth manifest), when it has them: needed to simulate sweep levels."""
    from simulator.config import ConfigError, config_from_dict

    manifest_path = folder / "manifest.json"
    cfg, seed = None, 0
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("generator") == "semsynth" and "config" in manifest and not manifest.get("sweep"):
                cfg = config_from_dict(manifest["config"], source=str(manifest_path))
                seed = int(manifest.get("seed", 0))
        except (json.JSONDecodeError, ConfigError, TypeError, ValueError):
            cfg = None
    return SyntheticSource(folder, cfg, None, seed, check.n_images)


def check_inputs(real: Path, out: Path, *, config: Path | None = None, n: int = 20, seed: int = 0,
                 synthetic: Path | None = None, sweep: Path | None = None) -> Inputs:
    """Every input problem as an ``InputError`` (file, what, expected), before any model or simulation runs."""
    from simulator.config import ConfigError
    from simulator.sweep import load_run_config

    if (config is None) == (synthetic is None):
        raise InputError("--config / --synthetic: " + ("both given" if config else "neither given")
                         + " (expected exactly one: a simulator config to simulate, or a simulated dataset)")
    if n < 1:
        raise InputError(f"--n: {n!r} (expected an integer >= 1)")
    real_check = check_dataset(real, "real")
    if config is not None:
        try:
            cfg, inner_sweep = load_run_config(config)
        except ConfigError as err:
            raise InputError(str(err)) from None
        if inner_sweep is not None:
            raise InputError(f"{config}: has a [sweep] section (expected a plain simulator config; pass the sweep as "
                             "--sweep)")
        if not cfg.output.label_maps:
            raise InputError(f"{config}: output.label_maps = false (expected label maps: validation needs the truth)")
        source = SyntheticSource(Path(out) / "synthetic", cfg, Path(config), seed, n)
    else:
        source = _synthetic_from_dataset(Path(synthetic), check_dataset(synthetic, "synthetic"))
    spec = None
    if sweep is not None:
        try:
            _, spec = load_run_config(sweep)
        except ConfigError as err:
            raise InputError(str(err)) from None
        if spec is None:
            raise InputError(f"{sweep}: no [sweep] section (expected a sweep file such as "
                             "configs/sweeps/robustness.toml)")
        if spec.mode != "oat":
            raise InputError(f"{sweep}: sweep mode {spec.mode!r} (expected \"oat\": one factor at a time)")
        if source.config is None:
            raise InputError(f"{synthetic}/manifest.json: no simulator config recorded (expected a plain dataset "
                             "written by cli.py simulate, or pass --config, to simulate the sweep levels)")
    _check_out(Path(out))
    return Inputs(real_check, source, Path(sweep) if sweep else None, spec, Path(out))


# ----------------------------------------------------------------------------------------------- running


def counting_rule(folder: Path, cfg: ValidateConfig) -> str:
    """Which particles a dataset's evaluation counts: by class when its annotations carry classes."""
    if any("particle_class" in a for a in read_coco(folder)["annotations"]):
        return f"particle_class == {cfg.measured_class!r}, not cut by the border"
    return f"no particle classes: not cut by the border, occluded_fraction <= {cfg.max_occluded_fraction:g}"


def labelled(folder: Path, cfg: ValidateConfig) -> list:
    """Every labelled image of a dataset (``eval.evaluate.LabelledImage``), the measured class counted."""
    from eval.evaluate import EvaluateConfig, labelled_images

    return list(labelled_images(folder, EvaluateConfig(measured_class=cfg.measured_class,
                                                       max_occluded_fraction=cfg.max_occluded_fraction)))


def simulate(source: SyntheticSource, folder: Path, sim_cfg, on_image: Callable[[], None] | None = None) -> None:
    """Simulate ``source.n_images`` images of ``sim_cfg`` into ``folder``; a complete folder of the same plan is
    reused, an interrupted one finished."""
    from simulator.io.writer import write_dataset

    write_dataset(folder, sim_cfg, n_images=source.n_images, seed=source.seed,
                  resume=(folder / "run.json").exists(), on_image=on_image)


def samples_of(predicted) -> list:
    from eval.metrics.matching import ImageSample

    return [ImageSample(p.labelled.true_ids, p.pred_ids, float(p.labelled.info["pixel_size_nm"]), p.scores,
                        p.labelled.ignore_ids) for p in predicted]


@dataclass(frozen=True, slots=True, eq=False)
class Side:
    """One side of a comparison: predictions and their per-image records."""

    predicted: list
    records: list

    def rows(self) -> list[dict]:
        """One row per image: its file, counts, PQ and Dice (``ImageMatch.row``)."""
        return [{"file_name": p.labelled.info["file_name"], **r.match.row()}
                for p, r in zip(self.predicted, self.records, strict=True)]

    def counts(self) -> dict[str, int]:
        m = [r.match for r in self.records]
        return {"images": len(m), "n_true": sum(x.n_true for x in m), "n_pred": sum(x.n_pred for x in m),
                "n_true_ignored": sum(x.n_true_ignored for x in m), "tp": sum(x.tp for x in m),
                "splits": sum(x.splits for x in m), "merges": sum(x.merges for x in m)}


def score_side(model, items, cfg: ValidateConfig, on_image=None) -> Side:
    from eval.evaluate import run_model
    from eval.metrics.matching import MatchConfig

    predicted = run_model(model, items, on_image)
    return Side(predicted, image_records(samples_of(predicted), MatchConfig(iou_threshold=cfg.iou_threshold)))


def comparisons_json(rows: list[MetricComparison]) -> dict:
    return {row.metric: row.as_dict() for row in rows}


def overall_verdict(rows: list[MetricComparison]) -> dict[str, list[str]]:
    out = {"agrees": [], "disagrees": [], "undefined": []}
    for row in rows:
        out[row.verdict].append(row.metric)
    return out


def run_sweep(inputs: Inputs, model, real_items: list, nominal: dict, cfg: ValidateConfig,
              on_stage: Callable[[str, int], Callable[[], None]] | None) -> tuple[dict, dict]:
    """Every testable level: real images degraded, config simulated, compared. Returns (JSON, sides for plots)."""
    from eval.validate.sweep import POST_HOC, degrade_labelled, level_config, plan_sweep

    source = inputs.synthetic
    plan = plan_sweep(inputs.sweep, source.config, inputs.real.pixel_sizes_nm)
    levels_json, sides = [], {}
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 20]))
    for level in plan.levels:
        entry = {"factor": level.factor, "level": level.level, "nominal": level.nominal, "testable": level.testable,
                 "reason": level.reason, "note": level.note}
        if not level.testable:
            levels_json.append(entry)
            continue
        folder = inputs.out / "synthetic-sweep" / level.name
        tick = on_stage(f"simulate {level.name}", source.n_images) if on_stage else None
        simulate(source, folder, level_config(source.config, level), tick)
        image_rngs = rng.spawn(len(real_items))
        degraded = [degrade_labelled(item, level, rng=r) for item, r in zip(real_items, image_rngs, strict=True)]
        tick = on_stage(f"segment {level.name}", len(degraded) + source.n_images) if on_stage else None
        real_side = score_side(model, degraded, cfg, tick)
        syn_side = score_side(model, labelled(folder, cfg), cfg, tick)
        tick = on_stage(f"bootstrap {level.name}", 2 * cfg.n_resamples) if on_stage else None
        rows = compare_records(real_side.records, syn_side.records, cfg.tolerances, rng=rng.spawn(1)[0],
                               n_resamples=cfg.n_resamples, confidence=cfg.confidence, on_resample=tick)
        entry.update({"synthetic_dataset": str(folder), "counts": {"real": real_side.counts(),
                                                                  "synthetic": syn_side.counts()},
                      "metrics": comparisons_json(rows), "verdict": overall_verdict(rows)})
        levels_json.append(entry)
        sides[level.name] = (real_side, syn_side)
    result = {"file": str(inputs.sweep_file), "factors": {k: list(v) for k, v in inputs.sweep.factors.items()},
              "post_hoc_factors": {k: POST_HOC[k] for k in inputs.sweep.factors if k in POST_HOC},
              "synthetic_only": list(plan.synthetic_only), "nominal": nominal, "levels": levels_json,
              "sweep_toml": inputs.sweep_file.read_text()}
    return result, sides


def validate(inputs: Inputs, model, cfg: ValidateConfig = ValidateConfig(), *,
             on_stage: Callable[[str, int], Callable[[], None]] | None = None) -> dict:
    """Run the whole comparison and write OUT/validation.json and OUT/validation.html; returns the JSON dict."""
    from eval.evaluate import provenance
    from eval.jsonable import to_jsonable
    from eval.validate.report import validation_html
    from simulator.config import config_to_dict
    from simulator.io.files import atomic_write_all, package_versions

    _check_out(inputs.out)  # again: the folder may have changed since check_inputs
    inputs.out.mkdir(parents=True, exist_ok=True)
    write_marker(inputs.out, VALIDATION, "validate")
    timing, start = {}, time.perf_counter()
    source = inputs.synthetic
    if source.config_file is not None:
        tick = on_stage("simulate", source.n_images) if on_stage else None
        simulate(source, source.folder, source.config, tick)
    timing["simulate_s"] = time.perf_counter() - start
    start = time.perf_counter()
    real_items = labelled(inputs.real.folder, cfg)
    syn_items = labelled(source.folder, cfg)
    tick = on_stage("segment", len(real_items) + len(syn_items)) if on_stage else None
    real_side = score_side(model, real_items, cfg, tick)
    syn_side = score_side(model, syn_items, cfg, tick)
    timing["segment_s"] = time.perf_counter() - start
    start = time.perf_counter()
    tick = on_stage("bootstrap", 2 * cfg.n_resamples) if on_stage else None
    rows = compare_records(real_side.records, syn_side.records, cfg.tolerances,
                           rng=np.random.default_rng(cfg.seed), n_resamples=cfg.n_resamples,
                           confidence=cfg.confidence, on_resample=tick)
    timing["bootstrap_s"] = time.perf_counter() - start
    from eval.evaluate import EvaluateConfig

    eval_cfg = EvaluateConfig(max_occluded_fraction=cfg.max_occluded_fraction, iou_threshold=cfg.iou_threshold,
                              n_resamples=cfg.n_resamples, confidence=cfg.confidence, seed=cfg.seed)
    result = {
        "verdict": overall_verdict(rows),
        "measured_class": cfg.measured_class,
        "tolerances": dict(cfg.tolerances),
        "metrics": comparisons_json(rows),
        "real": {"dataset": str(inputs.real.folder.resolve()), "counts": real_side.counts(),
                 "pixel_size_nm": sorted(set(inputs.real.pixel_sizes_nm)), "images": real_side.rows(),
                 "counting": counting_rule(inputs.real.folder, cfg)},
        "synthetic": {"dataset": str(source.folder.resolve()), "counts": syn_side.counts(),
                      "counting": counting_rule(source.folder, cfg),
                      "images": syn_side.rows(),
                      "config_file": str(source.config_file) if source.config_file else None,
                      "simulated_here": source.config_file is not None, "seed": source.seed,
                      "config": config_to_dict(source.config) if source.config is not None else None},
        "model": {"spec": model.spec, **model.describe()},
        "settings": {k: v for k, v in asdict(cfg).items() if k != "tolerances"},
        "sweep": None,
        "timing": timing,
    }
    sweep_sides = {}
    if inputs.sweep is not None:
        start = time.perf_counter()
        nominal = {"metrics": result["metrics"], "verdict": result["verdict"]}
        result["sweep"], sweep_sides = run_sweep(inputs, model, real_items, nominal, cfg, on_stage)
        timing["sweep_s"] = time.perf_counter() - start
    result["provenance"] = {"real": provenance(inputs.real.folder, model, eval_cfg),
                            "synthetic": provenance(source.folder, model, eval_cfg),
                            "packages": package_versions()}
    for side in ("real", "synthetic"):
        result["provenance"][side].pop("packages", None)
        result["provenance"][side].pop("evaluate_config", None)
    start = time.perf_counter()
    page = validation_html(result, real_side, syn_side, sweep_sides, cfg)
    timing["report_s"] = time.perf_counter() - start
    atomic_write_all(inputs.out, {  # both or neither; validation.json last: its presence means a complete result
        "validation.html": page.encode(),
        "validation.json": (json.dumps(to_jsonable(result), indent=1, allow_nan=False) + "\n").encode()})
    return result


# ------------------------------------------------------------------------------- for robustness reports


def _differences(a: Mapping, b: Mapping, prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for key in keys:
        va, vb = a.get(key), b.get(key)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}")
    return out


def validation_record(path: Path, *, model_spec: str | None = None, sweep_config=None) -> dict:
    """What a robustness result records of the validation of its bench: the file and its hash, what was compared
    (real dataset, synthetic config, model, measured class), the verdict per metric (and per sweep level), and
    whether the validated model and config are the ones tested (``sweep_config``: the sweep's nominal SimConfig)."""
    import hashlib

    from simulator.config import config_to_dict

    path = Path(path)
    try:
        data = json.loads(path.read_text())
        metrics, verdict = data["metrics"], data["verdict"]
        real, synthetic, model = data["real"], data["synthetic"], data["model"]
    except FileNotFoundError:
        raise InputError(f"{path}: not found (expected validation.json written by cli.py validate)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise InputError(f"{path}: not a validation result ({err}) (expected validation.json written by "
                         "cli.py validate)") from None
    record = {
        "file": str(path.resolve()),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "measured_class": data.get("measured_class"),
        "real_dataset": real.get("dataset"), "real_counts": real.get("counts"),
        "synthetic_dataset": synthetic.get("dataset"), "synthetic_config_file": synthetic.get("config_file"),
        "synthetic_seed": synthetic.get("seed"),
        "model": model.get("spec"),
        "verdict": verdict,
        "metrics": {name: {"difference": m["difference"], "tolerance": m["tolerance"], "verdict": m["verdict"],
                           "interval": m["interval"]} for name, m in metrics.items()},
        "sweep": None,
    }
    if data.get("sweep"):
        record["sweep"] = {"file": data["sweep"]["file"], "synthetic_only": data["sweep"]["synthetic_only"],
                           "levels": [{"factor": lv["factor"], "level": lv["level"], "testable": lv["testable"],
                                       **({"verdict": lv["verdict"]} if lv["testable"] else {"reason": lv["reason"]})}
                                      for lv in data["sweep"]["levels"]]}
    if model_spec is not None:
        record["same_model"] = model.get("spec") == model_spec
    if sweep_config is not None:  # None: the validation's synthetic side recorded no config to compare
        record["config_differences"] = (None if synthetic.get("config") is None
                                        else _differences(synthetic["config"], config_to_dict(sweep_config)))
    return record
