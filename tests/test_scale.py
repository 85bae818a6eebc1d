"""Sweeps, parallel and resumable generation, Dask, and dataset checking."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import digest, small_config

from simulator.config import ConfigError
from simulator.io.check import check_dataset
from simulator.io.writer import write_dataset
from simulator.sweep import expand, load_run_config, parse_sweep

ROOT = Path(__file__).resolve().parents[1]
TINY = """
[image]
width_px = 96
height_px = 64
[field]
primaries_per_um2 = 20.0
"""


def test_sweep_expansion_oat_grid_lhs_sobol():
    nominal = small_config(probe={"sigma_nm": 5.0})
    oat = expand(parse_sweep({"mode": "oat", "factors": {"probe.sigma_nm": [2.0, 5.0, 9.0],
                                                         "aggregate.overlap": [0.0, 0.2]}}), nominal)
    # Nominal first (sigma 5 as set, overlap 0.1 the default), then each factor's levels; 5.0 is not repeated.
    assert [p.factors for p in oat] == [
        {"probe.sigma_nm": 5.0, "aggregate.overlap": 0.1},
        {"probe.sigma_nm": 2.0, "aggregate.overlap": 0.1},
        {"probe.sigma_nm": 9.0, "aggregate.overlap": 0.1},
        {"probe.sigma_nm": 5.0, "aggregate.overlap": 0.0},
        {"probe.sigma_nm": 5.0, "aggregate.overlap": 0.2},
    ]
    assert [p.config.probe.sigma_nm for p in oat] == [5.0, 2.0, 9.0, 5.0, 5.0]
    assert [p.config.aggregate.overlap for p in oat] == [0.1, 0.1, 0.1, 0.0, 0.2]

    grid = expand(parse_sweep({"mode": "grid", "factors": {"probe.sigma_nm": [1.0, 2.0, 3.0],
                                                           "primary.shape": ["sphere", "irregular"]}}), nominal)
    assert len(grid) == 6 and {(p.config.probe.sigma_nm, p.config.primary.shape) for p in grid} == {
        (s, shape) for s in (1.0, 2.0, 3.0) for shape in ("sphere", "irregular")
    }

    lhs = expand(parse_sweep({"mode": "lhs", "n_points": 10, "log_scale": ["detector.probe_current_pA"],
                              "factors": {"probe.sigma_nm": [1.0, 11.0], "detector.probe_current_pA": [10.0, 1000.0],
                                          "primary.roughness_degree": [2, 6]}}), nominal)
    sigma = np.array([p.config.probe.sigma_nm for p in lhs])
    current = np.array([p.config.detector.probe_current_pA for p in lhs])
    # Latin hypercube: exactly one point in each tenth of each range (log tenths for the log-scale factor).
    assert sorted(np.floor(sigma - 1.0).astype(int)) == list(range(10))
    assert sorted(np.floor(np.log10(current / 10.0) * 5).astype(int)) == list(range(10))
    assert all(isinstance(p.config.primary.roughness_degree, int) for p in lhs)

    sobol = expand(parse_sweep({"mode": "sobol", "n_points": 8, "factors": {"probe.sigma_nm": [1.0, 3.0]}}), nominal)
    assert len(sobol) == 8 and all(1.0 <= p.config.probe.sigma_nm <= 3.0 for p in sobol)


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"mode": "oat", "factors": {"probe.sigma": [1.0]}}, r"sweep factor 'probe.sigma' is not a simulation"),
        ({"mode": "lhs", "n_points": 4, "factors": {"probe.sigma_nm": [3.0, 1.0]}}, r"\[min, max\] with min < max"),
        ({"mode": "best", "factors": {"probe.sigma_nm": [1.0]}}, r"sweep.mode must be one of"),
        ({"mode": "oat", "factors": {"probe.sigma_nm": [-1.0]}}, r"sweep point 1 .*probe.sigma_nm must be in"),
    ],
)
def test_bad_sweeps_are_refused_with_the_key(sweep, message):
    with pytest.raises(ConfigError, match=message):
        expand(parse_sweep(sweep, source="s.toml"), small_config())


def test_sweep_dataset_records_points_and_keeps_common_random_numbers(tmp_path):
    cfg_path = tmp_path / "sweep.toml"
    cfg_path.write_text(TINY + """
[probe]
sigma_nm = 5.0
[sweep]
mode = "oat"
images_per_point = 2
[sweep.factors]
"detector.probe_current_pA" = [10.0, 400.0]
"probe.sigma_nm" = [12.0]
""")
    cfg, sweep = load_run_config(cfg_path)
    write_dataset(tmp_path / "ds", cfg, sweep=sweep, seed=4)
    coco = json.loads((tmp_path / "ds" / "annotations.json").read_text())
    points = [img["sweep_point"] for img in coco["images"]]
    assert [(p["point_id"], p["replicate"]) for p in points] == [(i, r) for i in range(4) for r in range(2)]
    assert points[2]["factors"] == {"detector.probe_current_pA": 10.0, "probe.sigma_nm": 5.0}
    assert coco["images"][2]["sim_params"]["detector"]["probe_current_pA"] == 10.0
    # Common random numbers: same replicate, different noise or blur level -> identical masks, other pixels.
    labels = [cv2.imread(str(tmp_path / "ds" / img["label_file"]), cv2.IMREAD_UNCHANGED) for img in coco["images"]]
    pixels = [cv2.imread(str(tmp_path / "ds" / "images" / img["file_name"]), 0) for img in coco["images"]]
    for r in range(2):
        same = [labels[2 * p + r] for p in range(4)]
        assert all(np.array_equal(same[0], x) for x in same[1:])
        assert not np.array_equal(pixels[r], pixels[2 + r])
    assert not np.array_equal(labels[0], labels[1])
    assert check_dataset(tmp_path / "ds") == []


@pytest.mark.slow
def test_workers_and_dask_give_identical_files(tmp_path):
    distributed = pytest.importorskip("distributed")
    cfg = small_config()
    write_dataset(tmp_path / "one", cfg, n_images=4, seed=2, workers=1)
    write_dataset(tmp_path / "two", cfg, n_images=4, seed=2, workers=2)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        write_dataset(tmp_path / "dask", cfg, n_images=4, seed=2, executor="dask", scheduler=cluster.scheduler_address)
    one = digest(tmp_path / "one")
    assert one == digest(tmp_path / "two") == digest(tmp_path / "dask")


@pytest.mark.slow
def test_killed_run_resumed_equals_uninterrupted_run(tmp_path):
    cfg_path = tmp_path / "tiny.toml"
    cfg_path.write_text(TINY)
    n = 40
    base = [sys.executable, str(ROOT / "cli.py"), "simulate", str(cfg_path), "--n", str(n), "--seed", "3"]
    subprocess.run([*base, "--out", str(tmp_path / "full")], check=True, capture_output=True, cwd=ROOT)

    out = tmp_path / "killed"
    proc = subprocess.Popen([*base, "--out", str(out), "--workers", "2"], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((out / "records").glob("*.json"))) < 5:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((out / "records").glob("*.json")))
    assert 5 <= done < n, "the run was not interrupted mid-way"
    problems = check_dataset(out)
    assert any("manifest.json: missing" in p for p in problems)

    result = subprocess.run([*base, "--out", str(out), "--resume"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert digest(out) == digest(tmp_path / "full")
    assert check_dataset(out) == []
    # Resuming a different run into the folder is refused.
    other = subprocess.run([*base[:-1], "4", "--out", str(out), "--resume"], capture_output=True, text=True, cwd=ROOT)
    assert other.returncode == 2 and "different run" in other.stderr


def test_check_flags_truncated_png_missing_image_and_malformed_annotation(tmp_path):
    out = tmp_path / "ds"
    write_dataset(out, small_config(), n_images=3, seed=1)
    assert check_dataset(out) == []
    png = out / "images" / "000001.png"
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    (out / "images" / "000002.png").unlink()
    coco = json.loads((out / "annotations.json").read_text())
    coco["annotations"][0]["segmentation"]["size"] = [5, 5]
    del coco["annotations"][1]["area"]
    (out / "annotations.json").write_text(json.dumps(coco))
    problems = check_dataset(out)
    text = "\n".join(problems)
    assert "000001.png: truncated" in text
    assert "000002.png: missing image" in text
    assert "annotations[0] (id 1): segmentation must be an RLE with size [120, 160]" in text
    assert "annotations[1] (id 2): missing key 'area'" in text
    assert len(problems) == 4


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "sweeps").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_sweep_configs_expand(path):
    cfg, sweep = load_run_config(path)
    points = expand(sweep, cfg)
    assert len(points) >= 4 and len({json.dumps(p.factors, sort_keys=True) for p in points}) == len(points)
