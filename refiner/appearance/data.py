"""Dataset folders -> ``Pairs`` (training) and label maps -> model inputs (applying). Needs the simulator's
shading stage (and so its packages); ``train`` itself does not.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from refiner.appearance.inputs import RenderSettings, model_inputs
from refiner.appearance.train import Pairs


class InputError(ValueError):
    """A bad input file: ``str(err)`` is ``<file>: <what> (expected ...)``."""


def read_records(folder: str | Path) -> list[dict]:
    """The ``images`` records of DIR/annotations.json."""
    path = Path(folder) / "annotations.json"
    if not path.is_file():
        raise InputError(f"{path}: missing (expected a semsynth dataset folder: images/, labels/, annotations.json)")
    try:
        images = json.loads(path.read_text()).get("images")
    except (json.JSONDecodeError, AttributeError) as err:
        raise InputError(f"{path}: not a COCO annotations file ({err}) (expected a JSON object with 'images')") from err
    if not isinstance(images, list) or not images:
        raise InputError(f"{path}: no images listed (expected a non-empty 'images' list)")
    return images


def read_image(folder: Path, rec: dict) -> tuple[np.ndarray, int]:
    """(H, W) float32 in [0, 1] and its bit depth."""
    path = folder / "images" / rec["file_name"]
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.ndim != 2 or raw.dtype not in (np.uint8, np.uint16):
        raise InputError(f"{path}: missing or unreadable (expected an 8- or 16-bit grayscale PNG)")
    bits = 8 if raw.dtype == np.uint8 else 16
    return raw.astype(np.float32) / ((1 << bits) - 1), bits


def read_labels(folder: Path, rec: dict, shape: tuple[int, int] | None = None) -> np.ndarray:
    label_file = rec.get("label_file")
    if not label_file:
        raise InputError(f"{folder / 'annotations.json'}: image {rec.get('file_name')!r} has no label_file "
                         "(expected label maps: simulate with output.label_maps = true, or ingest with masks)")
    path = folder / label_file
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.ndim != 2:
        raise InputError(f"{path}: missing or unreadable (expected a single-channel integer label PNG)")
    if shape is not None and raw.shape != shape:
        raise InputError(f"{path}: shape {raw.shape} (expected the image's {shape})")
    return raw.astype(np.int32)


def pixel_size(folder: Path, rec: dict) -> float:
    px = rec.get("pixel_size_nm")
    if not isinstance(px, (int, float)) or not px > 0:
        raise InputError(f"{folder / 'annotations.json'}: image {rec.get('file_name')!r} has pixel_size_nm {px!r} "
                         "(expected a number > 0)")
    return float(px)


def load_pairs(folder: str | Path, settings: RenderSettings, *, index: list[int] | None = None) -> Pairs:
    """Paired training data from a labelled dataset folder (e.g. ``cli.py ingest`` of real images with masks);
    ``index`` picks images by their position in annotations.json."""
    from eval.data.pixels import image_levels, scale_to_levels  # the realism test's normalised view

    folder = Path(folder)
    records = read_records(folder)
    if index is not None:
        records = [records[i] for i in index]
    buffers, real, labels, levels, names, sizes = [], [], [], [], [], set()
    for rec in records:
        image, _ = read_image(folder, rec)
        lab = read_labels(folder, rec, image.shape)
        px = pixel_size(folder, rec)
        sizes.add(round(px, 6))
        lo, hi = image_levels(image)
        buffers.append(model_inputs(lab, px, settings))
        real.append(scale_to_levels(image.astype(np.float64), lo, max(hi - lo, 1e-6)).astype(np.float32))
        labels.append(lab)
        levels.append((lo, hi))
        names.append(rec["file_name"])
    if len(sizes) != 1:
        raise InputError(f"{folder / 'annotations.json'}: pixel sizes {sorted(sizes)} (expected one pixel size)")
    return Pairs(buffers, real, labels, levels, names, float(sizes.pop()))
