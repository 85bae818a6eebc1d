"""The only dataset reader: any dataset folder (simulated, ingested, refined) as a sequence of image records.

    DIR/annotations.json (images, annotations) + DIR/images/*.png + DIR/labels/*.png
        -> read_dataset(DIR) -> Dataset (ordered as annotations.json lists the images; each image is read from
           disk when it is accessed, so iterating is lazy and ``list(dataset)`` is eager)
        -> ImageRecord (image, labels, pixel_size_nm, annotations, ignore ids, info bar rows)

The info bar is handled here and only here: ``info_bar_start`` finds it (rows mostly exact black at the bottom),
``ImageRecord.content_rows`` is its first row and ``ImageRecord.without_info_bar()`` drops it. Ingested
datasets have it removed already; simulated ones keep it in the image, with label 0 below the particles.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, overload

import cv2
import numpy as np

from simulator.io.files import read_png
from simulator.io.records import counted_ignore_ids


def info_bar_start(image: np.ndarray, min_zero_fraction: float = 0.5) -> int:
    """First row of the instrument info bar at the bottom (rows mostly exact black), or the height if none.

    Only the bottom quarter is searched: an SEM image row is almost never half exact zeros.
    """
    zero_fraction = (image == 0).mean(axis=1)
    start = image.shape[0]
    for row in range(image.shape[0] - 1, int(image.shape[0] * 0.75), -1):
        if zero_fraction[row] >= min_zero_fraction:
            start = row
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


def read_coco(folder: Path) -> dict:
    """DIR/annotations.json, with a clear error when the folder is not a dataset."""
    path = Path(folder) / "annotations.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no annotations.json (expected a semsynth dataset folder: images/ + "
                                "annotations.json, e.g. written by `cli.py simulate` or `cli.py ingest`)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


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


def read_dataset(folder: str | Path, *, labels: bool = True) -> Dataset:
    """Every image of a dataset folder (simulated, ingested or refined), read lazily; with ``labels`` the label
    maps too (where an image has one; ``Dataset.labelled()`` keeps only those)."""
    folder = Path(folder)
    coco = read_coco(folder)
    images = coco.get("images")
    if not isinstance(images, list):
        raise ValueError(f"{folder / 'annotations.json'}: no images listed")
    by_image: dict[int, list[Mapping[str, Any]]] = {}
    for ann in coco.get("annotations", []):
        by_image.setdefault(ann["image_id"], []).append(ann)
    return Dataset(folder, tuple(images), {k: tuple(v) for k, v in by_image.items()}, labels,
                   tuple(range(len(images))))


def read_manifest(folder: str | Path) -> dict | None:
    """DIR/manifest.json (how a simulated dataset was made), or None when absent."""
    path = Path(folder) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None
