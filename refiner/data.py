"""Datasets in, random unpaired crops out.

    dataset folder (images/*.png, labels/*.png, annotations.json) -> ImageRecord (float32 [0, 1], ids, pixel size)
        -> conditioning channels (foreground, instance boundaries) -> CropSampler -> CropBatch (torch)

Real data is any folder in the semsynth layout (``cli.py ingest`` writes one); its labels are never used.
Synthetic data needs its label maps when the refiner is conditioned on them (the default). Unpaired sampling
lives in ``CropSampler``, which draws every crop position and flip from one explicit ``torch.Generator`` whose
state is saved in checkpoints, so a resumed run draws the same crops as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from eval.calibrate.image_stats import boundary_map
from eval.data.pixels import image_levels  # the levels eval.realism normalises by
from simulator.io.reader import ImageRecord, read_dataset

N_CONDITION_CHANNELS = 2  # foreground, instance boundary


def load_dataset(folder: str | Path, *, labels: bool, limit: int | None = None,
                 skip: int = 0) -> list[ImageRecord]:
    """Images ``skip .. skip + limit`` of a dataset folder (annotation order); with ``labels=True`` every image
    must have a label map of its size."""
    folder = Path(folder)
    dataset = read_dataset(folder, labels=labels)
    if not len(dataset):
        raise ValueError(f"{folder / 'annotations.json'}: no images listed")
    dataset = dataset[skip:] if limit is None else dataset[skip : skip + limit]
    for info in (dataset.infos[i] for i in dataset.indices):
        if labels and not info.get("label_file"):
            raise ValueError(f"{folder}: image {info['file_name']!r} has no label map (label_file is null); "
                             "the refiner is conditioned on labels: simulate with output.label_maps = true")
        pixel_nm = info.get("pixel_size_nm")
        if pixel_nm is None or not pixel_nm > 0:
            raise ValueError(f"{folder}: image {info['file_name']!r} has pixel_size_nm {pixel_nm!r}, expected > 0")
    return list(dataset)


def condition_channels(labels: np.ndarray) -> np.ndarray:
    """(2, H, W) float32 conditioning from a label map: foreground (id > 0) and instance boundaries."""
    return np.stack([labels > 0, boundary_map(labels)]).astype(np.float32)


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

    def __init__(self, synthetic: list[ImageRecord], real: list[ImageRecord], crop_px: int, *,
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
