"""Instrument effects: scan distortions, specimen charging and the probe's point-spread function.

Scan distortions (line jitter, drift, vibration) are evaluated along the scan time t = row * line_time +
col * dwell_time, as ARTIMAGEN does, and returned as per-pixel displacements of the beam. The renderer samples
the scene (image *and* labels) at the displaced positions, so masks stay exact under every distortion.
Charging and the probe blur change intensities only and never move a pixel.
"""

from __future__ import annotations

import cv2
import numba
import numpy as np

from simulator.config import ChargingConfig, ProbeConfig, ScanConfig
from simulator.geometry import Scene
from simulator.render import RenderOut

_CONTACT_NM = 1.0  # a primary whose lowest point is this close to z = 0 touches the substrate


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


def probe_sigma_nm(cfg: ProbeConfig) -> tuple[float, float]:
    """Standard deviations (major, minor) of the probe in nm: Gaussian probe, defocus disc added in
    quadrature (radius |defocus| * convergence angle, as a Gaussian of that sigma), astigmatism stretching
    one axis by sqrt(ratio) and shrinking the other by the same factor."""
    defocus_nm = abs(cfg.defocus_nm) * cfg.convergence_mrad * 1e-3
    sigma = np.hypot(cfg.sigma_nm, defocus_nm)
    root = np.sqrt(cfg.astigmatism_ratio)
    return float(sigma * root), float(sigma / root)


def probe_blur(signal: np.ndarray, cfg: ProbeConfig, pixel_size_nm: float) -> np.ndarray:
    """Convolve the signal with the probe (Gaussian, astigmatic, defocused); edges are reflected."""
    major, minor = (s / pixel_size_nm for s in probe_sigma_nm(cfg))
    if major < 1e-3:
        return signal
    if abs(major - minor) < 1e-6:
        return cv2.GaussianBlur(signal, (0, 0), major, borderType=cv2.BORDER_REFLECT)
    half = int(np.ceil(4 * major))
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    a = np.deg2rad(cfg.astigmatism_angle_deg)
    u = xx * np.cos(a) + yy * np.sin(a)
    v = -xx * np.sin(a) + yy * np.cos(a)
    kernel = np.exp(-0.5 * ((u / major) ** 2 + (v / minor) ** 2))
    kernel = (kernel / kernel.sum()).astype(np.float32)
    return cv2.filter2D(signal, -1, kernel, borderType=cv2.BORDER_REFLECT)


def aggregate_charge(scene: Scene, strength: float) -> np.ndarray:
    """(n_aggregates,) charge level: strength * (1 - fraction of the aggregate's primaries touching z = 0).

    An aggregate that rests on one primary drains its charge poorly and charges most.
    """
    prim = scene.primaries
    if len(prim) == 0:
        return np.zeros(0)
    touching = scene.bottom_nm < _CONTACT_NM
    n = np.bincount(prim.aggregate_id, minlength=scene.n_aggregates)
    contact = np.bincount(prim.aggregate_id, weights=touching, minlength=scene.n_aggregates)
    return strength * (1.0 - contact / np.maximum(n, 1))


def charge(
    signal: np.ndarray, render: RenderOut, scene: Scene, cfg: ChargingConfig, pixel_size_nm: float
) -> np.ndarray:
    """Charging: charged aggregates brighten, a halo brightens the substrate around them, and the scan
    (left to right) drags a decaying bright streak behind every charged region."""
    if cfg.strength == 0 or scene.n_aggregates == 0:
        return signal
    per_aggregate = aggregate_charge(scene, cfg.strength)
    per_instance = np.r_[0.0, per_aggregate[scene.primaries.aggregate_id]].astype(np.float32)
    q = per_instance[render.instance_id]
    halo = np.zeros_like(q)
    if cfg.halo_nm > 0:
        halo = cv2.GaussianBlur(q, (0, 0), cfg.halo_nm / pixel_size_nm, borderType=cv2.BORDER_REFLECT)
    decay = np.exp(-1.0 / cfg.streak_length_px) if cfg.streak_length_px > 0 else 0.0
    return _charged(signal, q, halo, np.float32(decay), np.float32(cfg.streak_gain))


@numba.njit(cache=True)
def _charged(signal, q, halo, decay, streak_gain):
    """signal * gain: gain = 1 + q on charged particles, 1 + 2 halo + streak elsewhere; the streak is a one-pole
    filter along each scan line, s(x) = decay s(x - 1) + (1 - decay) q(x)."""
    rows, cols = signal.shape
    out = np.empty_like(signal)
    for r in range(rows):
        streak = np.float32(0.0)
        for c in range(cols):
            streak = decay * streak + (1 - decay) * q[r, c]
            if q[r, c] > 0:
                gain = 1 + q[r, c]
            else:
                gain = 1 + 2 * halo[r, c] + streak_gain * streak
            out[r, c] = signal[r, c] * gain
    return out
