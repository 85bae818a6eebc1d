"""Dataset folders -> ``Pairs`` (training) and label maps -> model inputs (applying). Needs the simulator's
shading stage (and so its packages); ``train`` itself does not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from refiner.appearance.inputs import RenderSettings, model_inputs
from refiner.appearance.train import Pairs
from simulator.io.errors import UserError
from simulator.io.files import read_png
from simulator.io.reader import read_coco, read_label_map


class InputError(ValueError):
    """A bad input file: ``str(err)`` is ``<file>: <what> (expected ...)``."""


def read_records(folder: str | Path) -> list[dict]:
    """The ``images`` records of DIR/annotations.json (through the one dataset reader)."""
    try:
        images = list(read_coco(Path(folder))["images"])
    except UserError as err:
        raise InputError(str(err)) from None
    if not images:
        raise InputError(f"{Path(folder) / 'annotations.json'}: no images listed (expected a non-empty 'images' list)")
    return images


def read_image(folder: Path, rec: dict) -> tuple[np.ndarray, int]:
    """(H, W) float32 in [0, 1] and its bit depth."""
    try:
        return read_png(Path(folder) / "images" / rec["file_name"])
    except (FileNotFoundError, ValueError) as err:
        raise InputError(f"{err} (expected an 8- or 16-bit grayscale PNG)") from None


def read_labels(folder: Path, rec: dict, shape: tuple[int, int] | None = None) -> np.ndarray:
    if not rec.get("label_file"):
        raise InputError(f"{Path(folder) / 'annotations.json'}: image {rec.get('file_name')!r} has no label_file "
                         "(expected label maps: simulate with output.label_maps = true, or ingest with masks)")
    if shape is None:
        shape = (int(rec["height"]), int(rec["width"]))
    try:
        return read_label_map(Path(folder), rec, shape)
    except (FileNotFoundError, ValueError) as err:
        raise InputError(f"{err} (expected a single-channel integer label PNG of the image's size)") from None


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
