"""evaluate and robustness end to end: an oracle scores 1, a toy model's known failure threshold is recovered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import small_config

from eval.evaluate import EvaluateConfig, evaluate
from eval.robustness.rows import RangeCriterion
from eval.robustness.run import RobustnessConfig, robustness
from eval.segment.registry import load_model
from simulator.io.writer import write_dataset

ROOT = Path(__file__).resolve().parents[1]

# A toy model: the exact labels (read from the dataset through the image record) while the probe blur is
# below 5 nm, every particle eroded by 2 px above (ECD about 25 % smaller): its failure threshold is known by
# construction.
TOY = '''
import cv2, numpy as np
from pathlib import Path

DATASET = Path({dataset!r})

def _truth(info):
    return cv2.imread(str(DATASET / info["label_file"]), cv2.IMREAD_UNCHANGED).astype(np.int32)

def oracle(image, pixel_size_nm, image_info):
    return _truth(image_info)

def blur_sensitive(image, pixel_size_nm, image_info):
    ids = _truth(image_info)
    if image_info["sweep_point"]["factors"]["probe.sigma_nm"] < 5.0:
        return ids
    k = np.ones((5, 5), np.uint8)
    lo, hi = cv2.erode(ids.astype(np.uint16), k), cv2.dilate(ids.astype(np.uint16), k)
    return np.where(lo == hi, ids, 0)
'''

SWEEP = """
[image]
width_px = 160
height_px = 120
[field]
primaries_per_um2 = 25.0
[probe]
sigma_nm = 5.0
[sweep]
mode = "oat"
images_per_point = 5
[sweep.factors]
"probe.sigma_nm" = [1.0, 3.0, 6.0, 9.0]
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "data"
    write_dataset(out, small_config(), n_images=3, seed=0)
    return out


def test_oracle_scores_one_and_watershed_writes_a_complete_report(dataset, tmp_path):
    plugin = tmp_path / "toy.py"
    plugin.write_text(TOY.format(dataset=str(dataset)))
    oracle = load_model(f"python:{plugin}:oracle")
    result = evaluate(dataset, oracle, tmp_path / "oracle", EvaluateConfig(n_resamples=20))
    m = result["metrics"]
    for key in ("AP", "AP50", "PQ", "DSC", "F1"):
        assert m[key]["value"] == pytest.approx(1.0) and m[key]["ci_low"] == pytest.approx(1.0), key
    assert m["D50_rel_err"]["value"] == 0.0 and m["ECD_bias_nm"]["value"] == 0.0

    out = tmp_path / "ws"
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "evaluate", "--dataset", str(dataset),
                           "--model", "watershed", "--out", str(out), "--resamples", "20"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())  # strict JSON: NaN written as null
    assert 0.0 < metrics["metrics"]["F1"]["value"] < 1.0
    f1 = metrics["metrics"]["F1"]
    assert f1["ci_low"] <= f1["value"] <= f1["ci_high"]
    assert metrics["provenance"]["annotations_sha256"] and metrics["provenance"]["model"]["spec"] == "watershed"
    lines = (out / "per_image.csv").read_text().splitlines()
    assert len(lines) == 1 + 3 and "file_name" in lines[0]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 1 and html.count("data:image/jpeg;base64,") == 3  # PSD, gallery
    assert "watershed" in html and "Provenance" in html


def test_bad_model_spec_and_unlabelled_dataset_give_clear_errors(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "evaluate", "--dataset", str(tmp_path),
                           "--model", "maskrcnn", "--out", str(tmp_path / "o")], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 2 and "maskrcnn" in proc.stderr
    with pytest.raises(FileNotFoundError, match="annotations.json"):
        evaluate(tmp_path, load_model("watershed"), tmp_path / "o")


@pytest.mark.slow
def test_robustness_recovers_a_known_failure_threshold(tmp_path):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(SWEEP)
    out = tmp_path / "rob"
    plugin = tmp_path / "toy.py"
    plugin.write_text(TOY.format(dataset=str(out / "dataset")))
    # With every image passing, 5 images give a 90 % Clopper-Pearson lower bound of 0.05 ** (1 / 5) = 0.55.
    cfg = RobustnessConfig(criterion=RangeCriterion(measurand="D50_rel_err", tau=0.02, alpha=0.5, confidence=0.9),
                           evaluate=EvaluateConfig(n_resamples=10))
    result = robustness(sweep, load_model(f"python:{plugin}:blur_sensitive"), out, cfg)
    r = result["statistics"]["ranges"]["probe.sigma_nm"]
    status = {lv["level"]: lv["count"]["status"] for lv in r["levels"]}
    assert status == {1.0: "in", 3.0: "in", 5.0: "out", 6.0: "out", 9.0: "out"}
    # The nominal level (5 nm, the default) fails, so no range is claimed around it.
    assert r["range_lo"] is None and "No operating range" in r["statement"]
    # Around a passing nominal the same rows give the tested range and the failure bracket.
    from eval.robustness.ranges import operating_range
    from eval.robustness.rows import as_rows

    rows = as_rows(line for line in _csv_rows(out / "per_image.csv"))
    rng = operating_range(rows, cfg.criterion, "probe.sigma_nm", nominal={"probe.sigma_nm": 1.0})
    assert (rng.range_lo, rng.range_hi) == (1.0, 3.0)
    assert rng.upper.kind == "failure" and rng.upper.next_level == 5.0
    assert (out / "report.html").read_text().count("data:image/") >= 4 + 4  # figures and the gallery
    # Reuse: a second run finds the dataset complete and gives the same per-image results.
    again = robustness(sweep, load_model(f"python:{plugin}:blur_sensitive"), out, cfg)
    assert again["statistics"] == result["statistics"] and again["points"] == result["points"]


def _csv_rows(path: Path):
    import csv

    with path.open() as fh:
        for row in csv.DictReader(fh):
            factors = {k.split(":", 1)[1]: float(v) for k, v in row.items() if k.startswith("factor:")}
            yield {"point_id": int(row["point_id"]), "replicate": int(row["replicate"]), "factors": factors,
                   "metrics": {"D50_rel_err": float(row["D50_rel_err"]) if row["D50_rel_err"] else float("nan")}}


def test_report_gallery_marks_a_missed_particle(dataset, tmp_path):
    """The worst-case crop is centred on the error: a deleted particle's contour appears in green only."""
    from eval.evaluate import labelled_images
    from eval.metrics.matching import ImageSample, match_image
    from eval.report.report import error_crop

    item = next(iter(labelled_images(dataset)))
    ids = item.true_ids
    counted = [i for i in np.unique(ids[ids > 0]) if i not in item.ignore_ids]
    victim = counted[0]
    pred = np.where(ids == victim, 0, ids)
    match = match_image(ImageSample(ids, pred, 7.344, None, item.ignore_ids))
    assert match.fn == 1 and match.fp == 0
    crop = error_crop(item.image, ids, pred, match, item.ignore_ids, side_px=64)
    green = (crop[..., 1] == 200) & (crop[..., 0] == 0) & (crop[..., 2] == 0)
    assert green.sum() > 10
    magenta = (crop[..., 0] == 220) & (crop[..., 1] == 0) & (crop[..., 2] == 220)
    assert magenta.sum() > 10  # the particles around it are predicted
    perfect = error_crop(item.image, ids, ids, match_image(ImageSample(ids, ids, 7.344, None, item.ignore_ids)),
                         item.ignore_ids, side_px=64)
    assert ((perfect[..., 1] == 200) & (perfect[..., 0] == 0) & (perfect[..., 2] == 0)).sum() == 0


@pytest.mark.slow
def test_robustness_on_a_space_filling_design_gives_maps_and_sensitivities(tmp_path):
    sweep = tmp_path / "lhs.toml"
    sweep.write_text(SWEEP.replace('mode = "oat"', 'mode = "lhs"\nn_points = 30').replace("images_per_point = 5",
                     "images_per_point = 1").replace('"probe.sigma_nm" = [1.0, 3.0, 6.0, 9.0]',
                                                     '"probe.sigma_nm" = [1.0, 9.0]\n"aggregate.overlap" = [0.0, 0.3]'))
    out = tmp_path / "rob"
    plugin = tmp_path / "toy.py"
    plugin.write_text(TOY.format(dataset=str(out / "dataset")))
    cfg = RobustnessConfig(criterion=RangeCriterion(measurand="D50_rel_err", tau=0.02), evaluate=EvaluateConfig(
        n_resamples=10))
    stats = robustness(sweep, load_model(f"python:{plugin}:blur_sensitive"), out, cfg)["statistics"]
    (pair,) = stats["maps"]
    assert sum(map(sum, pair["n"])) == 30
    # The toy model fails exactly above 5 nm of blur: blur explains the pass/fail, necking does not.
    (by_error, by_f1) = stats["sensitivity"]
    s1 = dict(zip(by_error["factors"], by_error["indices"]["S1"], strict=True))
    assert s1["probe.sigma_nm"] > s1["aggregate.overlap"] + 0.3


def test_report_opens_in_headless_chromium(dataset, tmp_path):
    """Where Chromium and playwright are installed (bench/screenshot_report.py): no page or console error, every
    embedded image decodes."""
    pytest.importorskip("playwright", reason="playwright not installed (pip install playwright)")
    sys.path.insert(0, str(ROOT))
    from bench.screenshot_report import check_report, find_chromium

    if find_chromium() is None:
        pytest.skip("no Chromium (apt-get install chromium)")
    evaluate(dataset, load_model("watershed"), tmp_path / "ev", EvaluateConfig(n_resamples=10))
    assert check_report(tmp_path / "ev" / "report.html", tmp_path / "report.png") == []
    assert (tmp_path / "report.png").stat().st_size > 10_000
