"""Scan distortion, before the render: per-row and per-pixel beam offsets that displace the rays, so labels stay
exact.
"""

from __future__ import annotations

import numpy as np

from simulator.config import ScanConfig


def scan_offsets_px(
    shape: tuple[int, int], pixel_size_nm: float, cfg: ScanConfig, rng: np.random.Generator
) -> np.ndarray | None:
    """(H, W, 2) beam displacement (x, y) in pixels for each pixel, or None when every distortion is off.

    x: line jitter (one Gaussian offset per line, ``line_jitter_px``), drift (constant velocity in nm/s) and
    vibration (sinusoid of amplitude nm and frequency Hz along ``vibration_angle_deg``, random phase).
    """
    if cfg.line_jitter_px == 0 and cfg.drift_x_nm_per_s == 0 and cfg.drift_y_nm_per_s == 0 and (
        cfg.vibration_amplitude_nm == 0
    ):
        return None
    height, width = shape
    line_s = (width * cfg.dwell_time_us + cfg.flyback_time_us) * 1e-6
    t_row = np.arange(height) * line_s  # t = t_row[:, None] + t_col[None, :]
    t_col = np.arange(width) * cfg.dwell_time_us * 1e-6
    phase = rng.uniform(0, 2 * np.pi)
    jitter = rng.normal(0.0, cfg.line_jitter_px, height) if cfg.line_jitter_px > 0 else np.zeros(height)
    # sin(w (t_row + t_col) + phase) = sin(w t_row + phase) cos(w t_col) + cos(w t_row + phase) sin(w t_col):
    # outer products of per-row and per-column terms, no per-pixel transcendental.
    w = 2 * np.pi * cfg.vibration_frequency_hz
    a, b = w * t_row + phase, w * t_col
    f32 = np.float32
    amp = f32(cfg.vibration_amplitude_nm)
    wave = np.outer(amp * np.sin(a).astype(f32), np.cos(b).astype(f32))
    wave += np.outer(amp * np.cos(a).astype(f32), np.sin(b).astype(f32))
    angle = np.deg2rad(cfg.vibration_angle_deg)
    t = np.add.outer(t_row.astype(np.float32), t_col.astype(np.float32))
    offsets = np.empty((height, width, 2), np.float32)
    inv_px = f32(1.0 / pixel_size_nm)
    offsets[..., 0] = (f32(cfg.drift_x_nm_per_s) * t + f32(np.cos(angle)) * wave) * inv_px + jitter[:, None].astype(f32)
    offsets[..., 1] = (f32(cfg.drift_y_nm_per_s) * t + f32(np.sin(angle)) * wave) * inv_px
    return offsets
