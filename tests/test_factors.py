"""Influence-factor estimators (eval/factors.py) on constructed cases with known answers, and `cli.py factors`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval import factors as F  # noqa: E402
from tests.conftest import small_config  # noqa: E402
from tests.test_bad_input import run_cli  # noqa: E402


def disc(size: int = 160, radius_px: float = 40.3) -> np.ndarray:
    """(size, size) float32 sharp disc, point-sampled at pixel centres."""
    yy, xx = np.mgrid[:size, :size] + 0.5 - size / 2
    return (np.hypot(yy, xx) < radius_px).astype(np.float32)


@pytest.mark.parametrize("pixel_size_nm", [4.0, 7.344])
@pytest.mark.parametrize("sigma_nm", [8.0, 15.0, 25.0])
def test_blurred_disc_reads_its_blur(sigma_nm, pixel_size_nm):
    sharp = disc()
    image = 0.2 + 0.5 * cv2.GaussianBlur(sharp, (0, 0), sigma_nm / pixel_size_nm, borderType=cv2.BORDER_REFLECT)
    labels = (sharp > 0).astype(np.int32)
    for lab in (labels, None):  # from the label outline, and from the image alone
        assert F.blur_sigma_nm(image, pixel_size_nm, lab) == pytest.approx(sigma_nm, rel=0.1)


def test_blur_does_not_depend_on_the_step_height():
    image = cv2.GaussianBlur(disc(), (0, 0), 2.0)
    assert F.blur_sigma_nm(0.1 + 0.2 * image, 5.0) == pytest.approx(F.blur_sigma_nm(0.1 + 0.8 * image, 5.0), rel=0.02)


def test_sharp_disc_reads_no_blur():
    assert F.blur_sigma_nm(0.2 + 0.5 * disc(), 5.0) == pytest.approx(0.0, abs=0.5)


@pytest.mark.parametrize("sigma", [0.01, 0.05])
def test_white_noise_of_known_sigma(sigma):
    rng = np.random.default_rng(1)
    sharp = disc(200, 30.3)
    clean = 0.3 + 0.4 * cv2.GaussianBlur(sharp, (0, 0), 1.5)
    image = (clean + sigma * rng.standard_normal(clean.shape)).astype(np.float32)
    labels = (sharp > 0).astype(np.int32)
    for lab in (labels, None):
        assert F.substrate_noise_std(image, lab) == pytest.approx(sigma, rel=0.05)
        assert F.substrate_level(image, lab) == pytest.approx(0.3, abs=0.01)
        assert F.particle_contrast(image, lab) == pytest.approx(0.4, abs=0.02)
    assert F.snr(image, labels) == pytest.approx(0.4 / sigma, rel=0.07)
    assert F.equivalent_counts(image, labels) == pytest.approx((0.3 / sigma) ** 2, rel=0.12)


def test_second_differences_ignore_a_linear_ramp():
    rng = np.random.default_rng(2)
    ramp = np.linspace(0.1, 0.9, 256)[:, None] * np.ones((1, 256))
    image = (ramp + 0.01 * rng.standard_normal(ramp.shape)).astype(np.float32)
    assert F.second_difference_noise_std(image, np.ones(image.shape, bool)) == pytest.approx(0.01, rel=0.05)


def label_map() -> np.ndarray:
    """20 x 20: ids 1 and 2 share an edge, 4 and 5 touch at a corner, 3 stands alone; 4 + 16 + 12 + 9 + 1 + 1 px."""
    lab = np.zeros((20, 20), np.int32)
    lab[2:6, 2:6] = 1
    lab[6:9, 2:6] = 2
    lab[12:15, 12:15] = 3
    lab[5, 15] = 4
    lab[6, 16] = 5
    return lab


def test_coverage_and_touching_of_a_known_label_map():
    lab = label_map()
    assert F.coverage(np.zeros(lab.shape, np.float32), lab) == pytest.approx((16 + 12 + 9 + 2) / 400)
    assert F.touching_ids(lab) == {1, 2, 4, 5}
    assert F.touching_fraction(lab) == pytest.approx(4 / 5)
    assert F.touching_fraction(lab, measured_ids={1, 3}) == pytest.approx(1 / 2)  # 2 touches 1 though not counted
    assert F.particles_per_aggregate(lab) == pytest.approx(5 / 3)  # {1, 2}, {3}, {4, 5}
    # manual masks part touching particles by a background line: up to 2 px it is contact, 3 px is not
    for gap, touching in ((1, {1, 2}), (2, {1, 2}), (3, set())):
        pair = np.zeros((20, 20), np.int32)
        pair[5:10, 2:6] = 1
        pair[5:10, 6 + gap:10 + gap] = 2
        assert F.touching_ids(pair) == touching, gap


def test_size_percentiles_of_equal_squares():
    lab = np.zeros((60, 60), np.int32)
    for k, (r, c) in enumerate([(5, 5), (5, 30), (30, 5), (30, 30)], start=1):
        lab[r : r + 10, c : c + 10] = k
    d10, d50, d90 = F.size_percentiles_nm(lab, 2.0)
    assert d10 == d50 == d90 == pytest.approx(np.sqrt(4 * 100 / np.pi) * 2.0)


def test_image_factors_without_labels_leave_label_factors_nan():
    image = (0.2 + 0.5 * cv2.GaussianBlur(disc(), (0, 0), 2.0)).astype(np.float32)
    row = F.image_factors(image, 5.0)
    assert not row.from_labels and np.isnan(row.touching_fraction) and np.isnan(row.d50_nm)
    assert np.isfinite(row.blur_sigma_nm) and row.coverage == pytest.approx(np.pi * 40.3**2 / 160**2, rel=0.05)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    from simulator.io.writer import write_dataset

    out = tmp_path_factory.mktemp("factors") / "ds"
    write_dataset(out, small_config(), n_images=2, seed=0)
    return out


def test_cli_writes_per_image_rows_and_summary(tiny_dataset, tmp_path):
    out = tmp_path / "f" / "factors.json"
    result = run_cli("factors", str(tiny_dataset), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["n_images"] == 2 and len(data["images"]) == 2
    row = data["images"][0]
    assert row["from_labels"] and row["pixel_size_nm"] == pytest.approx(7.344)
    assert 0 < row["coverage"] < 1 and row["substrate_noise_std"] > 0 and row["d50_nm"] > 0
    assert set(data["summary"]["blur_sigma_nm"]) == {"n", "median", "q1", "q3", "iqr"}


def test_cli_bad_input_says_what_is_expected(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    cv2.imwrite(str(raw / "a.tif"), np.zeros((8, 8), np.uint8))
    result = run_cli("factors", str(raw), "--out", str(tmp_path / "f.json"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {raw}: has no annotations.json") and "cli.py ingest" in result.stderr
    result = run_cli("factors", str(tmp_path / "absent"), "--out", str(tmp_path / "f.json"), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert not (tmp_path / "f.json").exists()
