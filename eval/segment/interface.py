"""The model protocol: ``model(image, pixel_size_nm) -> Prediction``, input checks and label-map helpers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np


# ------------------------------------------------------------------------------------------------ interface
@dataclass(frozen=True, slots=True)
class Prediction:
    """One image's instances: ``ids`` (H, W) int32, 0 = background, 1..N; ``scores`` id -> confidence or None."""

    ids: np.ndarray
    scores: dict[int, float] | None = None

    def __post_init__(self):
        ids = self.ids
        if not isinstance(ids, np.ndarray) or ids.ndim != 2 or ids.dtype != np.int32:
            got = f"{type(ids).__name__} {getattr(ids, 'dtype', '')} {getattr(ids, 'shape', '')}".strip()
            raise ValueError(f"Prediction.ids must be a 2-D int32 array, got {got}")
        if ids.size and int(ids.min()) < 0:
            raise ValueError(f"Prediction.ids must be >= 0 (0 = background), got minimum {int(ids.min())}")
        if self.scores is not None and not isinstance(self.scores, dict):
            raise ValueError(f"Prediction.scores must be a dict id -> score or None, got {type(self.scores).__name__}")

    @property
    def n_instances(self) -> int:
        return len(np.unique(self.ids[self.ids > 0]))


@runtime_checkable
class Model(Protocol):
    spec: str

    def __call__(self, image: np.ndarray, pixel_size_nm: float, image_info: Mapping | None = None) -> Prediction:
        ...

    def describe(self) -> dict:
        ...


def check_input(image: np.ndarray, pixel_size_nm: float) -> None:
    """Raise a clear error unless ``image`` is (H, W) float in [0, 1] and ``pixel_size_nm`` a positive number."""
    if not isinstance(image, np.ndarray) or image.ndim != 2:
        raise ValueError(f"image must be a 2-D (H, W) array, got {getattr(image, 'shape', type(image).__name__)}")
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"image must be float in [0, 1], got dtype {image.dtype}")
    if image.size and (float(image.min()) < -1e-6 or float(image.max()) > 1 + 1e-6):
        raise ValueError(f"image values must lie in [0, 1], got [{float(image.min())}, {float(image.max())}]")
    if not (isinstance(pixel_size_nm, int | float | np.floating) and math.isfinite(pixel_size_nm)
            and pixel_size_nm > 0):
        raise ValueError(f"pixel_size_nm must be a positive number, got {pixel_size_nm!r}")


def as_prediction(output: Any, shape: tuple[int, int], *, source: str = "model") -> Prediction:
    """A ``Prediction`` from what a model returned: a Prediction or an integer label map of ``shape``."""
    if isinstance(output, Prediction):
        ids, scores = output.ids, output.scores
    elif isinstance(output, np.ndarray):
        ids, scores = output, None
    else:
        raise TypeError(f"{source} returned {type(output).__name__}; expected a Prediction or an (H, W) label map")
    if ids.shape != tuple(shape):
        raise ValueError(f"{source} returned a label map of shape {ids.shape}, expected the image's {tuple(shape)}")
    if ids.dtype != np.int32:
        if not (np.issubdtype(ids.dtype, np.integer) or ids.dtype == bool):
            raise ValueError(f"{source} returned a label map of dtype {ids.dtype}; expected integers")
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) > np.iinfo(np.int32).max):
            raise ValueError(f"{source} returned label ids outside [0, 2^31): [{int(ids.min())}, {int(ids.max())}]")
        ids = ids.astype(np.int32)
    return Prediction(ids=ids, scores=None if scores is None else {int(k): float(v) for k, v in scores.items()})


# -------------------------------------------------------------------------------------- shared post-processing
def relabel_sequential(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids renumbered 1..N in increasing order of the old ids; also returns the old id of each new id (index 0: 0)."""
    old = np.unique(ids)
    if len(old) == 0 or old[0] != 0:
        old = np.concatenate([[0], old])
    lut = np.zeros(int(old[-1]) + 1, np.int32)
    lut[old] = np.arange(len(old), dtype=np.int32)
    return lut[ids], old


def remove_small_instances(ids: np.ndarray, min_area_px: float) -> np.ndarray:
    """Instances of fewer than ``min_area_px`` pixels set to 0; the rest renumbered 1..N."""
    if ids.size == 0:
        return ids.astype(np.int32)
    areas = np.bincount(ids.ravel())
    keep = areas >= min_area_px
    keep[0] = False
    return relabel_sequential(np.where(keep[ids], ids, 0))[0].astype(np.int32)
