"""realism: the classifier two-sample test separates what differs, not what does not; KID and distances agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from eval.realism.c2st import balanced_accuracy_ci, c2st
from eval.realism.config import RealismConfig
from eval.realism.data import ImageSet, load_image_set
from eval.realism.report import distances, realism
from simulator.io.files import write_png

ROOT = Path(__file__).resolve().parents[1]
FAST = RealismConfig(crop_px=32, steps=120, batch_size=32, test_crops_per_image=24, n_bootstrap=500, ae_steps=40,
                     kid_subset_size=60, kid_subsets=10)


def textures(n: int, seed: int, size: int = 96) -> list[np.ndarray]:
    """Blobby grain texture with shot noise: one process, different draws."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        field = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 2.0)
        grains = (field > 0.25).astype(np.float32) * 0.5 + 0.2
        out.append(np.clip(grains + rng.normal(0, 0.04, (size, size)), 0, 1).astype(np.float32))
    return out


def as_set(name: str, images: list[np.ndarray]) -> ImageSet:
    return ImageSet(name, tuple(images), tuple(f"{name}{i}" for i in range(len(images))), 5.0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_c2st_same_process_near_chance_degraded_copy_separable():
    real = textures(12, seed=0)
    same = as_set("same", textures(12, seed=1))
    blurred = as_set("blurred", [cv2.GaussianBlur(im, (0, 0), 1.5) for im in real])
    noisy = as_set("noisy", [np.clip(im + np.random.default_rng(i).normal(0, 0.08, im.shape), 0, 1).astype(np.float32)
                             for i, im in enumerate(real)])
    a = as_set("real", real)
    null = c2st(a, same, FAST)
    assert null.accuracy <= 0.65 and null.ci_low <= 0.5 + 1e-9, null
    for degraded in (blurred, noisy):
        result = c2st(a, degraded, FAST)
        assert result.accuracy >= 0.9 and result.ci_low >= 0.8, (degraded.name, result)
        assert result.ci_low <= result.accuracy <= result.ci_high
    # Held-out means held-out images: the two folds' test images never met the network that tests them.
    for fold in null.folds:
        assert not set(fold["train_a"]) & set(fold["test_a"]) and not set(fold["train_b"]) & set(fold["test_b"])
    assert c2st(a, same, FAST) == null  # seeded: the same score twice


def discs(n: int, seed: int, textured: bool, size: int = 96) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Bright discs on a noisy substrate (one process for both kinds); ``textured``: coarse blotches inside the
    discs only. Returns the images and their particle masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images, masks = [], []
    for _ in range(n):
        mask = np.zeros((size, size), bool)
        for _ in range(2):
            cy, cx = rng.uniform(12, size - 12, 2)
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 11**2
        image = np.where(mask, 0.7, 0.25).astype(np.float32)
        if textured:
            blotches = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 2.0)
            image += mask * 1.5 * blotches
        images.append(np.clip(image + rng.normal(0, 0.04, image.shape), 0, 1).astype(np.float32))
        masks.append(mask)
    return images, masks


@pytest.mark.slow
def test_c2st_by_crop_content_finds_where_the_sets_differ():
    # The sets differ inside the particles only: crops of bare substrate are a coin toss, crops holding particle
    # pixels are told apart; the overall score sits between them. Without masks there is no split.
    flat, flat_masks = discs(12, seed=0, textured=False)
    rough, rough_masks = discs(12, seed=1, textured=True)
    a = ImageSet("flat", tuple(flat), tuple(f"f{i}" for i in range(12)), 5.0, tuple(flat_masks))
    b = ImageSet("rough", tuple(rough), tuple(f"r{i}" for i in range(12)), 5.0, tuple(rough_masks))
    result = c2st(a, b, FAST)
    split = result.by_content
    assert split["particles"]["accuracy"] >= 0.8, split
    assert split["substrate"]["accuracy"] <= 0.7, split
    assert split["substrate"]["n_crops_a"] > 20 and split["particles"]["n_crops_b"] > 20
    assert split["substrate"]["n_crops_a"] + split["particles"]["n_crops_a"] == 12 * FAST.test_crops_per_image
    # the split re-counts the same test crops: the overall accuracy is their crop-weighted mean per set
    n_a = split["substrate"]["n_crops_a"] + split["particles"]["n_crops_a"]
    acc_a = sum(split[k]["accuracy_a"] * split[k]["n_crops_a"] for k in split) / n_a
    assert acc_a == pytest.approx(result.accuracy_a)
    unlabelled = c2st(as_set("flat", flat), as_set("rough", rough), FAST)
    assert unlabelled.by_content is None and unlabelled.accuracy == result.accuracy


@pytest.mark.slow
def test_kid_and_distances_rank_a_degraded_copy_above_the_same_process():
    a = as_set("real", textures(10, seed=0))
    same = as_set("same", textures(10, seed=1))
    blurred = as_set("blurred", [cv2.GaussianBlur(im, (0, 0), 1.5) for im in a.images])
    near = realism(a, same, FAST)
    far = realism(a, blurred, FAST)
    assert far.kid > near.kid + 3 * near.kid_sd
    assert far.distances["gradient_w1_per_nm"] > 3 * near.distances["gradient_w1_per_nm"]
    assert far.distances["spectrum_rms_log10"] > 3 * near.distances["spectrum_rms_log10"]
    assert distances(a, a)["intensity_w1"] < 1e-3


def test_balanced_accuracy_interval_resamples_images():
    rng = np.random.default_rng(0)
    perfect = balanced_accuracy_ci(np.full(5, 10), np.full(5, 10), 10, n_bootstrap=200, rng=rng)
    assert perfect[:3] == (1.0, 1.0, 1.0)
    # One image of A entirely wrong: accuracy (4/5 + 1) / 2 = 0.9 and the interval reaches below it.
    acc, low, high, acc_a, acc_b = balanced_accuracy_ci(np.array([10, 10, 10, 10, 0]), np.full(5, 10), 10,
                                                        n_bootstrap=2000, rng=rng)
    assert acc == pytest.approx(0.9) and acc_a == pytest.approx(0.8) and acc_b == 1.0
    assert low <= 0.7 and high == 1.0


@pytest.mark.slow
def test_cli_realism_on_dataset_folders_and_bad_input(tmp_path):
    for name, seed in (("a", 0), ("b", 1)):  # labelled datasets: label maps give the particle masks
        folder = tmp_path / name / "images"
        (tmp_path / name / "labels").mkdir(parents=True)
        folder.mkdir(parents=True)
        records = []
        images, masks = discs(4, seed, textured=bool(seed))
        for i, (im, mask) in enumerate(zip(images, masks, strict=True)):
            write_png(folder / f"{i:06d}.png", (im * 255).astype(np.uint8))
            write_png(tmp_path / name / "labels" / f"{i:06d}.png", mask.astype(np.uint16) * 7)
            records.append({"id": i + 1, "file_name": f"{i:06d}.png", "pixel_size_nm": 5.0,
                            "label_file": f"labels/{i:06d}.png"})
        (tmp_path / name / "annotations.json").write_text(json.dumps({"images": records, "annotations": []}))
    loaded = load_image_set(tmp_path / "b")
    assert np.array_equal(loaded.foreground[2], masks[2])
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "cli.py"), "realism", str(tmp_path / "a"), str(tmp_path / "b"), "--out",
           str(out), "--steps", "20", "--crop-px", "32", "--ae-steps", "10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny networks: threads only add overhead
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "realism.json").read_text())
    assert 0.0 <= report["c2st_ci95"][0] <= report["c2st_accuracy"] <= report["c2st_ci95"][1] <= 1.0
    assert set(report["c2st"]["by_content"]) == {"substrate", "particles"} and "by crop content" in proc.stdout
    assert "data:image/png;base64," in (out / "realism.html").read_text()
    proc = subprocess.run(cmd[:3] + [str(tmp_path / "missing")] + cmd[4:], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "missing" in proc.stderr
    with pytest.raises(ValueError, match="smaller than crop_px"):
        c2st(load_image_set(tmp_path / "a"), load_image_set(tmp_path / "b"), RealismConfig(crop_px=128))
