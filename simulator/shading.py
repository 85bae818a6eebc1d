"""Provisional secondary-electron shading from the render buffers (to be replaced by the SEM physics stages).

signal = particle_level / cos(theta)^n on particles (theta = angle between the surface normal and the beam),
substrate_level elsewhere, then a Gaussian blur of ``blur_sigma_px``. Deterministic: it takes no rng.
"""

from __future__ import annotations

import cv2
import numpy as np

from simulator.config import ShadingConfig
from simulator.render import RenderOut


def shade(render: RenderOut, cfg: ShadingConfig) -> np.ndarray:
    """Render buffers -> (H, W) float32 signal in [0, 1]. Labels are not touched."""
    min_cos = cfg.max_tilt_gain ** (-1.0 / cfg.tilt_exponent) if cfg.tilt_exponent > 0 else 0.0
    cos_theta = np.clip(render.normal[..., 2], max(min_cos, 1e-6), 1.0)
    particle = cfg.particle_level * cos_theta ** (-cfg.tilt_exponent)
    signal = np.where(render.instance_id > 0, particle, cfg.substrate_level).astype(np.float32)
    if cfg.blur_sigma_px > 0:
        signal = cv2.GaussianBlur(signal, (0, 0), cfg.blur_sigma_px, borderType=cv2.BORDER_REFLECT)
    return np.clip(signal, 0.0, 1.0)
