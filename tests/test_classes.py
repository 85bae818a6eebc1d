"""Particle classes: from exact geometry (constructed scenes), from class masks (colours, sizes), and the
measured class in evaluation (which particles count)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from conftest import spheres

from eval.data.ingest import ingest
from simulator.classes import (
    BAM_COLOURS,
    ClassMaskError,
    class_map_from_rgb,
    classes_from_mask,
    fit_thresholds,
    instance_classes,
)
from simulator.config import ClassesConfig, ConfigError
from simulator.io.records import counted_ignore_ids
from simulator.render import render

PX = 7.344


def _classes_of(prim, width=120, height=90):
    out = render(prim, width, height, PX)
    n = out.n_instances
    visible = np.bincount(out.instance_id.ravel(), minlength=n + 1)[1:]
    return instance_classes(visible, out.amodal_area_px()[1:], PX, ClassesConfig()), visible


def test_classes_from_geometry_of_constructed_scenes():
    r = 12 * PX
    # 1: isolated sphere; 2: big sphere on top of 3 (a small sphere almost entirely beneath it); 4: a sphere
    # partly under 5 (a higher sphere overlapping a third of it)
    centres = [[20 * PX, 20 * PX, r],
               [70 * PX, 30 * PX, 2 * r], [72 * PX, 31 * PX, 0.4 * r],
               [40 * PX, 65 * PX, r], [50 * PX, 65 * PX, r + 60.0]]
    radii = [r, 2 * r, 0.4 * r, r, r]
    codes, visible = _classes_of(spheres(centres, radii))
    assert codes[0] == 1  # fully visible
    assert codes[1] == 1  # the big one on top is fully visible too
    assert visible[2] == 0 or codes[2] == 2  # hidden entirely, or a fragment
    assert codes[3] == 3 and codes[4] == 1  # under another, and the one on top


def test_small_remnant_is_a_fragment_and_full_never_is():
    cfg = ClassesConfig(full_max_occluded=0.2, fragment_min_occluded=0.6, fragment_max_area_nm2=8000.0)
    # visible px, amodal px -> occluded 0, 0.1 (small but whole), 0.4 (big: under), 0.4 (small: fragment), 0.9
    visible = np.array([400, 50, 600, 60, 100])
    amodal = np.array([400, 55, 1000, 100, 1000])
    codes = instance_classes(visible, amodal, PX, cfg)
    assert codes.tolist() == [1, 1, 3, 2, 2]
    with pytest.raises(ConfigError, match="classes.fragment_min_occluded"):
        ClassesConfig(full_max_occluded=0.5, fragment_min_occluded=0.3)


def test_fitted_thresholds_reproduce_the_target_shares():
    rng = np.random.default_rng(0)
    occ = rng.beta(0.5, 1.2, 4000)
    area = rng.lognormal(np.log(30000), 0.8, 4000) * (1 - occ)
    cfg = fit_thresholds(occ, area, {"full": 0.5, "fragment": 0.3, "under": 0.2}, 6000.0)
    codes = instance_classes(area / (1 - occ + 1e-9) * (1 - occ), area / (1 - occ + 1e-9), 1.0, cfg)
    shares = np.bincount(codes, minlength=4)[1:] / len(codes)
    assert shares[0] == pytest.approx(0.5, abs=0.01)
    assert shares[1] == pytest.approx(0.3, abs=0.05)


def test_class_map_colours_sizes_and_majority_vote():
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[:3, :4] = BAM_COLOURS["full"]
    rgb[3:, :4] = BAM_COLOURS["under"]
    rgb[:, 4:6] = BAM_COLOURS["fragment"]
    codes = class_map_from_rgb(rgb)
    assert codes[0, 0] == 1 and codes[5, 0] == 3 and codes[0, 4] == 2 and codes[0, 7] == 0
    labels = np.zeros((7, 8), np.int32)  # one row more than the class map: beyond it, unpainted
    labels[:4, :4] = 1  # 12 px green, 4 px blue: full by majority
    labels[:, 4:6] = 2
    labels[6, 6:] = 3  # only in the row the class map does not reach: no class
    assert classes_from_mask(labels, codes) == {1: 1, 2: 2}
    bad = rgb.copy()
    bad[2, 7] = (200, 200, 0)  # yellow: a colour the map does not name
    with pytest.raises(ClassMaskError, match=r"1 pixels .* row 2, column 7"):
        class_map_from_rgb(bad)
    with pytest.raises(ClassMaskError, match="too close"):
        class_map_from_rgb(rgb, {"full": (0, 255, 0), "under": (0, 230, 30)})
    with pytest.raises(ClassMaskError, match="same width"):
        classes_from_mask(np.zeros((6, 9), np.int32), codes)


def _bam_like_source(tmp_path, class_rgb):
    src = tmp_path / "src"
    for sub in ("SEM", "masks", "classes"):
        (src / sub).mkdir(parents=True)
    image = np.full((40, 48), 40, np.uint8)
    mask = np.zeros((40, 48), np.uint8)
    mask[5:15, 5:15] = 255
    mask[20:30, 20:34] = 255
    image[mask > 0] = 200
    tifffile.imwrite(src / "SEM" / "a.tif", image)
    tifffile.imwrite(src / "masks" / "a_m.tif", mask)
    tifffile.imwrite(src / "classes" / "a_cm.tif", class_rgb)
    return src


def test_ingest_records_classes_and_refuses_bad_class_masks(tmp_path):
    rgb = np.zeros((40, 48, 3), np.uint8)
    rgb[5:15, 5:15] = BAM_COLOURS["full"]
    rgb[20:30, 20:34] = BAM_COLOURS["under"]
    src = _bam_like_source(tmp_path, rgb)
    ingest(src, tmp_path / "real", pixel_size_nm=5.0)
    anns = json.loads((tmp_path / "real" / "annotations.json").read_text())["annotations"]
    assert sorted((a["area"], a["particle_class"]) for a in anns) == [(100, "full"), (140, "under")]
    tifffile.imwrite(src / "classes" / "a_cm.tif", rgb[:, :40])
    with pytest.raises(ClassMaskError, match=r"a_cm.tif: .*same width"):
        ingest(src, tmp_path / "real2", pixel_size_nm=5.0)
    rgb[0, 0] = (128, 128, 128)
    tifffile.imwrite(src / "classes" / "a_cm.tif", rgb)
    with pytest.raises(ClassMaskError, match="a_cm.tif: 1 pixels have a colour"):
        ingest(src, tmp_path / "real3", pixel_size_nm=5.0)


def test_only_the_measured_class_counts():
    anns = [
        {"instance_id": 1, "particle_class": "full", "touches_border": False, "occluded_fraction": 0.0},
        {"instance_id": 2, "particle_class": "full", "touches_border": True, "occluded_fraction": 0.0},
        {"instance_id": 3, "particle_class": "under", "touches_border": False, "occluded_fraction": 0.3},
        {"instance_id": 4, "particle_class": None, "touches_border": False},
    ]
    assert counted_ignore_ids(anns) == {2, 3, 4}
    assert counted_ignore_ids(anns, measured_class="under") == {1, 2, 4}
    legacy = [{k: v for k, v in a.items() if k != "particle_class"} for a in anns]  # datasets without classes
    assert counted_ignore_ids(legacy) == {2}


def test_fit_measures_sizes_on_the_measured_class():
    from eval.calibrate.fit import measure

    labels = np.zeros((120, 160), np.int32)
    yy, xx = np.mgrid[:120, :160]
    labels[(yy - 40) ** 2 + (xx - 40) ** 2 < 20**2] = 1  # ECD 40 px
    labels[(yy - 60) ** 2 + (xx - 110) ** 2 < 10**2] = 2  # ECD 20 px
    labels[(yy - 95) ** 2 + (xx - 50) ** 2 < 12**2] = 3
    image = (labels > 0).astype(np.float32) * 0.6 + 0.1
    both = measure([(image, labels, 2.0, None)])
    only_full = measure([(image, labels, 2.0, {1, 3})])
    assert len(both.ecd_nm) == 3 and not both.measured_class
    assert len(only_full.ecd_nm) == 2 and only_full.measured_class
    assert 2 * 2.0 * 10 * 0.97 < both.ecd_nm.min() and only_full.ecd_nm.min() > 2 * 2.0 * 11
    with pytest.raises(ValueError, match="all or none"):
        measure([(image, labels, 2.0, None), (image, labels, 2.0, {1})])
