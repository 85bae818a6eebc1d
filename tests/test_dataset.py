"""Dataset writer: exact COCO round trip, label-map agreement, determinism over seeds and workers."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
from conftest import digest, small_config
from pycocotools.coco import COCO

from simulator.io.records import amodal_rles, visible_rles
from simulator.io.writer import write_dataset
from simulator.pipeline import simulate_image


def test_rle_encoders_match_pycocotools():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (37, 23)).astype(np.int32)
    labels[:, :3] = 0
    rles = visible_rles(labels, 6)
    for k in range(1, 7):
        expected = mask_utils.encode(np.asfortranarray((labels == k).astype(np.uint8)))
        assert rles[k - 1]["counts"] == expected["counts"].decode()
        assert np.array_equal(mask_utils.decode({**rles[k - 1], "counts": rles[k - 1]["counts"].encode()}),
                              (labels == k).astype(np.uint8))


def test_coco_round_trip_is_exact(tmp_path, small_cfg):
    out = tmp_path / "ds"
    manifest = write_dataset(out, small_cfg, n_images=2, seed=3)
    coco = COCO(str(out / "annotations.json"))
    assert manifest["counts"]["annotations"] == len(coco.anns) > 10
    for image_id, image in coco.imgs.items():
        index = image["image_index"]
        sim = simulate_image(small_cfg, 3, index)
        labels = cv2.imread(str(out / image["label_file"]), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(labels, sim.render.instance_id)
        pixels = cv2.imread(str(out / "images" / image["file_name"]), cv2.IMREAD_UNCHANGED)
        assert pixels.shape == labels.shape and pixels.dtype == np.uint8
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        union = np.zeros(labels.shape, int)
        for ann in anns:
            k = ann["instance_id"]
            visible = coco.annToMask(ann).astype(bool)
            assert np.array_equal(visible, labels == k)  # visible masks decode exactly
            union += visible
            amodal = mask_utils.decode(
                {**ann["amodal_segmentation"], "counts": ann["amodal_segmentation"]["counts"].encode()}
            ).astype(bool)
            assert np.array_equal(amodal, sim.render.amodal_mask(k))  # amodal masks decode exactly
            assert np.all(amodal[visible])
            assert ann["area"] == visible.sum() and ann["amodal_area"] == amodal.sum()
            assert ann["occluded_fraction"] == pytest.approx(1 - visible.sum() / amodal.sum())
            x, y, w, h = ann["bbox"]
            rows, cols = np.nonzero(visible)
            assert (x, y, w, h) == (cols.min(), rows.min(), np.ptp(cols) + 1, np.ptp(rows) + 1)
            on_border = amodal[0].any() or amodal[-1].any() or amodal[:, 0].any() or amodal[:, -1].any()
            assert ann["touches_border"] == on_border
            assert ann["diameter_nm"] == pytest.approx(2 * sim.scene.primaries.radius_nm[k - 1])
        assert union.max() <= 1 and np.array_equal(union > 0, labels > 0)
        for hidden in image["hidden_particles"]:
            assert not (labels == hidden["instance_id"]).any() and hidden["occluded_fraction"] == 1.0
        assert image["pixel_size_nm"] == small_cfg.image.pixel_size_nm and image["seed"] == 3
        assert image["sim_params"]["aggregate"]["fractal_dimension"] == small_cfg.aggregate.fractal_dimension


def test_amodal_rle_matches_dense_masks(small_cfg):
    sim = simulate_image(small_cfg, 0, 0)
    rles = amodal_rles(sim.render)
    for k in range(1, sim.render.n_instances + 1):
        dense = sim.render.amodal_mask(k)
        expected = mask_utils.encode(np.asfortranarray(dense.astype(np.uint8)))["counts"].decode()
        assert rles[k - 1]["counts"] == expected


@pytest.mark.slow
def test_same_seed_same_bytes_any_workers_other_seed_differs(tmp_path, small_cfg):
    a = write_dataset(tmp_path / "a", small_cfg, n_images=3, seed=7, workers=1)
    write_dataset(tmp_path / "b", small_cfg, n_images=3, seed=7, workers=2)
    write_dataset(tmp_path / "c", small_cfg, n_images=3, seed=8, workers=1)
    da, db, dc = (digest(tmp_path / x) for x in "abc")
    assert da == db
    assert da.keys() == dc.keys()
    assert all(da[f] != dc[f] for f in da if f.startswith("images/"))
    assert a["config_hash"] and json.loads((tmp_path / "a" / "manifest.json").read_text())["seed"] == 7


def test_refuses_non_empty_output_unless_overwrite(tmp_path, small_cfg):
    out = tmp_path / "ds"
    write_dataset(out, small_cfg, n_images=1)
    with pytest.raises(FileExistsError, match="not empty"):
        write_dataset(out, small_cfg, n_images=1)
    write_dataset(out, small_cfg, n_images=1, overwrite=True)
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("keep me")
    with pytest.raises(FileExistsError, match="not written by semsynth"):
        write_dataset(other, small_cfg, n_images=1, overwrite=True)
    assert (other / "thesis.tex").read_text() == "keep me"
    assert not list(out.rglob("*.tmp"))


def test_density_controls_the_number_of_primaries():
    counts = []
    for density in (5.0, 20.0):
        cfg = small_config(field={"primaries_per_um2": density})
        counts.append(np.mean([len(simulate_image(cfg, 0, i).scene.primaries) for i in range(6)]))
    area_um2 = 160 * 120 * 7.344**2 * 1e-6
    assert counts[1] > 2.5 * counts[0]
    assert counts[1] > 20.0 * area_um2  # the extended field adds a margin around the image


def test_coverage_mode_reaches_the_target():
    cfg = small_config(field={"primaries_per_um2": 0.0, "coverage": 0.3})
    coverage = np.mean([(simulate_image(cfg, 0, i).render.instance_id > 0).mean() for i in range(4)])
    assert 0.2 < coverage < 0.45
