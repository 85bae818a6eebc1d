"""Calibration: measuring sizes from label images, and recovering known parameters from a synthetic dataset."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import small_config

from eval.calibrate.fit import dataset_samples, fit, instance_shapes, measure
from simulator.config import config_from_dict, config_to_toml, load_config
from simulator.io.writer import write_dataset


def test_instance_sizes_and_border_flags():
    labels = np.zeros((100, 100), np.int32)
    yy, xx = np.mgrid[0:100, 0:100]
    labels[(yy - 50) ** 2 + (xx - 50) ** 2 < 20**2] = 1
    labels[0:10, 0:10] = 2
    ecd, solidity, border, _ = instance_shapes(labels, 2.0)
    assert ecd[0] == pytest.approx(80.0, rel=0.02)  # a disc of radius 20 px at 2 nm/px
    assert solidity[0] > 0.9 and border.tolist() == [False, True]


@pytest.mark.slow
def test_fit_recovers_the_median_diameter_of_a_synthetic_dataset(tmp_path):
    truth = small_config(image={"width_px": 512, "height_px": 384},
                         primary={"diameter_gmean_nm": 130.0}, field={"primaries_per_um2": 5.0},
                         probe={"sigma_nm": 12.0})
    write_dataset(tmp_path / "truth", truth, n_images=8, seed=11)
    real = measure(dataset_samples(tmp_path / "truth"))
    start = config_from_dict({"image": {"width_px": 512, "height_px": 384}})  # defaults: 185 nm, 3.6 / um^2, 3.2 nm
    fitted, history = fit(real, start, n_sim=8, rounds=4, seed=3)
    assert fitted.primary.diameter_gmean_nm == pytest.approx(130.0, rel=0.05)
    assert history[-1]["simulated"]["coverage"] == pytest.approx(real.image["coverage"], rel=0.2)
    assert fitted.probe.sigma_nm == pytest.approx(12.0, rel=0.25), [h["simulated"]["edge_width_nm"] for h in history]
    # fitted on the median image (spreads off), handed back with the start config's image-to-image spreads
    assert (fitted.field.density_spread, fitted.shading.residue_spread) == (0.6, 0.8)
    # The fitted config round-trips through TOML.
    path = tmp_path / "fitted.toml"
    path.write_text(config_to_toml(fitted, header="test"))
    assert load_config(path) == fitted


@pytest.mark.slow
def test_fit_recovers_lighting_and_crevices_from_images_and_masks_alone(tmp_path):
    # A "real" set with a weak side detector, uneven particles and dark crevices; the fit starts from the
    # defaults (side detector 0.45, even particles, no crevices) and sees only the images and their masks.
    shading = {"et_fraction": 0.1, "particle_yield_spread": 0.3, "particle_yield_tilt": 0.25,
               "crevice_occlusion": 0.5}
    truth = small_config(image={"width_px": 512, "height_px": 384}, field={"primaries_per_um2": 5.0},
                         shading=shading)
    write_dataset(tmp_path / "truth", truth, n_images=8, seed=5)
    real = measure(dataset_samples(tmp_path / "truth"))
    start = config_from_dict({"image": {"width_px": 512, "height_px": 384}, "field": {"primaries_per_um2": 5.0}})
    fitted, history = fit(real, start, n_sim=8, rounds=4, seed=3)
    got = fitted.shading
    trace = [{k: round(h["simulated"][k], 3) for k in ("particle_level_spread", "particle_ramp",
                                                       "particle_ramp_to_detector", "contact_level")}
             for h in history]
    assert got.et_fraction == pytest.approx(0.1, abs=0.07), trace
    assert got.particle_yield_spread == pytest.approx(0.3, rel=0.3), trace
    assert got.particle_yield_tilt == pytest.approx(0.25, rel=0.35), trace
    assert got.crevice_occlusion == pytest.approx(0.5, abs=0.2), trace


def test_particle_profile_sees_a_bright_rim_and_a_dark_centre():
    from eval.calibrate.image_stats import particle_profile, profile_statistics

    yy, xx = np.mgrid[0:96, 0:96]
    r = np.hypot(yy - 48, xx - 48)
    labels = (r < 30).astype(np.int32)
    flat = np.where(labels > 0, 0.6, 0.1)
    rim = flat + 0.3 * ((r > 26) & (r < 30))  # the outer 4 px of 30 brighter
    dome = np.where(labels > 0, 0.1 + 0.5 * (0.7 + 0.3 * (r / 30) ** 2), 0.1)  # darker towards the centre
    stats = {name: profile_statistics(particle_profile(img, labels)) for name, img in
             (("flat", flat), ("rim", rim), ("dome", dome))}
    assert stats["flat"] == pytest.approx({"rim_to_middle": 1.0, "centre_to_middle": 1.0}, abs=1e-6)
    assert stats["rim"]["rim_to_middle"] > 1.2 and stats["rim"]["centre_to_middle"] == pytest.approx(1.0, abs=0.01)
    assert stats["dome"]["centre_to_middle"] < 0.95 and stats["dome"]["rim_to_middle"] > 1.05
