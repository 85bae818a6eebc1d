"""The probe, after shading: the beam's (astigmatic) Gaussian spot blurs the SE signal."""

from __future__ import annotations

import cv2
import numpy as np

from simulator.config import ProbeConfig


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
