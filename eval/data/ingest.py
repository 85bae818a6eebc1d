"""Real SEM images (and their manual masks) into the dataset layout that ``simulate`` writes.

Accepted layouts:
    SRC/SEM/<id>.tif  with  SRC/masks/<id>_m.tif        (the BAM reference layout)
    SRC/<id>.(tif|tiff|png)  with optional  SRC/masks/<id>[_m].*  or  SRC/<id>_m.*
Images: TIFF (8/16 bit) or PNG, grayscale or RGB (converted to luminance). Masks: binary (instances are the
4-connected components of the foreground, as in the reference masks) or integer label images. The pixel size
comes from the instrument metadata (Zeiss CZ_SEM, FEI/Thermo) or, failing that, from ``pixel_size_nm``. An
instrument info bar at the bottom is detected by its layout (a black block at the bottom edge, not any dark
rows) and cut off (image and mask alike). Unreadable files, masks of the wrong size, empty masks, soft-edged
masks (grey levels only at object edges: neither binary nor labels), ambiguous pairs (several mask files, or
several images of one name) and images without a pixel size are reported by name and skipped; when nothing is
left to write, ingest fails (``UserError``) and writes nothing. The dataset is built in a temporary sibling
folder and renamed into place at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from eval.data.reference import read_mask, read_sem_image
from simulator.classes import (
    BAM_COLOURS,
    ClassMaskError,
    ClassMaskFileError,
    class_map_from_rgb,
    class_name,
    classes_from_mask,
)
from simulator.io.errors import InputNotFoundError, UserError, existing_folder
from simulator.io.files import atomic_write_json, package_versions, write_png
from simulator.io.outputs import DATASET, staged_output
from simulator.io.reader import info_bar_start
from simulator.io.records import CATEGORY, FORMAT_VERSION, bbox_of_slices, visible_rles
from simulator.io.writer import merge_records, record_path

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


@dataclass
class IngestReport:
    written: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)


def mask_to_instances(mask: np.ndarray) -> np.ndarray:
    """(H, W) int32 instance ids 1..n: the 4-connected components of a binary mask, or the values of an
    integer label image renumbered 1..n in increasing order (0 stays background)."""
    if mask.ndim == 3:
        mask = mask[..., 0]
    values, inverse = np.unique(mask, return_inverse=True)
    if len(values) <= 2:
        _, labels = cv2.connectedComponents((mask > values.min()).astype(np.uint8), connectivity=4)
        return labels.astype(np.int32)
    return (inverse.reshape(mask.shape) + (0 if values[0] == 0 else 1)).astype(np.int32)


def mask_kind(mask: np.ndarray) -> str:
    """'binary' (two values), 'labels' (integer instance ids: regions of one value) or 'soft' (grey levels only
    at the edges of objects, as anti-aliased or blurred masks have: reading them as labels would make one
    instance per grey level)."""
    if mask.ndim == 3:
        mask = mask[..., 0]
    values = np.unique(mask)
    if len(values) <= 2:
        return "binary"
    if mask.dtype.kind == "f" and not np.array_equal(mask, np.round(mask)):
        return "soft"
    middle = (mask != values[0]) & (mask != values[-1])
    padded = np.pad(mask, 1, mode="edge")
    same = np.ones(mask.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        same &= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]] == mask
    # label maps: most pixels of the in-between ids lie inside their region; soft edges: almost none do
    return "labels" if (middle & same).sum() >= 0.1 * middle.sum() else "soft"


def mask_candidates(src: Path) -> list[tuple[Path, list[Path]]]:
    """(image, every mask file that could belong to it) for every image of a source folder, sorted by name."""
    image_dir = src / "SEM" if (src / "SEM").is_dir() else src
    mask_dirs = [d for d in (src / "masks", image_dir) if d.is_dir()]
    out = []
    for path in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if path.stem.endswith("_m"):
            continue
        masks = [m for d in mask_dirs for stem in (f"{path.stem}_m", path.stem) for m in sorted(d.glob(f"{stem}.*"))
                 if m.suffix.lower() in IMAGE_SUFFIXES and m != path]
        out.append((path, list(dict.fromkeys(masks))))
    return out


def find_pairs(src: Path) -> list[tuple[Path, Path | None]]:
    """(image, mask or None) for every image of a source folder, sorted by name (the first mask candidate)."""
    return [(path, masks[0] if masks else None) for path, masks in mask_candidates(src)]


def _pairing_problems(candidates: list[tuple[Path, list[Path]]]) -> dict[Path, str]:
    """Images whose mask is ambiguous: several mask files, or several images of the same name (a.tif, a.png)."""
    problems = {}
    by_stem: dict[str, list[Path]] = {}
    for path, masks in candidates:
        by_stem.setdefault(path.stem, []).append(path)
        if len(masks) > 1:
            problems[path] = (f"ambiguous mask: {', '.join(str(m) for m in masks)} all match "
                              "(expected one mask per image)")
    for paths in by_stem.values():
        if len(paths) > 1:
            for path in paths:
                problems[path] = (f"ambiguous image: {', '.join(p.name for p in paths)} share a name and a mask "
                                  "(expected one image per name)")
    return problems


def find_class_mask(image_path: Path, class_dirs: list[Path]) -> Path | None:
    """The class mask of an image: ``<dir>/<id>_cm.*`` (BAM's naming) or ``<dir>/<id>.*`` in a class folder."""
    for d in class_dirs:
        for stem in (f"{image_path.stem}_cm", image_path.stem):
            for path in sorted(d.glob(f"{stem}.*")):
                if path.suffix.lower() in IMAGE_SUFFIXES and path != image_path:
                    return path
    return None


def read_class_map(path: Path, colours: dict[str, tuple[int, int, int]] = BAM_COLOURS) -> np.ndarray:
    """(H, W) class codes of an RGB class mask; a ClassMaskError names what is wrong."""
    try:
        rgb = read_mask(path)
    except Exception as err:  # tifffile and OpenCV raise many kinds
        raise ClassMaskError.of(f"unreadable class mask ({err})", "an RGB class mask image (TIFF or PNG)") from None
    if path.suffix.lower() not in (".tif", ".tiff") and rgb.ndim == 3:
        rgb = rgb[..., 2::-1]  # OpenCV reads BGR
    return class_map_from_rgb(rgb, colours)


def _annotations(labels: np.ndarray) -> list[dict]:
    n = int(labels.max())
    if n == 0:
        return []
    height, width = labels.shape
    rles = visible_rles(labels, n)
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    slices = ndimage.find_objects(labels, max_label=n)
    out = []
    for k in range(1, n + 1):
        rows, cols = slices[k - 1]
        out.append({
            "instance_id": k,
            "category_id": CATEGORY["id"],
            "iscrowd": 0,
            "segmentation": rles[k - 1],
            "area": int(areas[k]),
            "bbox": bbox_of_slices(slices[k - 1]),
            "touches_border": bool(rows.start == 0 or cols.start == 0 or rows.stop == height or cols.stop == width),
        })
    return out


def ingest(src: str | Path, out_dir: str | Path, *, pixel_size_nm: float | None = None,
           overwrite: bool = False, classes: str | Path | None = None) -> IngestReport:
    """Convert a folder of real SEM images (and masks) into a dataset; returns what was written and skipped.

    classes: folder of class masks (``<id>_cm.*``, RGB, BAM's colours: green = fully visible, red = fragment,
    blue = under others); without it ``SRC/classes/`` is used when present. Each instance then records its
    ``particle_class`` (majority vote of its pixels; null where the class mask paints none of them).

    The dataset is built in a temporary sibling folder and renamed into place at the end: a failure leaves no
    half-written output. Nothing ingestable (every image skipped) is a ``UserError`` and writes nothing.
    """
    src, out_dir = Path(src), Path(out_dir)
    class_dirs = [Path(classes)] if classes is not None else [d for d in (src / "classes",) if d.is_dir()]
    if classes is not None and not class_dirs[0].is_dir():
        raise FileNotFoundError(f"{classes}: class mask folder not found (expected a folder of <id>_cm.tif files)")
    existing_folder(src, expected="a folder of SEM images (SEM/<id>.tif + masks/<id>_m.tif, or flat)")
    candidates = mask_candidates(src)
    if not candidates:
        raise InputNotFoundError(src, "no images found", f"image files ({', '.join(IMAGE_SUFFIXES)})")
    ambiguous = _pairing_problems(candidates)
    report = IngestReport()
    with staged_output(out_dir, DATASET, "ingest", overwrite=overwrite) as stage:
        for sub in ("images", "labels", "records"):
            (stage / sub).mkdir()
        atomic_write_json(stage / "run.json", {"generator": "semsynth ingest", "source": str(src.resolve())})
        index = 0
        for image_path, masks in candidates:
            if image_path in ambiguous:
                report.skipped.append((str(image_path), ambiguous[image_path]))
                continue
            if _ingest_one(image_path, masks[0] if masks else None, class_dirs, stage, index, pixel_size_nm,
                           report):
                index += 1
        if index == 0:
            reasons = "; ".join(f"{Path(name).name}: {reason}" for name, reason in report.skipped[:5])
            raise UserError(src, f"no image could be ingested ({reasons})", "at least one readable image with a "
                            "pixel size and, where given, a binary or label mask of its size")
        counts = merge_records(stage, index)
        atomic_write_json(stage / "manifest.json", {
            "generator": "semsynth ingest",
            "format_version": FORMAT_VERSION,
            "source": str(src),
            "n_images": index,
            "counts": counts,
            "skipped": [{"file": f, "reason": r} for f, r in report.skipped],
            "packages": package_versions(),
        })
    return report


def _ingest_one(image_path: Path, mask_path: Path | None, class_dirs: list[Path], out_dir: Path, index: int,
                pixel_size_nm: float | None, report: IngestReport) -> bool:
    """Write image ``index`` (and its labels and record) from one source pair; False (and a reason in
    ``report.skipped``) when it cannot be used."""
    try:
        pixels, meta_px, dtype = read_sem_image(image_path)
    except Exception as err:  # tifffile and OpenCV raise many kinds; the file is reported, not fatal
        report.skipped.append((str(image_path), f"unreadable image ({err})"))
        return False
    pixel_nm = meta_px or pixel_size_nm
    if pixel_nm is None:
        report.skipped.append((str(image_path), "no pixel size in its metadata; pass --pixel-size-nm"))
        return False
    rows = info_bar_start(pixels)
    labels = None
    if mask_path is not None:
        try:
            mask = read_mask(mask_path)
        except Exception as err:  # as for images: reported and skipped
            report.skipped.append((str(mask_path), f"unreadable mask ({err})"))
            return False
        if mask.shape[:2] != pixels.shape:
            report.skipped.append((str(mask_path), f"mask size {mask.shape[:2]} != image size {pixels.shape}"))
            return False
        if mask_kind(mask) == "soft":
            report.skipped.append((str(mask_path), f"mask has {len(np.unique(mask))} grey levels at object edges "
                                   "(anti-aliased or blurred; expected a binary mask or an integer label map)"))
            return False
        labels = mask_to_instances(mask[:rows])
        if labels.max() == 0:
            report.skipped.append((str(mask_path), "empty mask (no foreground pixel)"))
            return False
    annotations = _annotations(labels) if labels is not None else []
    class_path = find_class_mask(image_path, class_dirs) if labels is not None and class_dirs else None
    if class_path is not None:
        try:
            class_map = read_class_map(class_path)
            if class_map.shape[1] != labels.shape[1] or class_map.shape[0] > pixels.shape[0]:
                raise ClassMaskError.of(f"class mask size {class_map.shape} does not fit the image {pixels.shape}",
                                        "the same width and at most its height")
        except ClassMaskError as err:  # wrong labels are worse than none: stop, naming the file
            raise ClassMaskFileError.naming(class_path, err) from None
        codes = classes_from_mask(labels, class_map)
        for ann in annotations:
            ann["particle_class"] = class_name(codes.get(ann["instance_id"], 0))
    image = pixels[:rows]
    stem = f"{index:06d}"
    if dtype not in (np.uint8, np.uint16):  # float or 32-bit images: rescale to 16 bit
        image = np.clip((image - image.min()) / max(float(np.ptp(image)), 1e-12) * 65535, 0, 65535)
        image = image.astype(np.uint16)
    write_png(out_dir / "images" / f"{stem}.png", image)
    if labels is not None:
        write_png(out_dir / "labels" / f"{stem}.png", labels.astype(np.uint16), labels=True)
    record = {
        "image": {
            "file_name": f"{stem}.png",
            "label_file": f"labels/{stem}.png" if labels is not None else None,
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "pixel_size_nm": float(pixel_nm),
            "pixel_size_source": "metadata" if meta_px else "--pixel-size-nm",
            "source": str(image_path),
            "mask_source": None if mask_path is None else str(mask_path),
            "class_source": None if class_path is None else str(class_path),
            "info_bar_rows_removed": int(pixels.shape[0] - rows),
            "image_index": index,
            "coverage": float((labels > 0).mean()) if labels is not None else None,
            "hidden_particles": [],
        },
        "annotations": annotations,
    }
    atomic_write_json(record_path(out_dir, index), record, compact=True)
    report.written.append(str(image_path))
    return True
