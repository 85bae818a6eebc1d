"""Datasets in, random unpaired crops out.

    dataset folder (images/*.png, labels/*.png, annotations.json) -> DatasetImage (float32 [0, 1], ids, px)
        -> conditioning channels (foreground, instance boundaries) -> CropSampler -> CropBatch (torch)

Real data is any folder in the semsynth layout (``cli.py ingest`` writes one); its labels are never used.
Synthetic data needs its label maps when the refiner is conditioned on them (the default). Unpaired sampling
lives in ``CropSampler``, which draws every crop position and flip from one explicit ``torch.Generator`` whose
state is saved in checkpoints, so a resumed run draws the same crops as an uninterrupted one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from eval.calibrate.image_stats import boundary_map
from eval.realism.data import image_levels  # the levels eval.realism normalises by
from simulator.io.files import read_png

N_CONDITION_CHANNELS = 2  # foreground, instance boundary


@dataclass(frozen=True, slots=True)
class DatasetImage:
    """One image of a dataset folder."""

    file_name: str  # relative to DIR/images/
    image: np.ndarray  # (H, W) float32 in [0, 1] (stored value / full scale)
    labels: np.ndarray | None  # (H, W) int32 instance ids, 0 = background; None when not loaded / absent
    pixel_size_nm: float
    bit_depth: int  # 8 or 16, as stored


def read_coco_images(folder: str | Path) -> list[dict]:
    """The ``images`` records of DIR/annotations.json, with a clear error when the folder is not a dataset."""
    folder = Path(folder)
    path = folder / "annotations.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no annotations.json (expected a semsynth dataset folder: "
                                "images/ + annotations.json, e.g. written by `cli.py simulate` or `cli.py ingest`)")
    images = json.loads(path.read_text()).get("images")
    if not isinstance(images, list) or not images:
        raise ValueError(f"{path}: no images listed")
    return images


def load_dataset(folder: str | Path, *, labels: bool, limit: int | None = None,
                 skip: int = 0) -> list[DatasetImage]:
    """Images ``skip .. skip + limit`` of a dataset folder (annotation order); with ``labels=True`` every image
    must have a label map of its size."""
    folder = Path(folder)
    records = read_coco_images(folder)[skip:]
    if limit is not None:
        records = records[:limit]
    out = []
    for rec in records:
        image, bits = read_png(folder / "images" / rec["file_name"])
        ids = None
        if labels:
            if not rec.get("label_file"):
                raise ValueError(f"{folder}: image {rec['file_name']!r} has no label map (label_file is null); "
                                 "the refiner is conditioned on labels: simulate with output.label_maps = true")
            raw = cv2.imread(str(folder / rec["label_file"]), cv2.IMREAD_UNCHANGED)
            if raw is None:
                raise FileNotFoundError(f"{folder / rec['label_file']}: missing or unreadable label map")
            if raw.shape != image.shape:
                raise ValueError(f"{folder / rec['label_file']}: label map {raw.shape} != image {image.shape}")
            ids = raw.astype(np.int32)
        px = rec.get("pixel_size_nm")
        if px is None or not px > 0:
            raise ValueError(f"{folder}: image {rec['file_name']!r} has pixel_size_nm {px!r}, expected > 0")
        out.append(DatasetImage(rec["file_name"], image, ids, float(px), bits))
    return out


def condition_channels(labels: np.ndarray) -> np.ndarray:
    """(2, H, W) float32 conditioning from a label map: foreground (id > 0) and instance boundaries."""
    return np.stack([labels > 0, boundary_map(labels)]).astype(np.float32)


def resample_to(image: np.ndarray, from_nm: float, to_nm: float) -> np.ndarray:
    """Rescale an image from one pixel size to another (area interpolation when shrinking)."""
    if abs(from_nm / to_nm - 1) < 1e-3:
        return image
    scale = from_nm / to_nm
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interp)


@dataclass(frozen=True, slots=True)
class CropBatch:
    synthetic: torch.Tensor  # (B, 1, h, w) float32 in [0, 1]
    condition: torch.Tensor  # (B, C, h, w) float32 (C = 0 when unconditioned)
    real: torch.Tensor  # (B, 1, h, w) float32 in [0, 1], drawn independently of ``synthetic``
    synthetic_levels: torch.Tensor  # (B, 2): ``image_levels`` of the whole image each synthetic crop came from
    real_levels: torch.Tensor  # (B, 2): the same for the real crops


class CropSampler:
    """Unpaired random crops: synthetic crops (with their conditioning) and real crops drawn independently,
    each with a random horizontal/vertical flip (no transposition: scan lines stay horizontal).

    Every random choice comes from ``generator``; save ``generator.get_state()`` to resume the same sequence.
    """

    def __init__(self, synthetic: list[DatasetImage], real: list[DatasetImage], crop_px: int, *,
                 condition: bool, generator: torch.Generator):
        if not synthetic or not real:
            raise ValueError(f"need synthetic and real images, got {len(synthetic)} and {len(real)}")
        small = [d.file_name for d in (*synthetic, *real) if min(d.image.shape) < crop_px]
        if small:
            raise ValueError(f"crop_px={crop_px} is larger than images {small[:3]} (smallest side "
                             f"{min(min(d.image.shape) for d in (*synthetic, *real))} px)")
        if condition and any(d.labels is None for d in synthetic):
            raise ValueError("condition=True needs the label maps of every synthetic image")
        self.crop_px = crop_px
        self.condition = condition
        self.generator = generator
        self._syn = [torch.from_numpy(d.image)[None] for d in synthetic]
        self._cond = [torch.from_numpy(condition_channels(d.labels)) if condition else torch.zeros(0, *d.image.shape)
                      for d in synthetic]
        self._real = [torch.from_numpy(d.image)[None] for d in real]
        self._syn_levels = torch.tensor([image_levels(d.image) for d in synthetic], dtype=torch.float32)
        self._real_levels = torch.tensor([image_levels(d.image) for d in real], dtype=torch.float32)

    @property
    def real_levels(self) -> torch.Tensor:
        """(n, 2) float32 ``image_levels`` of every real image."""
        return self._real_levels

    def _crop(self, arrays: list[torch.Tensor], top: int, left: int, flips: torch.Tensor) -> list:
        out = []
        for a in arrays:
            c = a[:, top : top + self.crop_px, left : left + self.crop_px]
            if flips[0]:
                c = c.flip(-1)
            if flips[1]:
                c = c.flip(-2)
            out.append(c)
        return out

    def _draw(self, images: list[torch.Tensor]) -> tuple[int, int, int, torch.Tensor]:
        g = self.generator
        index = int(torch.randint(len(images), (1,), generator=g))
        h, w = images[index].shape[-2:]
        top = int(torch.randint(h - self.crop_px + 1, (1,), generator=g))
        left = int(torch.randint(w - self.crop_px + 1, (1,), generator=g))
        flips = torch.randint(2, (2,), generator=g).bool()
        return index, top, left, flips

    def sample(self, batch_size: int) -> CropBatch:
        syn, cond, real, syn_index, real_index = [], [], [], [], []
        for _ in range(batch_size):
            i, top, left, flips = self._draw(self._syn)
            s, c = self._crop([self._syn[i], self._cond[i]], top, left, flips)
            syn.append(s)
            cond.append(c)
            syn_index.append(i)
        for _ in range(batch_size):
            i, top, left, flips = self._draw(self._real)
            real.append(self._crop([self._real[i]], top, left, flips)[0])
            real_index.append(i)
        return CropBatch(torch.stack(syn), torch.stack(cond), torch.stack(real), self._syn_levels[syn_index],
                         self._real_levels[real_index])
