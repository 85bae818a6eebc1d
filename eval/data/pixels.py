"""Pixel-level helpers every consumer shares: one resampler and one percentile normaliser.

    resample(image, factor)                    area when shrinking, linear (or cubic) when enlarging
    image_levels(image) -> (low, high)         intensity percentiles: the black and white level an operator set
    normalise(image, percentiles=, to=)        those percentiles mapped to ``to`` (float32)

(The one quantizer, output level -> stored integer, is ``simulator.io.files.quantize``.)
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

LEVEL_PERCENTILES = (1.0, 99.0)  # an image's black and white levels: these intensity percentiles
_UPSAMPLE = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}


def resample(array: np.ndarray, factor: float, *, labels: bool = False,
             upsample: Literal["linear", "cubic"] = "linear", tolerance: float = 1e-6) -> np.ndarray:
    """Resize by ``factor`` (new size = round(old * factor), at least 1 px); unchanged when
    ``|factor - 1| < tolerance``. Images: area interpolation when shrinking, ``upsample`` when enlarging;
    label maps (``labels=True``): nearest neighbour, int32."""
    if upsample not in _UPSAMPLE:
        raise ValueError(f"upsample must be 'linear' or 'cubic', got {upsample!r}")
    if abs(factor - 1.0) < tolerance:
        return array
    h, w = array.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    if labels:
        return cv2.resize(array.astype(np.int32), size, interpolation=cv2.INTER_NEAREST)
    return cv2.resize(array, size, interpolation=cv2.INTER_AREA if factor < 1 else _UPSAMPLE[upsample])


def image_levels(image: np.ndarray, percentiles: tuple[float, float] = LEVEL_PERCENTILES) -> tuple[float, float]:
    """(low, high): the image's intensity percentiles (default 1st and 99th), its black and white level as the
    operator set them."""
    low, high = np.percentile(image, percentiles)
    return float(low), float(high)


def scale_to_levels(image, low, span):
    """An image (array or tensor; ``low`` and ``span`` scalars or broadcastable) scaled so that its levels
    ``low`` and ``low + span`` map to 0.25 and 0.75."""
    return (image - low) / span * 0.5 + 0.25


def normalise(image: np.ndarray, *, percentiles: tuple[float, float] = LEVEL_PERCENTILES,
              to: tuple[float, float] = (0.25, 0.75)) -> np.ndarray:
    """The image (float32) with its ``percentiles`` mapped to ``to``; computed in float64."""
    low, high = image_levels(image, percentiles)
    span = max(high - low, 1e-6)
    if to == (0.25, 0.75):
        return scale_to_levels(image.astype(np.float64), low, span).astype(np.float32)
    if to == (0.0, 1.0):
        return ((image.astype(np.float64) - low) / span).astype(np.float32)
    return (((image.astype(np.float64) - low) / span) * (to[1] - to[0]) + to[0]).astype(np.float32)
