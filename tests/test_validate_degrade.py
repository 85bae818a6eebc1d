"""Post-hoc degradations (eval.validate.degrade): oracles on constructed images."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf

from eval.validate.degrade import (
    NoiseModel,
    added_blur_sigma_nm,
    blur_to_probe_sigma,
    estimate_noise_model,
    resample_pixel_size,
    thin_dose,
)

ERF_10_90 = 2.0 * np.sqrt(2.0) * 0.9061938  # 10-90 % width of a Gaussian-blurred step, in sigmas (2.563)


def edge_width_px(row: np.ndarray) -> float:
    """10-90 % rise distance of a monotone edge profile, by linear interpolation."""
    lo, hi = row.min(), row.max()
    level = (row - lo) / (hi - lo)
    x = np.arange(row.size, dtype=float)
    return float(np.interp(0.9, level, x) - np.interp(0.1, level, x))


def step_image(sigma_px: float, shape=(16, 128)) -> np.ndarray:
    x = np.arange(shape[1]) + 0.5 - shape[1] / 2
    profile = 0.2 + 0.6 * (0.5 + 0.5 * erf(x / (np.sqrt(2) * sigma_px))) if sigma_px > 0 else 0.2 + 0.6 * (x > 0)
    return np.broadcast_to(profile, shape).astype(np.float32)


def test_blurred_step_edge_has_the_width_of_the_level():
    px, nominal, level = 2.0, 4.0, 10.0  # nm: the edge starts 2 px wide (sigma), ends 5 px
    labels = np.zeros((16, 128), np.int32)
    out = blur_to_probe_sigma(step_image(nominal / px), labels, px, level_nm=level, nominal_nm=nominal)
    assert edge_width_px(out.image[8]) == pytest.approx(ERF_10_90 * level / px, rel=0.03)
    assert out.labels is labels and out.pixel_size_nm == px
    sharp = blur_to_probe_sigma(step_image(0.0), labels, px, level_nm=6.0, nominal_nm=0.0)
    assert edge_width_px(sharp.image[8]) == pytest.approx(ERF_10_90 * 3.0, rel=0.05)


def test_blur_below_nominal_is_refused():
    assert added_blur_sigma_nm(5.0, 3.0) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="below the nominal"):
        added_blur_sigma_nm(2.0, 3.0)


def test_thinning_adds_the_expected_variance_on_a_flat_field():
    flat = np.full((256, 256), 0.4, np.float32)
    labels = np.zeros(flat.shape, np.int32)
    noise = NoiseModel(offset_var=1e-4, gain=0.01, n_bins=0)
    out = thin_dose(flat, labels, 7.0, level=50.0, nominal=200.0, noise=noise, rng=np.random.default_rng(0))
    expected = (1e-4 + 0.01 * 0.4) * (200.0 / 50.0 - 1.0)
    assert out.image.mean() == pytest.approx(0.4, abs=2e-3)
    assert out.image.var() == pytest.approx(expected, rel=0.03)
    same = thin_dose(flat, labels, 7.0, level=200.0, nominal=200.0, noise=noise, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(same.image, flat)
    with pytest.raises(ValueError, match="above the nominal"):
        thin_dose(flat, labels, 7.0, level=400.0, nominal=200.0, noise=noise, rng=np.random.default_rng(0))


def test_noise_gain_is_recovered_from_an_image_with_structure():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:192, :256]
    clean = 0.15 + 0.6 * (xx / 255.0)  # a brightness ramp ...
    clean = np.where((yy - 96) ** 2 + (xx - 128) ** 2 < 40**2, 0.8, clean)  # ... and a bright disk with an edge
    gain, offset = 0.004, 2e-5
    noisy = clean + rng.standard_normal(clean.shape) * np.sqrt(offset + gain * clean)
    model = estimate_noise_model(noisy.astype(np.float32))
    assert model.gain == pytest.approx(gain, rel=0.15)
    assert model.n_bins >= 10


def test_resampling_keeps_labels_exact_and_scales_areas():
    yy, xx = np.mgrid[:240, :320]
    labels = np.zeros((240, 320), np.int32)
    labels[(yy - 100) ** 2 + (xx - 120) ** 2 < 50**2] = 3
    labels[(yy - 150) ** 2 + (xx - 240) ** 2 < 30**2] = 7
    image = (labels > 0).astype(np.float32) * 0.5 + 0.25
    out = resample_pixel_size(image, labels, 5.0, level_nm=12.5)  # 2.5 old pixels per new one
    assert out.labels.shape == (96, 128) and out.pixel_size_nm == 12.5
    assert set(np.unique(out.labels)) == {0, 3, 7}
    for ident, radius_px in ((3, 50), (7, 30)):
        area_nm2 = (out.labels == ident).sum() * 12.5**2
        assert area_nm2 == pytest.approx(np.pi * (radius_px * 5.0) ** 2, rel=0.04)
    # labels and image moved together: every pixel's image value still says which side of the mask it is
    np.testing.assert_array_equal(out.image, (out.labels > 0) * 0.5 + 0.25)
    twice = resample_pixel_size(image, labels, 5.0, level_nm=10.0)
    np.testing.assert_array_equal(twice.labels, labels[1::2, 1::2])
    with pytest.raises(ValueError, match="finer"):
        resample_pixel_size(image, labels, 5.0, level_nm=4.0)


def test_noise_gain_of_a_simulated_image_matches_its_true_detector_noise():
    """Oracle: the same image rendered with and without detector noise; their difference is the noise."""
    from simulator.config import config_from_dict, config_to_dict
    from simulator.pipeline import as_written, simulate_image

    def written(cfg):
        pixels = as_written(simulate_image(cfg, 0, 0), cfg).astype(np.float64)
        return pixels / 255.0 if pixels.max() > 1.5 else pixels

    cfg = config_from_dict({"image": {"width_px": 384, "height_px": 288}})
    quiet = config_to_dict(cfg)
    quiet["detector"]["noise"] = False
    noisy, clean = written(cfg), written(config_from_dict(quiet))
    noise = noisy - clean
    bins = np.floor(clean / 0.05).astype(int)
    levels = [b for b in np.unique(bins) if (bins == b).sum() > 300]
    true_var = np.array([noise[bins == b].var() for b in levels])
    level_mean = np.array([clean[bins == b].mean() for b in levels])
    model = estimate_noise_model(noisy.astype(np.float32))
    rel = model.variance(level_mean) / true_var - 1.0
    assert np.median(np.abs(rel)) < 0.2 and np.abs(rel).max() < 0.5, (level_mean.round(3), rel.round(2))
