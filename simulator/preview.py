"""Preview pictures: images with their instance contours, tiled into a contact sheet."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def instance_boundaries(instance_id: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels of an instance whose 4-neighbour belongs to another label."""
    ids = np.pad(instance_id, 1, mode="edge")
    centre = ids[1:-1, 1:-1]
    edge = np.zeros(centre.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= ids[dy : dy + centre.shape[0], dx : dx + centre.shape[1]] != centre
    return edge & (centre > 0)


def overlay(image_u8: np.ndarray, instance_id: np.ndarray) -> np.ndarray:
    """Grayscale uint8 image -> BGR with each instance's boundary in a colour of its own."""
    bgr = cv2.cvtColor(image_u8, cv2.COLOR_GRAY2BGR)
    edge = instance_boundaries(instance_id)
    if not edge.any():  # no particle in view: nothing to draw
        return bgr
    ids = instance_id[edge].astype(np.int64)
    hue = (ids * 47) % 180
    hsv = np.stack([hue, np.full_like(hue, 220), np.full_like(hue, 255)], axis=1).astype(np.uint8)
    bgr[edge] = cv2.cvtColor(hsv[None], cv2.COLOR_HSV2BGR)[0]
    return bgr


def contact_sheet(tiles: list[np.ndarray], columns: int = 2, gap_px: int = 6) -> np.ndarray:
    """Tile equally sized BGR (or grayscale) images into one picture with white gaps."""
    tiles = [cv2.cvtColor(t, cv2.COLOR_GRAY2BGR) if t.ndim == 2 else t for t in tiles]
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    sheet = np.full((rows * h + (rows - 1) * gap_px, columns * w + (columns - 1) * gap_px, 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        sheet[r * (h + gap_px) : r * (h + gap_px) + h, c * (w + gap_px) : c * (w + gap_px) + w] = tile
    return sheet


def dataset_preview(dataset: Path, max_images: int = 2) -> np.ndarray:
    """Contact sheet (BGR uint8) of the first images of a dataset with their visible-instance contours."""
    from simulator.io.files import quantize
    from simulator.io.reader import read_dataset

    tiles = []
    for record in read_dataset(dataset)[:max_images]:
        pixels = quantize(record.image, record.bit_depth)
        if pixels.dtype == np.uint16:
            pixels = (pixels >> 8).astype(np.uint8)
        tiles.append(cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR))
        if record.labels is not None:
            tiles.append(overlay(pixels, record.labels))
    return contact_sheet(tiles, columns=2)
