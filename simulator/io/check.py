"""Dataset validation: every problem is reported with the file it is in and what was expected."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ANNOTATION_KEYS = {"id": int, "image_id": int, "category_id": int, "segmentation": dict, "area": int,
                    "bbox": list, "iscrowd": int}
_IMAGE_KEYS = {"id": int, "file_name": str, "width": int, "height": int}


def png_problem(path: Path) -> str | None:
    """Why a PNG file is not whole (bad signature, truncated chunk, CRC mismatch, no IEND), or None."""
    try:
        data = path.read_bytes()
    except OSError as err:
        return f"{path}: cannot read ({err.strerror})"
    if not data.startswith(_PNG_SIGNATURE):
        return f"{path}: not a PNG file (bad signature)"
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            return f"{path}: truncated in chunk {kind.decode('latin-1')!r} ({len(data)} bytes)"
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(data[pos + 4 : end - 4]) != crc:
            return f"{path}: CRC mismatch in chunk {kind.decode('latin-1')!r}"
        if kind == b"IEND":
            return None
        pos = end
    return f"{path}: truncated (no IEND chunk)"


def _decode(rle: dict) -> np.ndarray:
    counts = rle["counts"]
    return mask_utils.decode({"size": rle["size"], "counts": counts.encode() if isinstance(counts, str) else counts})


def _typed(record: dict, keys: dict[str, type], where: str) -> list[str]:
    out = []
    for key, kind in keys.items():
        if key not in record:
            out.append(f"{where}: missing key {key!r}")
        elif not isinstance(record[key], kind) or isinstance(record[key], bool):
            out.append(f"{where}: {key} must be {kind.__name__}, got {record[key]!r}")
    return out


def _check_image_files(root: Path, image: dict, problems: list[str]) -> None:
    path = root / "images" / image["file_name"]
    if not path.exists():
        problems.append(f"{path}: missing image (listed as image id {image['id']})")
        return
    bad = png_problem(path)
    if bad:
        problems.append(bad)
        return
    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.shape[:2] != (image["height"], image["width"]):
        shape = None if pixels is None else pixels.shape
        problems.append(f"{path}: size {shape} does not match annotations.json ({image['height']}, {image['width']})")
    label = image.get("label_file")
    if label:
        lpath = root / label
        bad = png_problem(lpath) if lpath.exists() else f"{lpath}: missing label map"
        if bad:
            problems.append(bad)


def _check_annotation(ann: dict, images: dict[int, dict], where: str, problems: list[str]) -> None:
    found = _typed(ann, _ANNOTATION_KEYS, where)
    if found:
        problems.extend(found)
        return
    image = images.get(ann["image_id"])
    if image is None:
        problems.append(f"{where}: image_id {ann['image_id']} is not an image id")
        return
    if ann["category_id"] != 1:
        problems.append(f"{where}: category_id must be 1 (particle), got {ann['category_id']}")
    size = [image["height"], image["width"]]
    for key in ("segmentation", "amodal_segmentation"):
        rle = ann.get(key)
        if rle is None:
            continue
        if not isinstance(rle, dict) or rle.get("size") != size or not isinstance(rle.get("counts"), str):
            problems.append(f"{where}: {key} must be an RLE with size {size}, got {str(rle)[:80]}")
            continue
        try:
            mask = _decode(rle)
        except Exception as err:  # pycocotools raises plain exceptions on corrupt counts
            problems.append(f"{where}: {key} does not decode ({err})")
            continue
        if key == "segmentation" and int(mask.sum()) != ann["area"]:
            problems.append(f"{where}: area {ann['area']} != {int(mask.sum())} pixels in its mask")


def check_dataset(root: str | Path) -> list[str]:
    """Every problem found in a dataset folder (empty when it is whole and consistent)."""
    root = Path(root)
    problems: list[str] = []
    if not root.is_dir():
        return [f"{root}: not a folder"]
    for name in ("run.json", "manifest.json", "annotations.json"):
        if not (root / name).exists():
            problems.append(f"{root / name}: missing (the run did not finish: simulate ... --resume)")
    stray = sorted(str(p) for sub in ("", "images", "labels", "records") for p in (root / sub).glob(".*.tmp"))
    problems += [f"{p}: leftover temporary file of an interrupted write" for p in stray]
    if not (root / "annotations.json").exists():
        return problems
    try:
        coco = json.loads((root / "annotations.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return [*problems, f"{root / 'annotations.json'}: not valid JSON ({err})"]
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            problems.append(f"{root / 'annotations.json'}: top-level {key!r} must be a list")
    if problems and not isinstance(coco.get("images"), list):
        return problems
    images: dict[int, dict] = {}
    for k, image in enumerate(coco["images"]):
        where = f"annotations.json images[{k}]"
        found = _typed(image, _IMAGE_KEYS, where)
        if found:
            problems += found
            continue
        if image["id"] in images:
            problems.append(f"{where}: duplicate image id {image['id']}")
        images[image["id"]] = image
        _check_image_files(root, image, problems)
    ids = set()
    for k, ann in enumerate(coco.get("annotations") or []):
        where = f"annotations.json annotations[{k}] (id {ann.get('id')!r})"
        if not isinstance(ann, dict):
            problems.append(f"{where}: must be an object, got {ann!r}")
            continue
        if ann.get("id") in ids:
            problems.append(f"{where}: duplicate annotation id")
        ids.add(ann.get("id"))
        _check_annotation(ann, images, where, problems)
    if (root / "manifest.json").exists():
        try:
            manifest = json.loads((root / "manifest.json").read_text())
            counts = manifest.get("counts", {})
            if counts.get("images") != len(coco["images"]) or counts.get("annotations") != len(ids):
                problems.append(
                    f"{root / 'manifest.json'}: counts {counts} disagree with annotations.json "
                    f"({len(coco['images'])} images, {len(ids)} annotations)"
                )
        except json.JSONDecodeError as err:
            problems.append(f"{root / 'manifest.json'}: not valid JSON ({err})")
    return problems
