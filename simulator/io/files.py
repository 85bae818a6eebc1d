"""File helpers shared by every writer: atomic writes, PNG read / encode / write, package versions."""

from __future__ import annotations

import json
import os
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import numpy as np

_PACKAGES = ("semsynth", "numpy", "scipy", "opencv-python-headless", "pycocotools")


# --------------------------------------------------------------------------------------------------- files
def _file_mode() -> int:
    """Permissions of an ordinary new file under the current umask (mkstemp alone would give 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, flush, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_all(folder: Path, files: dict[str, bytes]) -> None:
    """Several files of one result, all or none: every file is written to a temporary sibling first; only when
    all are written are they renamed into place (in the given order), so a failure while writing leaves the
    earlier files as they were."""
    temps: list[tuple[str, str]] = []
    try:
        for name, data in files.items():
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
            temps.append((name, tmp))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, _FILE_MODE)
        for name, tmp in temps:
            os.replace(tmp, folder / name)
    except BaseException:
        for _, tmp in temps:
            Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any, *, compact: bool = False) -> None:
    """JSON written atomically; ``compact`` drops the indentation (3x faster for large annotation files)."""
    text = json.dumps(obj, separators=(",", ":")) if compact else json.dumps(obj, indent=1)
    atomic_write_bytes(path, (text + "\n").encode())


def quantize(image: np.ndarray, bit_depth: int) -> np.ndarray:
    """Output level -> uint8 or uint16: saturation at 0 and full scale, rounding to the nearest level.

    The one quantizer: ``read_png`` is its inverse (stored value / full scale)."""
    top = (1 << bit_depth) - 1
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return np.rint(np.clip(image, 0.0, 1.0) * top).astype(dtype)


def read_png(path: Path) -> tuple[np.ndarray, int]:
    """(H, W) float32 in [0, 1] and the bit depth (8 or 16) of a grayscale PNG."""
    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise FileNotFoundError(f"{path}: missing or not a readable image")
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: expected an 8- or 16-bit grayscale image, got {pixels.dtype} {pixels.shape}")
    bits = 8 if pixels.dtype == np.uint8 else 16
    return pixels.astype(np.float32) / float((1 << bits) - 1), bits


def write_png(path: Path, array: np.ndarray, *, labels: bool = False) -> None:
    """Encode (see ``encode_png``) and write atomically."""
    atomic_write_bytes(path, encode_png(array, labels=labels))


def encode_png(array: np.ndarray, *, labels: bool = False) -> bytes:
    """Lossless PNG, tuned for speed: no row filters (they cost half the encoding time and do not shrink noisy
    images); Huffman-only deflate for images (noise has no long matches), run-length deflate for label maps."""
    strategy = cv2.IMWRITE_PNG_STRATEGY_RLE if labels else cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, strategy,
              cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
    ok, buf = cv2.imencode(".png", array, params)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def package_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
