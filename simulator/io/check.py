"""Dataset validation: every problem is reported with the file it is in and what was expected."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils

from simulator.io.errors import InputNotFoundError, UserError, existing_folder, read_json

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


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def coco_structure_errors(coco, path: Path, *, need_pixel_size: bool = True, strict: bool = False) -> list[UserError]:
    """What makes an annotations.json unusable by evaluate, realism, refine and fit: the top level, the image
    records (id, file_name, width, height, pixel_size_nm > 0, label_file) and the annotations list when present
    (``strict``, as ``check_dataset``: every image key of the format, and 'annotations' and 'categories')."""
    if not isinstance(coco, dict):
        return [UserError(path, f"top level is {type(coco).__name__}", "a COCO object with 'images', "
                          "'annotations' and 'categories' lists")]
    errors = []
    if not isinstance(coco.get("images"), list):
        errors.append(UserError(path, f"top-level 'images' is {type(coco.get('images')).__name__}",
                                "'images' a list of image records"))
    if "annotations" in coco and not isinstance(coco["annotations"], list):
        errors.append(UserError(path, f"top-level 'annotations' is {type(coco['annotations']).__name__}",
                                "'annotations' a list"))
    if not isinstance(coco.get("images"), list):
        return errors
    if not coco["images"]:
        errors.append(UserError(path, "lists no images", "at least one image record"))
    for k, image in enumerate(coco["images"]):
        where = f"{path} images[{k}]"
        if not isinstance(image, dict):
            errors.append(UserError(where, f"is {type(image).__name__}", "an image record (object)"))
            continue
        for key, kind in _IMAGE_KEYS.items():
            if key not in image:
                if strict or key == "file_name":
                    errors.append(UserError(where, f"missing key {key!r}", f"{key!r} ({kind.__name__})"))
            elif not isinstance(image[key], kind) or isinstance(image[key], bool):
                errors.append(UserError(where, f"{key} is {image[key]!r}", f"a {kind.__name__}"))
        px = image.get("pixel_size_nm")
        if (need_pixel_size or px is not None) and not (_is_number(px) and px > 0):
            what = "missing key 'pixel_size_nm'" if "pixel_size_nm" not in image else f"pixel_size_nm is {px!r}"
            errors.append(UserError(where, what, "pixel_size_nm, a number > 0 (nm per pixel)"))
        if image.get("label_file") is not None and not isinstance(image["label_file"], str):
            errors.append(UserError(where, f"label_file is {image['label_file']!r}", "a path (labels/...) or null"))
    return errors


def read_annotations(root: str | Path, *, need_pixel_size: bool = True) -> dict:
    """The dataset's annotations.json, checked for the structure every reader needs (``UserError`` otherwise)."""
    root = existing_folder(root, expected="a dataset folder (images/ + annotations.json)")
    path = root / "annotations.json"
    if not path.is_file():
        raise InputNotFoundError(path, "missing", "a dataset folder written by simulate or ingest")
    coco = read_json(path, expected="a COCO annotations file")
    errors = coco_structure_errors(coco, path, need_pixel_size=need_pixel_size)
    if errors:
        raise errors[0]
    return coco


def image_file_errors(root: Path, image: dict) -> list[UserError]:
    """What makes one image record's files unusable: the image missing, unreadable, not 8/16-bit grayscale or
    not of the record's size; its label map missing, unreadable or not of the image's size (the one reader
    needs both)."""
    path = root / "images" / image["file_name"]
    size = (image.get("height"), image.get("width"))
    expected = "an 8- or 16-bit grayscale PNG" + (f" of {size[0]} x {size[1]} px" if None not in size else "")
    if not path.is_file():
        return [UserError(path, f"missing image (listed as image id {image.get('id')})", expected)]
    bad = png_problem(path)
    if bad:
        return [UserError(path, bad.split(": ", 1)[1], expected)]
    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        got = "unreadable" if pixels is None else f"{pixels.dtype} of shape {pixels.shape}"
        return [UserError(path, f"is {got}", expected)]
    errors = []
    if None not in size and pixels.shape != size:
        errors.append(UserError(path, f"size {pixels.shape} does not match annotations.json", expected))
    label = image.get("label_file")
    if label:
        lpath = root / label
        lexpected = f"a 16-bit label map PNG of the image's size {pixels.shape}"
        bad = png_problem(lpath) if lpath.exists() else "missing label map"
        if bad:
            errors.append(UserError(lpath, bad.split(": ", 1)[-1], lexpected))
            return errors
        labels = cv2.imread(str(lpath), cv2.IMREAD_UNCHANGED)
        if labels is None or labels.shape != pixels.shape:
            got = "unreadable" if labels is None else f"of shape {labels.shape}"
            errors.append(UserError(lpath, f"is {got}", lexpected))
    return errors


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
    structure = coco_structure_errors(coco, root / "annotations.json", strict=True)
    if isinstance(coco, dict):  # readers need images (and annotations when present); a whole dataset has all three
        structure += [UserError(root / "annotations.json", f"top-level {key!r} is {type(coco.get(key)).__name__}",
                                f"{key!r} a list") for key in ("annotations", "categories") if key not in coco]
    problems += [str(err) for err in structure]
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        return problems
    images: dict[int, dict] = {}
    for k, image in enumerate(coco["images"]):
        where = f"annotations.json images[{k}]"
        if not isinstance(image, dict) or _typed(image, _IMAGE_KEYS, where):
            continue  # reported above
        if image["id"] in images:
            problems.append(f"{where}: duplicate image id {image['id']}")
        images[image["id"]] = image
        problems += [str(err) for err in image_file_errors(root, image)]
    ids = set()
    annotations = coco.get("annotations") if isinstance(coco.get("annotations"), list) else []
    for k, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            problems.append(f"annotations.json annotations[{k}]: must be an object, got {str(ann)[:80]}")
            continue
        where = f"annotations.json annotations[{k}] (id {ann.get('id')!r})"
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
