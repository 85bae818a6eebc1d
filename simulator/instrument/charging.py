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

from simulator.config import ChargingConfig
from simulator.geometry.scene import Scene
from simulator.render import RenderOut

_CONTACT_NM = 1.0  # a primary whose lowest point is this close to z = 0 touches the substrate


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
