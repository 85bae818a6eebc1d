"""cli.py validate (eval.validate): the two-sample bootstrap, verdicts, the sweep plan, error examples,
the command on constructed and simulated datasets, and its input errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from eval.metrics.bootstrap import Interval
from eval.metrics.matching import ImageSample, match_image
from eval.validate.compare import (
    VALIDATED_METRICS,
    interval_status,
    parse_tolerances,
    tolerances,
    two_sample_bootstrap,
    verdict,
)
from eval.validate.degrade import blur_to_probe_sigma
from eval.validate.report import error_examples
from eval.validate.sweep import plan_sweep
from simulator.config import config_from_dict
from simulator.sweep import SweepSpec

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ constructed data


def disk_dataset(folder: Path, *, seed: int, n_images: int = 6, shape=(160, 160), pixel_size_nm: float = 5.0,
                 n_disks: int = 14, blur_nm: float = 0.0, classes: bool = False) -> Path:
    """A labelled dataset of bright disks (radius 5-9 px) on a dark noisy background, some touching, in the
    layout of cli.py simulate / ingest; ``blur_nm`` blurs the images (labels unchanged)."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    images, annotations = [], []
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for index in range(n_images):
        labels = np.zeros(shape, np.int32)
        for ident in range(1, n_disks + 1):
            cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(5, 9)
            labels[((yy - cy) ** 2 + (xx - cx) ** 2 < r**2) & (labels == 0)] = ident
        image = np.where(labels > 0, 0.7, 0.2) + rng.normal(0, 0.03, shape)
        image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 1.0)
        if blur_nm:
            image = blur_to_probe_sigma(image, labels, pixel_size_nm, level_nm=blur_nm, nominal_nm=0.0).image
        name = f"{index:06d}.png"
        cv2.imwrite(str(folder / "images" / name), np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8))
        cv2.imwrite(str(folder / "labels" / name), labels.astype(np.uint16))
        images.append({"id": index + 1, "file_name": name, "label_file": f"labels/{name}", "width": shape[1],
                       "height": shape[0], "pixel_size_nm": pixel_size_nm})
        for ident in np.unique(labels)[1:]:
            ys, xs = np.nonzero(labels == ident)
            border = bool(ys.min() == 0 or xs.min() == 0 or ys.max() == shape[0] - 1 or xs.max() == shape[1] - 1)
            ann = {"id": len(annotations) + 1, "image_id": index + 1, "instance_id": int(ident),
                   "touches_border": border, "occluded_fraction": 0.0}
            if classes:
                ann["particle_class"] = "full" if ident % 3 else "fragment"
            annotations.append(ann)
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "particle"}]}
    (folder / "annotations.json").write_text(json.dumps(coco))
    return folder


# ------------------------------------------------------------------------------------- bootstrap, verdicts


def test_two_sample_bootstrap_interval_covers_the_difference_of_means():
    rng = np.random.default_rng(0)
    real, synthetic = list(rng.normal(1.0, 1.0, 60)), list(rng.normal(0.5, 1.0, 80))

    def mean(values):
        return {"mean": float(np.mean(values))}

    out = two_sample_bootstrap(real, synthetic, mean, rng=np.random.default_rng(1), n_resamples=2000)["mean"]
    assert out.difference.value == pytest.approx(np.mean(real) - np.mean(synthetic))
    se = np.sqrt(np.var(real) / 60 + np.var(synthetic) / 80)
    assert out.difference.ci_high - out.difference.ci_low == pytest.approx(2 * 1.96 * se, rel=0.12)
    assert out.real.ci_low < np.mean(real) < out.real.ci_high
    same = two_sample_bootstrap(real, real, mean, rng=np.random.default_rng(1), n_resamples=200)["mean"]
    assert same.difference.value == 0.0 and same.difference.ci_low < 0 < same.difference.ci_high


def test_verdicts_and_intervals_against_the_tolerance():
    assert verdict(0.04, 0.05) == "agrees" and verdict(-0.06, 0.05) == "disagrees"
    assert verdict(float("nan"), 0.05) == "undefined"
    assert interval_status(Interval(0.0, -0.02, 0.03), 0.05) == "inside"
    assert interval_status(Interval(0.1, 0.07, 0.12), 0.05) == "outside"
    assert interval_status(Interval(0.03, -0.01, 0.08), 0.05) == "straddles"
    tols = tolerances()
    assert set(tols) == set(VALIDATED_METRICS)
    assert tols["split_rate"] == 0.03 and tols["F1"] == 0.05 and tols["AP50"] == 0.05
    assert parse_tolerances(["F1=0.02"])["F1"] == 0.02
    with pytest.raises(ValueError, match="unknown metric"):
        parse_tolerances(["PQ=0.1"])
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_tolerances(["F1"])


# ---------------------------------------------------------------------------------------------- the sweep


def test_sweep_plan_marks_what_real_images_allow():
    cfg = config_from_dict({"probe": {"sigma_nm": 3.0}, "detector": {"probe_current_pA": 100.0},
                            "image": {"pixel_size_nm": 5.0}})
    spec = SweepSpec("oat", {"probe.sigma_nm": [2.0, 3.0, 8.0], "detector.probe_current_pA": [20.0, 400.0],
                             "image.pixel_size_nm": [4.0, 10.0], "charging.strength": [0.5]})
    plan = plan_sweep(spec, cfg, real_pixel_sizes_nm=[5.0, 5.0])
    testable = {(lv.factor, lv.level) for lv in plan.testable}
    assert testable == {("probe.sigma_nm", 8.0), ("detector.probe_current_pA", 20.0), ("image.pixel_size_nm", 10.0)}
    assert {(lv.factor, lv.level) for lv in plan.levels} - testable == {
        ("probe.sigma_nm", 2.0), ("detector.probe_current_pA", 400.0), ("image.pixel_size_nm", 4.0)}
    assert all("not testable on real images" in lv.reason for lv in plan.levels if not lv.testable)
    assert plan.synthetic_only == ("charging.strength",)
    with pytest.raises(ValueError, match="oat"):
        plan_sweep(SweepSpec("grid", {"probe.sigma_nm": [8.0]}), cfg, [5.0])


# ------------------------------------------------------------------------------------------ error examples


def test_error_examples_count_the_matchers_splits_and_merges():
    true_ids = np.zeros((40, 60), np.int32)
    true_ids[5:25, 5:25] = 1  # split in two below
    true_ids[5:25, 30:40] = 2  # 2 and 3 merged below
    true_ids[5:25, 41:51] = 3
    true_ids[30:38, 5:13] = 4  # missed
    pred = np.zeros_like(true_ids)
    pred[5:25, 5:15], pred[5:25, 15:25] = 1, 2
    pred[5:25, 30:51] = 3
    pred[30:38, 40:50] = 4  # false detection
    sample = ImageSample(true_ids, pred, 5.0)
    match = match_image(sample)
    found = error_examples(sample, match, 0)
    kinds = [e.kind for e in found]
    assert kinds.count("split") == match.splits == 1 and kinds.count("merge") == match.merges == 1
    assert {(e.kind, e.true_id, e.pred_id) for e in found if e.kind in ("miss", "false")} >= {("miss", 4, 0),
                                                                                            ("false", 0, 4)}


# ------------------------------------------------------------------------------------------------ the CLI


def run_validate(*args: str):
    return runner.invoke(app, ["validate", "--model", "watershed", "--n-resamples", "200", *map(str, args)])


def test_validate_agrees_on_two_draws_and_flags_a_blurred_copy(tmp_path):
    real = disk_dataset(tmp_path / "real", seed=1)
    synthetic = disk_dataset(tmp_path / "synthetic", seed=2)
    blurred = disk_dataset(tmp_path / "blurred", seed=1, blur_nm=20.0)
    same = run_validate("--real", real, "--synthetic", synthetic, "--out", tmp_path / "same")
    assert same.exit_code == 0, same.output
    result = json.loads((tmp_path / "same" / "validation.json").read_text())
    assert set(result["metrics"]) == set(VALIDATED_METRICS)
    assert {"verdict", "measured_class", "tolerances", "metrics", "real", "synthetic", "model", "settings",
            "sweep", "timing", "provenance"} <= set(result)
    assert result["verdict"]["disagrees"] == [], same.output
    assert "agrees on 10 of 10 metrics" in same.output
    moved = run_validate("--real", blurred, "--synthetic", synthetic, "--out", tmp_path / "moved")
    assert moved.exit_code == 0, moved.output
    flagged = json.loads((tmp_path / "moved" / "validation.json").read_text())
    # every metric whose real value moved by more than twice its tolerance is flagged
    moved_metrics = {name for name, m in flagged["metrics"].items()
                     if abs(m["real"]["value"] - result["metrics"][name]["real"]["value"]) > 2 * m["tolerance"]}
    assert moved_metrics and moved_metrics <= set(flagged["verdict"]["disagrees"])
    assert "F1" in flagged["verdict"]["disagrees"]
    page = (tmp_path / "moved" / "validation.html").read_text()
    assert "data:image/jpeg;base64" in page and "real - synthetic" in page  # crops of the disagreeing errors


def test_validate_counts_the_measured_class(tmp_path):
    real = disk_dataset(tmp_path / "real", seed=1, classes=True, n_images=3)
    synthetic = disk_dataset(tmp_path / "synthetic", seed=2, n_images=3)
    out = run_validate("--real", real, "--synthetic", synthetic, "--out", tmp_path / "out")
    assert out.exit_code == 0, out.output
    result = json.loads((tmp_path / "out" / "validation.json").read_text())
    anns = json.loads((real / "annotations.json").read_text())["annotations"]
    full = sum(1 for a in anns if a["particle_class"] == "full" and not a["touches_border"])
    assert result["real"]["counts"]["n_true"] == full
    assert result["real"]["counting"] != result["synthetic"]["counting"]
    assert "warning: the sides count different particles" in out.output


def test_validate_output_folder_is_marked_replaced_and_atomic(tmp_path, monkeypatch):
    """OUT carries the validation marker; a rerun replaces its own result; a failure while writing the result
    (here: its JSON, after the page is made) leaves the earlier result byte for byte, and no temporary file."""
    import eval.jsonable
    from simulator.io.outputs import MARKER

    real = disk_dataset(tmp_path / "real", seed=1, n_images=2)
    synthetic = disk_dataset(tmp_path / "synthetic", seed=2, n_images=2)
    out = tmp_path / "out"
    assert run_validate("--real", real, "--synthetic", synthetic, "--out", out).exit_code == 0
    assert json.loads((out / MARKER).read_text())["kind"] == "validation"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == sorted([MARKER, "validation.html", "validation.json"])
    assert run_validate("--real", real, "--synthetic", synthetic, "--out", out).exit_code == 0

    def broken(*args, **kwargs):
        raise RuntimeError("JSON failed")

    monkeypatch.setattr(eval.jsonable, "to_jsonable", broken)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert run_validate("--real", real, "--synthetic", synthetic, "--out", out).exit_code == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_robustness_records_the_validation(tmp_path):
    from eval.validate.validate import validation_record

    real = disk_dataset(tmp_path / "real", seed=1, n_images=2)
    synthetic = disk_dataset(tmp_path / "synthetic", seed=2, n_images=2)
    assert run_validate("--real", real, "--synthetic", synthetic, "--out", tmp_path / "v").exit_code == 0
    record = validation_record(tmp_path / "v" / "validation.json", model_spec="unet:other.pt")
    assert record["same_model"] is False and record["model"] == "watershed"
    assert set(record["metrics"]) == set(VALIDATED_METRICS)
    assert record["real_dataset"] == str(real.resolve())


@pytest.mark.slow
def test_robustness_cli_records_the_validation_in_its_result_and_report(tmp_path):
    real = disk_dataset(tmp_path / "real", seed=1, n_images=2)
    synthetic = disk_dataset(tmp_path / "synthetic", seed=2, n_images=2)
    assert run_validate("--real", real, "--synthetic", synthetic, "--out", tmp_path / "v").exit_code == 0
    sweep = tmp_path / "sweep.toml"
    sweep.write_text('[image]\nwidth_px = 96\nheight_px = 96\n[sweep]\nmode = "oat"\nimages_per_point = 1\n'
                     '[sweep.factors]\n"probe.sigma_nm" = [8.0]\n')
    result = runner.invoke(app, ["robustness", str(sweep), "--model", "watershed", "--out", str(tmp_path / "rob"),
                                 "--validation", str(tmp_path / "v" / "validation.json")])
    assert result.exit_code == 0, result.output
    assert "bench validated against" in result.output
    recorded = json.loads((tmp_path / "rob" / "robustness.json").read_text())["validation"]
    assert recorded["model"] == "watershed" and recorded["same_model"] is True
    assert recorded["config_differences"] is None  # the validated synthetic set records no config
    assert "Bench validation" in (tmp_path / "rob" / "report.html").read_text()
    bad = runner.invoke(app, ["robustness", str(sweep), "--model", "watershed", "--out", str(tmp_path / "rob2"),
                              "--validation", str(tmp_path / "nothing.json")])
    assert bad.exit_code == 2 and "nothing.json: not found" in bad.output


def test_bad_inputs_give_the_error_format(tmp_path):
    real = disk_dataset(tmp_path / "real", seed=1, n_images=1)
    synthetic = disk_dataset(tmp_path / "synthetic", seed=2, n_images=1)
    nolabels = tmp_path / "nolabels"
    shutil.copytree(real, nolabels)
    coco = json.loads((nolabels / "annotations.json").read_text())
    coco["images"][0]["pixel_size_nm"] = None
    (nolabels / "annotations.json").write_text(json.dumps(coco))
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[image]\nwidth_px = -3\n")
    out_file = tmp_path / "a-file"
    out_file.write_text("")
    cases = [
        (["--real", tmp_path / "missing", "--synthetic", synthetic], "missing: real folder not found"),
        (["--real", nolabels, "--synthetic", synthetic], "has pixel_size_nm None (expected a pixel size > 0 nm"),
        (["--real", real, "--config", bad_toml], "bad.toml: image.width_px"),
        (["--real", real, "--config", ROOT / "configs/default.toml", "--synthetic", synthetic], "both given"),
        (["--real", real, "--synthetic", synthetic, "--tolerance", "F1"], "expected NAME=VALUE"),
        (["--real", real, "--synthetic", synthetic, "--sweep", ROOT / "configs/default.toml"], "no [sweep] section"),
        (["--real", real, "--synthetic", synthetic, "--measured-class", "green"], "expected one of full"),
    ]
    for args, message in cases:
        result = run_validate(*args, "--out", tmp_path / "out")
        assert result.exit_code == 2, (args, result.output)
        assert "error: " in result.output and message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    result = run_validate("--real", real, "--synthetic", synthetic, "--out", out_file / "sub")
    assert result.exit_code == 2 and "which is a file" in result.output, result.output
    result = runner.invoke(app, ["validate", "--model", "unet:/nonexistent.pt", "--real", str(real),
                                 "--synthetic", str(synthetic), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "error: " in result.output


# --------------------------------------------------------------------------------------- simulated, slow

SMALL = """[image]
width_px = 256
height_px = 256
pixel_size_nm = 4.0
[primary]
shape = "sphere"
diameter_gmean_nm = 60.0
diameter_gsd = 1.25
[aggregate]
primaries_median = 1.5
primaries_gsd = 1.6
primaries_max = 4
[field]
primaries_per_um2 = 80.0
density_spread = 0.0
[shading]
residue_rims = 0.0
facets = 0.0
"""


@pytest.mark.slow
def test_validate_on_two_seeds_of_a_config_agrees_and_a_noisier_copy_is_flagged(tmp_path):
    """Real = seed 1 of a small config, synthetic simulated from it at seed 0: every metric agrees. Along a
    sweep, seed 1 degraded post hoc agrees with seed 0 simulated at the level (the degradations are faithful).
    The config sets a number density, not field.coverage: the simulator estimates coverage on a grid of image
    pixels, so in coverage mode a coarser pixel size places fewer particles and the geometry is not shared."""
    config = tmp_path / "small.toml"
    config.write_text(SMALL)
    real = tmp_path / "real"
    assert runner.invoke(app, ["simulate", str(config), "--n", "24", "--seed", "1", "--out", str(real),
                               "--no-preview"]).exit_code == 0
    sweep = tmp_path / "sweep.toml"
    sweep.write_text('[sweep]\nmode = "oat"\n[sweep.factors]\n"probe.sigma_nm" = [2.0, 12.0]\n'
                     '"image.pixel_size_nm" = [8.0]\n"detector.probe_current_pA" = [20.0]\n'
                     '"aggregate.overlap" = [0.25]\n')
    out = run_validate("--real", real, "--config", config, "--n", "24", "--seed", "0", "--sweep", sweep,
                       "--out", tmp_path / "out")
    assert out.exit_code == 0, out.output
    result = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert result["verdict"]["disagrees"] == [], out.output
    levels = {(lv["factor"], lv["level"]): lv for lv in result["sweep"]["levels"]}
    assert not levels[("probe.sigma_nm", 2.0)]["testable"]
    assert result["sweep"]["synthetic_only"] == ["aggregate.overlap"]
    for key in (("probe.sigma_nm", 12.0), ("detector.probe_current_pA", 20.0)):
        for metric in ("F1", "D50_rel_err"):
            assert levels[key]["metrics"][metric]["verdict"] == "agrees", (key, metric, out.output)
    # pixel size: compared, but not asserted to agree (the simulator's shading is discretised on its own pixel
    # grid; see docs/evaluation.md, bench validity, limits)
    assert set(levels[("image.pixel_size_nm", 8.0)]["metrics"]) == set(VALIDATED_METRICS)
    noisy = tmp_path / "noisy"
    shutil.copytree(real, noisy)
    from eval.validate.degrade import NoiseModel, thin_dose
    from simulator.io.files import read_png

    rng = np.random.default_rng(0)
    for path in sorted((noisy / "images").glob("*.png")):
        pixels, _ = read_png(path)  # variance quadrupled: ~ a quarter of the dose, a dose far from nominal
        thinned = thin_dose(pixels, np.zeros(pixels.shape, np.int32), 4.0, level=1.0, nominal=16.0,
                            noise=NoiseModel(offset_var=0.0, gain=0.02, n_bins=0), rng=rng)
        cv2.imwrite(str(path), np.clip(thinned.image * 255 + 0.5, 0, 255).astype(np.uint8))
    flagged = run_validate("--real", noisy, "--synthetic", tmp_path / "out" / "synthetic", "--out",
                           tmp_path / "noisy-out")
    assert flagged.exit_code == 0, flagged.output
    assert json.loads((tmp_path / "noisy-out" / "validation.json").read_text())["verdict"]["disagrees"]
