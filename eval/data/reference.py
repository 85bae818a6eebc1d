"""Reading the real reference images (BAM TiO2 layout: SEM/<id>.tif with masks/<id>_m.tif).

The images are never copied into this repository: they are read from ``../shared/data/bam-tio2-sem`` (or any
folder with the same layout) at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile

from simulator.io.reader import info_bar_start

DEFAULT_REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "bam-tio2-sem"
_UNITS_NM = {"nm": 1.0, "um": 1e3, "µm": 1e3, "pm": 1e-3, "fm": 1e-6, "m": 1e9}


@dataclass(frozen=True, slots=True)
class ReferenceImage:
    name: str
    image: np.ndarray  # (H, W) float32 in [0, 1], info bar removed
    foreground: np.ndarray | None  # (H, W) bool manual mask, or None
    pixel_size_nm: float | None


def zeiss_pixel_size_nm(tif: tifffile.TiffFile) -> float | None:
    """Pixel size from the Zeiss CZ_SEM tag ('ap_image_pixel_size' or 'ap_pixel_size'), in nm."""
    tag = tif.pages[0].tags.get("CZ_SEM")
    if tag is None or not isinstance(tag.value, dict):
        return None
    for key in ("ap_image_pixel_size", "ap_pixel_size"):
        entry = tag.value.get(key)
        if entry and len(entry) >= 3 and entry[2] in _UNITS_NM and float(entry[1]) > 0:
            return float(entry[1]) * _UNITS_NM[entry[2]]
    return None


def _fei_pixel_size_nm(tif: tifffile.TiffFile) -> float | None:
    meta = tif.fei_metadata
    try:
        return float(meta["Scan"]["PixelWidth"]) * 1e9 if meta else None
    except (KeyError, TypeError, ValueError):
        return None


def read_sem_image(path: Path) -> tuple[np.ndarray, float | None, np.dtype]:
    """(H, W) grayscale array as stored (integer or float), pixel size from metadata (nm) or None, dtype."""
    if path.suffix.lower() in (".tif", ".tiff"):
        with tifffile.TiffFile(path) as tif:
            pixels = tif.pages[0].asarray()
            pixel_size = zeiss_pixel_size_nm(tif) or _fei_pixel_size_nm(tif)
    else:
        pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if pixels is None:
            raise ValueError("not a readable image")
        if pixels.ndim == 3:
            pixels = pixels[..., ::-1]  # OpenCV reads BGR(A)
        pixel_size = None
    if pixels.ndim == 3:
        rgb = pixels[..., :3].astype(np.float64)
        pixels = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]).round().astype(pixels.dtype)
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale or RGB image, got shape {pixels.shape}")
    return pixels, pixel_size, pixels.dtype


def read_mask(path: Path) -> np.ndarray:
    """A mask image as stored (TIFF or PNG)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        return tifffile.imread(path)
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise ValueError("not a readable image")
    return mask


def load_reference(folder: str | Path = DEFAULT_REFERENCE, limit: int | None = None) -> list[ReferenceImage]:
    """Every SEM/<id>.tif of the folder (sorted), with masks/<id>_m.tif when present."""
    folder = Path(folder)
    paths = sorted((folder / "SEM").glob("*.tif"))
    if not paths:
        raise FileNotFoundError(f"{folder}: no SEM/*.tif images")
    out = []
    for path in paths[:limit]:
        raw, pixel_size, dtype = read_sem_image(path)
        top = float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0
        rows = info_bar_start(raw)
        mask_path = folder / "masks" / f"{path.stem}_m.tif"
        mask = read_mask(mask_path)[:rows] > 0 if mask_path.exists() else None
        out.append(ReferenceImage(path.stem, (raw[:rows] / top).astype(np.float32), mask, pixel_size))
    return out
