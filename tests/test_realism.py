"""The default config against the real reference images (skipped when ../shared is absent)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from eval.calibrate.compare import compare, criteria_met, markdown_table, simulate
from eval.calibrate.image_stats import edge_width_nm, image_statistics, noise_std, particle_shading_spread
from eval.data.reference import DEFAULT_REFERENCE, load_reference
from simulator.config import SimConfig
from simulator.io.reader import info_bar_start

needs_reference = pytest.mark.skipif(
    not (DEFAULT_REFERENCE / "SEM").is_dir(), reason=f"reference images not found at {DEFAULT_REFERENCE}"
)


def test_particle_shading_spread_oracle():
    """Two touching particles: a two-tone one (halves 0.4 and 0.8) and a flat one, each with a bright rim that
    the core excludes; a particle too small for a core is skipped."""
    labels = np.zeros((80, 120), np.int32)
    labels[10:50, 10:50] = 1
    labels[10:50, 50:90] = 2
    labels[60:66, 100:106] = 3
    image = np.full(labels.shape, 0.1)
    image[10:30, 10:50], image[30:50, 10:50] = 0.8, 0.4
    image[10:50, 50:90] = 0.5
    image[labels == 3] = 0.9
    rim = np.zeros(labels.shape, bool)
    rim[10:50, 10:90] = True
    rim[13:47, 13:47] = rim[13:47, 53:87] = False
    image[rim] = 1.0
    spread = particle_shading_spread(image, labels, core_px=3, min_pixels=80)
    assert spread.tolist() == pytest.approx([0.4, 0.0])
    assert particle_shading_spread(image, labels, core_px=1, min_pixels=80)[1] == 0.5  # a thin core takes in the rim


def test_statistics_measure_what_they_claim():
    rng = np.random.default_rng(0)
    image = np.full((200, 300), 0.2) + rng.normal(0, 0.01, (200, 300))
    foreground = np.zeros((200, 300), bool)
    foreground[50:150, 100:200] = True
    image[foreground] = 0.6
    stats = image_statistics(image.astype(np.float32), foreground, 5.0)
    assert stats["substrate_mean"] == pytest.approx(0.2, abs=1e-3)
    assert stats["substrate_noise_std"] == pytest.approx(0.01, rel=0.05)
    assert stats["contrast"] == pytest.approx(3.0, rel=0.01)
    assert stats["coverage"] == pytest.approx(1 / 6, rel=1e-6)
    # Slow texture does not count as noise.
    ramp = image + np.linspace(0, 0.2, 300)[None, :]
    assert noise_std(ramp, ~foreground) == pytest.approx(0.01, rel=0.05)
    # Edge width: a disk blurred by a Gaussian of sigma 2 px (10 nm) measures about 10 nm, and blur widens it.
    yy, xx = np.mgrid[:200, :300]
    disk = (np.hypot(yy - 100, xx - 150) < 40).astype(np.float32)
    widths = [edge_width_nm(cv2.GaussianBlur(0.2 + 0.4 * disk, (0, 0), s), disk > 0.5, 5.0) for s in (1.0, 2.0, 4.0)]
    assert widths[1] == pytest.approx(10.0, rel=0.15)
    assert widths[0] < widths[1] < widths[2] and widths[2] == pytest.approx(20.0, rel=0.15)
    bar = np.ones((100, 50))
    bar[80:] = 0
    bar[85, :10] = 1
    assert info_bar_start(bar) == 80


@needs_reference
def test_default_config_matches_the_reference_within_20_percent():
    reference = load_reference(DEFAULT_REFERENCE)
    assert len(reference) == 20 and reference[0].pixel_size_nm == pytest.approx(7.344)
    assert reference[0].image.shape == (712, 1024)  # the info bar is cut off
    result = compare(SimConfig(), reference, simulate(SimConfig(), 3, seed=0))
    assert criteria_met(result), markdown_table(result)
