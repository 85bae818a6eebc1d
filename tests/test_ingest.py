"""Ingest of real SEM folders: the reference layout, metadata, info bar, bad inputs reported and skipped."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import tifffile
from pycocotools.coco import COCO

from eval.data.ingest import ingest, mask_to_instances
from eval.data.reference import DEFAULT_REFERENCE
from simulator.io.check import check_dataset


@pytest.mark.skipif(not (DEFAULT_REFERENCE / "SEM").is_dir(), reason=f"reference images not at {DEFAULT_REFERENCE}")
def test_reference_layout_ingests_as_it_is(tmp_path):
    report = ingest(DEFAULT_REFERENCE, tmp_path / "real")
    assert len(report.written) == 20 and report.skipped == []
    coco = COCO(str(tmp_path / "real" / "annotations.json"))
    first = coco.imgs[1]
    assert first["source"].endswith("1908248.tif")
    assert first["pixel_size_nm"] == pytest.approx(7.344) and first["pixel_size_source"] == "metadata"
    assert (first["height"], first["width"], first["info_bar_rows_removed"]) == (712, 1024, 56)
    assert len(coco.getAnnIds(imgIds=[1])) == 143  # 4-connected components of its manual mask
    assert len(coco.anns) == 3277  # the reference README's count over the 20 images
    image = cv2.imread(str(tmp_path / "real" / "images" / first["file_name"]), cv2.IMREAD_UNCHANGED)
    assert image.shape == (712, 1024) and image.dtype == np.uint8
    assert check_dataset(tmp_path / "real") == []


def test_flat_folder_with_rgb_png_label_masks_and_bad_files(tmp_path):
    src = tmp_path / "src"
    (src / "masks").mkdir(parents=True)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    image[50:] = 0  # an info bar: the bottom rows are black
    image[52, :30] = 255
    labels = np.zeros((60, 80), np.uint16)
    labels[5:15, 5:15] = 7
    labels[20:30, 40:55] = 3
    labels[52:55, 60:70] = 9  # under the info bar: cut off with it
    cv2.imwrite(str(src / "good.png"), image)
    cv2.imwrite(str(src / "masks" / "good_m.png"), labels)
    cv2.imwrite(str(src / "wrongsize.png"), image)
    cv2.imwrite(str(src / "masks" / "wrongsize_m.png"), labels[:30])
    cv2.imwrite(str(src / "empty.png"), image)
    cv2.imwrite(str(src / "masks" / "empty_m.png"), np.zeros((60, 80), np.uint8))
    (src / "broken.tif").write_bytes(b"II*\x00 not really a tiff")
    tifffile.imwrite(src / "unlabelled.tif", rng.integers(0, 65535, (40, 50), dtype=np.uint16))

    report = ingest(src, tmp_path / "out", pixel_size_nm=3.5)
    skipped = {name.split("/")[-1]: reason for name, reason in report.skipped}
    assert set(skipped) == {"broken.tif", "wrongsize_m.png", "empty_m.png"}
    assert "unreadable image" in skipped["broken.tif"]
    assert "mask size (30, 80) != image size (60, 80)" in skipped["wrongsize_m.png"]
    assert "empty mask" in skipped["empty_m.png"]
    coco = json.loads((tmp_path / "out" / "annotations.json").read_text())
    names = [img["source"].split("/")[-1] for img in coco["images"]]
    assert names == ["good.png", "unlabelled.tif"]
    good = coco["images"][0]
    assert (good["height"], good["info_bar_rows_removed"], good["pixel_size_nm"]) == (50, 10, 3.5)
    assert sorted(a["area"] for a in coco["annotations"]) == [100, 150]
    stored = cv2.imread(str(tmp_path / "out" / "images" / "000001.png"), cv2.IMREAD_UNCHANGED)
    assert stored.dtype == np.uint16 and stored.shape == (40, 50)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert len(manifest["skipped"]) == 3
    assert check_dataset(tmp_path / "out") == []

    (tmp_path / "void").mkdir()
    with pytest.raises(FileNotFoundError, match="void: no images found"):
        ingest(tmp_path / "void", tmp_path / "y")


def test_binary_masks_split_into_4_connected_instances():
    mask = np.zeros((6, 6), np.uint8)
    mask[1, 1] = mask[2, 2] = 255  # diagonal neighbours: two instances under 4-connectivity
    mask[4, 1:5] = 255
    assert mask_to_instances(mask).max() == 3
    labels = np.array([[0, 5, 5], [9, 0, 2]])
    assert mask_to_instances(labels).tolist() == [[0, 2, 2], [3, 0, 1]]


def test_default_reference_lies_beside_the_repository():
    # the reference set is read from ../shared next to the checkout, never from inside it (a layout move once
    # pointed it inside the repository, and every test that needs it skipped instead of running)
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    assert DEFAULT_REFERENCE == repo.parent / "shared" / "data" / "bam-tio2-sem"
