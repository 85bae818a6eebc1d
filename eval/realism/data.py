"""Image sets for the realism measures: loading any image folder or dataset at one pixel size, black and white
levels, normalisation by them, and crops.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from eval.data.pixels import normalise, resample
from eval.data.reference import read_sem_image
from simulator.io.errors import InputNotFoundError, UserError, existing_folder
from simulator.io.reader import info_bar_start, read_dataset


@dataclass(frozen=True, slots=True)
class ImageSet:
    """A named set of (H, W) float32 images in [0, 1] at one pixel size; ``foreground``: their (H, W) bool
    particle masks where every image of the set has a label map (then C2ST also scores substrate-only crops and
    crops holding particles apart), else None."""

    name: str
    images: tuple[np.ndarray, ...]
    names: tuple[str, ...]
    pixel_size_nm: float
    foreground: tuple[np.ndarray, ...] | None = None


# ----------------------------------------------------------------------------------------------- loading


def _resample_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == shape:
        return mask
    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0


def load_image_set(folder: str | Path, *, pixel_size_nm: float | None = None) -> ImageSet:
    """Images of a semsynth dataset folder (images/ + annotations.json) or of a plain folder of SEM files.

    Plain folders (TIFF/PNG, or the reference layout with SEM/) need the pixel size in their metadata or in
    ``pixel_size_nm``; instrument info bars are removed. Images are scaled to [0, 1] by their bit depth. A
    dataset whose every image has a label map also gives the particle masks (``ImageSet.foreground``).
    """
    folder = existing_folder(folder, expected="a dataset folder or a folder of SEM images")
    images, names, sizes, masks = [], [], [], []
    if (folder / "annotations.json").is_file():
        dataset = read_dataset(folder, labels=False)
        labelled = all(info.get("label_file") for info in dataset.infos)
        dataset = (dataset if not labelled else read_dataset(folder)).checked(need_pixel_size=pixel_size_nm is None)
        for record in dataset:
            cropped = record.without_info_bar()
            images.append(cropped.image)
            names.append(record.file_name)
            sizes.append(float(record.pixel_size_nm or pixel_size_nm or np.nan))
            if labelled:
                masks.append(cropped.labels > 0)
    else:
        from eval.data.ingest import find_pairs

        for path, _ in find_pairs(folder):
            try:
                pixels, meta_px, dtype = read_sem_image(path)
            except Exception as err:  # tifffile and OpenCV raise many kinds: name the file
                raise UserError(path, f"is not a readable image ({err})", "a TIFF or PNG SEM image") from None
            rows = info_bar_start(pixels)
            image = pixels[:rows].astype(np.float32)
            top = float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else max(float(image.max()), 1e-12)
            images.append(image / top)
            names.append(path.name)
            sizes.append(float(meta_px or pixel_size_nm or np.nan))
    if not images:
        raise InputNotFoundError(folder, "no images found", "a dataset folder or TIFF/PNG SEM images")
    missing = [n for n, s in zip(names, sizes, strict=True) if not np.isfinite(s)]
    if missing:
        raise UserError(folder, f"no pixel size for {missing[:3]}", "a pixel size in the metadata, or "
                        "--pixel-size-nm")
    target = float(np.median(sizes))
    images = [resample(im, s / target, upsample="cubic", tolerance=1e-3) for im, s in zip(images, sizes, strict=True)]
    foreground = None
    if masks:
        foreground = tuple(_resample_mask(m, im.shape) for m, im in zip(masks, images, strict=True))
    return ImageSet(folder.name, tuple(images), tuple(names), target, foreground)


def at_pixel_size(images: ImageSet, pixel_size_nm: float) -> ImageSet:
    """The set resampled to another pixel size."""
    factor = images.pixel_size_nm / pixel_size_nm
    resampled = tuple(resample(im, factor, upsample="cubic", tolerance=1e-3) for im in images.images)
    foreground = None
    if images.foreground is not None:
        foreground = tuple(_resample_mask(m, im.shape) for m, im in zip(images.foreground, resampled, strict=True))
    return ImageSet(images.name, resampled, images.names, pixel_size_nm, foreground)


def crop_positions(shapes: list[tuple[int, int]], n: int, crop_px: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) int: image index, top and left of n crops from uniformly chosen images at uniform positions."""
    which = rng.integers(0, len(shapes), n)
    out = np.empty((n, 3), np.int64)
    for i, j in enumerate(which):
        h, w = shapes[j][:2]
        out[i] = j, rng.integers(0, h - crop_px + 1), rng.integers(0, w - crop_px + 1)
    return out


def cut_crops(images: list[np.ndarray], positions: np.ndarray, crop_px: int) -> np.ndarray:
    """(n, crop, crop) float32 crops at ``crop_positions``."""
    out = np.empty((len(positions), crop_px, crop_px), np.float32)
    for i, (j, y, x) in enumerate(positions):
        out[i] = images[j][y : y + crop_px, x : x + crop_px]
    return out


def random_crops(images: list[np.ndarray], n: int, crop_px: int, rng: np.random.Generator) -> np.ndarray:
    """n crops (n, crop, crop) from uniformly chosen images at uniform positions."""
    return cut_crops(images, crop_positions([im.shape for im in images], n, crop_px, rng), crop_px)


def _check_size(images: list[np.ndarray], crop_px: int, set_name: str) -> None:
    small = [im.shape for im in images if min(im.shape) < crop_px]
    if small:
        raise ValueError(f"{set_name}: image(s) of shape {small[0]} smaller than crop_px = {crop_px}")


def normalized(images: ImageSet) -> ImageSet:
    """Each image scaled so that its levels (1st and 99th intensity percentiles) map to 0.25 and 0.75."""
    out = tuple(normalise(im) for im in images.images)
    return ImageSet(images.name, out, images.names, images.pixel_size_nm, images.foreground)
