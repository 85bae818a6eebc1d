"""Real SEM images (and their manual masks) into the dataset layout that ``simulate`` writes.

Accepted layouts:
    SRC/SEM/<id>.tif  with  SRC/masks/<id>_m.tif        (the BAM reference layout)
    SRC/<id>.(tif|tiff|png)  with optional  SRC/masks/<id>[_m].*  or  SRC/<id>_m.*
Images: TIFF (8/16 bit) or PNG, grayscale or RGB (converted to luminance). Masks: binary (instances are the
4-connected components of the foreground, as in the reference masks) or integer label images. The pixel size
comes from the instrument metadata (Zeiss CZ_SEM, FEI/Thermo) or, failing that, from ``pixel_size_nm``. An
instrument info bar at the bottom is detected and cut off (image and mask alike). Unreadable files, masks of
the wrong size, empty masks and images without a pixel size are reported by name and skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from eval.data.reference import read_mask, read_sem_image
from simulator.classes import BAM_COLOURS, ClassMaskError, class_map_from_rgb, class_name, classes_from_mask
from simulator.io.files import atomic_write_json, package_versions, write_png
from simulator.io.reader import info_bar_start
from simulator.io.records import CATEGORY, FORMAT_VERSION, bbox_of_slices, visible_rles
from simulator.io.writer import merge_records, prepare_output_dir, record_path

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


def find_pairs(src: Path) -> list[tuple[Path, Path | None]]:
    """(image, mask or None) for every image of a source folder, sorted by name."""
    image_dir = src / "SEM" if (src / "SEM").is_dir() else src
    mask_dirs = [d for d in (src / "masks", image_dir) if d.is_dir()]
    pairs = []
    for path in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if path.stem.endswith("_m"):
            continue
        mask = next(
            (m for d in mask_dirs for stem in (f"{path.stem}_m", path.stem) for m in sorted(d.glob(f"{stem}.*"))
             if m.suffix.lower() in IMAGE_SUFFIXES and m != path),
            None,
        )
        pairs.append((path, mask))
    return pairs


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
        raise ClassMaskError(f"unreadable class mask ({err})") from None
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
    """
    src, out_dir = Path(src), Path(out_dir)
    class_dirs = [Path(classes)] if classes is not None else [d for d in (src / "classes",) if d.is_dir()]
    if classes is not None and not class_dirs[0].is_dir():
        raise FileNotFoundError(f"{classes}: class mask folder not found (expected a folder of <id>_cm.tif files)")
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a folder")
    pairs = find_pairs(src)
    if not pairs:
        raise FileNotFoundError(f"{src}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    prepare_output_dir(out_dir, overwrite)
    atomic_write_json(out_dir / "run.json", {"generator": "semsynth ingest", "source": str(src.resolve())})
    report = IngestReport()
    index = 0
    for image_path, mask_path in pairs:
        try:
            pixels, meta_px, dtype = read_sem_image(image_path)
        except Exception as err:  # tifffile and OpenCV raise many kinds; the file is reported, not fatal
            report.skipped.append((str(image_path), f"unreadable image ({err})"))
            continue
        pixel_nm = meta_px or pixel_size_nm
        if pixel_nm is None:
            report.skipped.append((str(image_path), "no pixel size in its metadata; pass --pixel-size-nm"))
            continue
        rows = info_bar_start(pixels)
        labels = None
        if mask_path is not None:
            try:
                mask = read_mask(mask_path)
            except Exception as err:  # as for images: reported and skipped
                report.skipped.append((str(mask_path), f"unreadable mask ({err})"))
                continue
            if mask.shape[:2] != pixels.shape:
                report.skipped.append((str(mask_path), f"mask size {mask.shape[:2]} != image size {pixels.shape}"))
                continue
            labels = mask_to_instances(mask[:rows])
            if labels.max() == 0:
                report.skipped.append((str(mask_path), "empty mask (no foreground pixel)"))
                continue
        annotations = _annotations(labels) if labels is not None else []
        class_path = find_class_mask(image_path, class_dirs) if labels is not None and class_dirs else None
        if class_path is not None:
            try:
                class_map = read_class_map(class_path)
                if class_map.shape[1] != labels.shape[1] or class_map.shape[0] > pixels.shape[0]:
                    raise ClassMaskError(f"class mask size {class_map.shape} does not fit the image "
                                         f"{pixels.shape} (expected the same width and at most its height)")
            except ClassMaskError as err:  # wrong labels are worse than none: stop, naming the file
                raise ClassMaskError(f"{class_path}: {err}") from None
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
        index += 1
    counts = merge_records(out_dir, index)
    atomic_write_json(out_dir / "manifest.json", {
        "generator": "semsynth ingest",
        "format_version": FORMAT_VERSION,
        "source": str(src),
        "n_images": index,
        "counts": counts,
        "skipped": [{"file": f, "reason": r} for f, r in report.skipped],
        "packages": package_versions(),
    })
    return report

