"""Settings of the realism measures (C2ST, KID, distances)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from eval.training import DeviceName


@dataclass(frozen=True, slots=True, kw_only=True)
class RealismConfig:
    crop_px: int = 64
    steps: int = 300  # per fold
    batch_size: int = 32
    learning_rate: float = 2e-3
    test_crops_per_image: int = 48
    n_bootstrap: int = 2000
    ae_steps: int = 200
    kid_subset_size: int = 200
    kid_subsets: int = 50
    # image: each image scaled by its own 1st-99th percentiles before C2ST and KID
    normalize: Literal["image", "none"] = "image"
    seed: int = 0
    device: DeviceName = "cpu"

    def __post_init__(self):
        if self.normalize not in ("image", "none"):
            raise ValueError(f"normalize must be 'image' or 'none', got {self.normalize!r}")
        if self.crop_px < 16 or self.crop_px % 8:
            raise ValueError(f"crop_px must be a multiple of 8 and >= 16, got {self.crop_px!r}")
        for key in ("steps", "batch_size", "test_crops_per_image", "n_bootstrap", "ae_steps", "kid_subsets"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)!r}")
        if self.batch_size % 2:
            raise ValueError(f"batch_size must be even (half A, half B), got {self.batch_size!r}")
