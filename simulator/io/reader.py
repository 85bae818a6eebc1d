"""The only dataset reader: any dataset folder (simulated, ingested, refined) as a sequence of image records.

    DIR/annotations.json (images, annotations) + DIR/images/*.png + DIR/labels/*.png
        -> read_dataset(DIR) -> Dataset (ordered as annotations.json lists the images; each image is read from
           disk when it is accessed, so iterating is lazy and ``list(dataset)`` is eager)
        -> ImageRecord (image, labels, pixel_size_nm, annotations, ignore ids, info bar rows)

The info bar is handled here and only here: ``info_bar_start`` finds it by its layout (a black block at the bottom),
``ImageRecord.content_rows`` is its first row and ``ImageRecord.without_info_bar()`` drops it. Ingested
datasets have it removed already; simulated ones keep it in the image, with label 0 below the particles.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, overload

import cv2
import numpy as np

from simulator.io.check import image_file_errors, read_annotations
from simulator.io.errors import UserError, read_json
from simulator.io.files import read_png
from simulator.io.records import counted_ignore_ids


def info_bar_start(image: np.ndarray, min_zero_fraction: float = 0.5, max_bar_fraction: float = 0.25) -> int:
    """First row of the instrument info bar at the bottom, or the height if there is none.

    The bar is found by its layout: one block of rows that are mostly exact black (text and scale bar aside),
    reaching the bottom edge (up to a thin frame of 1 % of the height, at least 2 rows, below it) and no taller
    than ``max_bar_fraction`` of the image. A dark band inside the image, with image rows below it, is not a bar
    (the BAM Zeiss images: 1024 x 768 px, bar in rows 712-765 above a 2-row frame, image = the first 712 rows).
    """
    height = image.shape[0]
    if height == 0:
        return 0
    dark = (image == 0).mean(axis=tuple(range(1, image.ndim))) >= min_zero_fraction
    frame = max(2, height // 100)
    bottom = next((row for row in range(height - 1, max(height - 1 - frame, -1), -1) if dark[row]), None)
    if bottom is None:
        return height
    start = bottom
    while start > 0 and dark[start - 1]:
        start -= 1
    if height - start > max_bar_fraction * height:  # too tall for a bar: a dark image, not a layout
        return height
    return start


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One image of a dataset, with everything known about it.

    ``annotations`` are the image's COCO records (``instance_id``, ``category_id``, ``touches_border``,
    ``occluded_fraction``, ...): a per-instance class is one more key of theirs, read through ``categories``.
    """

    index: int  # position in annotations.json's ``images``
    info: Mapping[str, Any]  # the COCO image record (``id``, ``file_name``, ``label_file``, ``pixel_size_nm``, ...)
    image: np.ndarray  # (H, W) float32 in [0, 1] (stored value / full scale), as stored: info bar rows included
    bit_depth: int  # 8 or 16, as stored
    labels: np.ndarray | None  # (H, W) int32 instance ids, 0 = background; None when absent or not read
    annotations: tuple[Mapping[str, Any], ...]

    @property
    def image_id(self) -> int:
        return int(self.info["id"])

    @property
    def file_name(self) -> str:
        """Relative to DIR/images/."""
        return str(self.info["file_name"])

    @property
    def pixel_size_nm(self) -> float | None:
        value = self.info.get("pixel_size_nm")
        return None if value is None else float(value)

    @property
    def content_rows(self) -> int:
        """Rows above the instrument info bar (the height when there is none)."""
        return info_bar_start(self.image)

    def without_info_bar(self) -> ImageRecord:
        """The record with the info bar rows dropped from the image and the label map."""
        rows = self.content_rows
        labels = None if self.labels is None else self.labels[:rows]
        return replace(self, image=self.image[:rows], labels=labels)

    def ignore_ids(self, max_occluded_fraction: float = 0.5, measured_class: str | None = None) -> frozenset[int]:
        """Instance ids that are ignore regions. With ``measured_class`` and annotations that carry particle
        classes: every particle not of that class, and border particles; otherwise particles cut by the border
        or hidden beyond ``max_occluded_fraction`` (``records.counted_ignore_ids``)."""
        return counted_ignore_ids(self.annotations, measured_class=measured_class,
                                  max_occluded_fraction=max_occluded_fraction)

    def categories(self) -> dict[int, int]:
        """Instance id -> ``category_id`` of every annotated instance."""
        return {int(a["instance_id"]): int(a["category_id"]) for a in self.annotations if "instance_id" in a}


def read_coco(folder: Path, *, need_pixel_size: bool = False) -> dict:
    """DIR/annotations.json, checked for the structure every reader needs (``simulator.io.check``): a missing,
    malformed or misshapen file is a ``UserError`` naming it."""
    return read_annotations(folder, need_pixel_size=need_pixel_size)


def read_label_map(folder: Path, info: Mapping[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    """The image's label map, (H, W) int32; it must have the image's shape."""
    path = Path(folder) / info["label_file"]
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise FileNotFoundError(f"{path}: missing or unreadable label map")
    if raw.shape != tuple(shape):
        raise ValueError(f"{path}: label map {raw.shape} != image {tuple(shape)}")
    return raw.astype(np.int32)


@dataclass(frozen=True, slots=True)
class Dataset(Sequence[ImageRecord]):
    """The images of a dataset folder in annotations.json order; ``dataset[i]`` reads image i from disk."""

    folder: Path
    infos: tuple[Mapping[str, Any], ...]  # COCO image records, in order
    annotations: Mapping[int, tuple[Mapping[str, Any], ...]]  # image id -> its annotations
    labels: bool  # read label maps (where an image has one)
    indices: tuple[int, ...]  # positions in annotations.json of the images this sequence holds

    def __len__(self) -> int:
        return len(self.indices)

    @overload
    def __getitem__(self, i: int) -> ImageRecord: ...
    @overload
    def __getitem__(self, i: slice) -> Dataset: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return replace(self, indices=self.indices[i])
        index = self.indices[i]
        info = self.infos[index]
        image, bits = read_png(self.folder / "images" / info["file_name"])
        labels = None
        if self.labels and info.get("label_file"):
            labels = read_label_map(self.folder, info, image.shape)
        return ImageRecord(index, info, image, bits, labels, self.annotations.get(info.get("id"), ()))

    def __iter__(self) -> Iterator[ImageRecord]:
        return (self[k] for k in range(len(self)))

    def pixel_sizes_nm(self) -> list[float | None]:
        """Every image's pixel size, without reading the images."""
        return [None if self.infos[k].get("pixel_size_nm") is None else float(self.infos[k]["pixel_size_nm"])
                for k in self.indices]

    def labelled(self) -> Dataset:
        """Only the images that have a label map."""
        return replace(self, indices=tuple(k for k in self.indices if self.infos[k].get("label_file")))

    def checked(self, *, need_pixel_size: bool = True) -> Dataset:
        """This sequence, after checking every image's files (readable, grayscale, of the record's size; label
        maps of the image's size) and pixel size: the first problem is a ``UserError`` naming the file. Costs a
        decode of every image: callers run it before expensive work, so that bad input fails at once."""
        for k in self.indices:
            info = self.infos[k]
            errors = image_file_errors(self.folder, info) if self.labels else image_file_errors(
                self.folder, {**info, "label_file": None})
            if errors:
                raise errors[0]
            px = info.get("pixel_size_nm")
            if need_pixel_size and not (isinstance(px, int | float) and px > 0):
                raise UserError(self.folder / "annotations.json", f"image {info['file_name']!r} has pixel_size_nm "
                                f"{px!r}", "a number > 0 (nm per pixel)")
        return self


def read_dataset(folder: str | Path, *, labels: bool = True) -> Dataset:
    """Every image of a dataset folder (simulated, ingested or refined), read lazily; with ``labels`` the label
    maps too (where an image has one; ``Dataset.labelled()`` keeps only those)."""
    folder = Path(folder)
    coco = read_coco(folder)
    images = coco["images"]
    by_image: dict[int, list[Mapping[str, Any]]] = {}
    for ann in coco.get("annotations", []):
        by_image.setdefault(ann["image_id"], []).append(ann)
    return Dataset(folder, tuple(images), {k: tuple(v) for k, v in by_image.items()}, labels,
                   tuple(range(len(images))))


def read_manifest(folder: str | Path) -> dict | None:
    """DIR/manifest.json (how a simulated dataset was made), or None when absent."""
    path = Path(folder) / "manifest.json"
    return read_json(path, expected="the dataset's manifest (JSON)") if path.is_file() else None
