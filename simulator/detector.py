"""Detector: dose, shot noise, SE emission and gain statistics, read noise, brightness/contrast, info bar.

Per pixel, with dose = I t / e primary electrons expected (probe current I, dwell time t):

    N ~ Poisson(dose)                 primary electrons that arrive
    S ~ Poisson(N * delta)            secondary electrons emitted and collected (delta = mean SE per primary)
    D ~ Gamma(shape = k S, scale = 1/k)  summed scintillator/PMT pulse heights, each Gamma(k, 1/k): mean 1,
                                      relative variance 1/k (the gain distribution is not Poisson)
    out = brightness + contrast * T(D / dose + Normal(0, read_noise / contrast))

with T(y) = sign(y) |y|^gamma the amplifier's transfer (``detector.gamma`` = 1: linear, the default; < 1
compresses the bright end and its noise with it, as on the reference images, whose particles' noise grows less
than the square root of their level). At gamma = 1 the mean output, brightness + contrast * delta, does not
depend on the dose, while the noise on a flat region falls as 1 / sqrt(dose). Pixels that collect at least
_EXACT_BELOW SE on average draw the output from the normal distribution with the chain's exact mean and
variance (read noise included),
    E[D] = dose delta,   Var[D] = dose delta (1 + delta + 1/k),
whose skewness, small at that count, falls as 1/sqrt(dose delta); pixels that collect fewer draw every stage
exactly. Saturation and quantisation happen in ``quantize``.
"""

from __future__ import annotations

import cv2
import numpy as np

from simulator.config import DetectorConfig

ELEMENTARY_CHARGE_C = 1.602176634e-19


def dose_electrons(cfg: DetectorConfig, dwell_time_us: float) -> float:
    """Expected primary electrons per pixel: I t / e."""
    return cfg.probe_current_pA * 1e-12 * dwell_time_us * 1e-6 / ELEMENTARY_CHARGE_C


_EXACT_BELOW = 25.0  # mean collected SE per pixel under which the chain is sampled draw by draw


def detect(
    signal: np.ndarray, cfg: DetectorConfig, dwell_time_us: float, rng: np.random.Generator
) -> np.ndarray:
    """(H, W) mean SE per primary electron -> (H, W) float32 output level before the ADC (see module doc)."""
    if not cfg.noise:
        return transfer(cfg.brightness + cfg.contrast * signal, cfg)
    dose = dose_electrons(cfg, dwell_time_us)
    k = cfg.gain_shape
    # Many SE collected: the chain's exact mean and variance, read noise included, in a single normal draw.
    mean = dose * signal
    var = (cfg.contrast / dose) ** 2 * mean * (1.0 + signal + 1.0 / k) + cfg.read_noise**2
    noise = rng.standard_normal(signal.shape, dtype=np.float32)
    out = cfg.brightness + (cfg.contrast / dose) * mean + np.sqrt(var) * noise
    low = np.flatnonzero(mean.ravel() < _EXACT_BELOW)
    if low.size:  # few SE collected: every stage drawn exactly
        arrivals = rng.poisson(dose, low.size)
        emitted = rng.poisson(arrivals * signal.ravel()[low])
        pulses = np.zeros(low.size)
        some = emitted > 0
        pulses[some] = rng.gamma(k * emitted[some], 1.0 / k)
        exact = cfg.brightness + cfg.contrast * pulses / dose
        if cfg.read_noise > 0:
            exact += rng.normal(0.0, cfg.read_noise, low.size)
        out.ravel()[low] = exact
    return transfer(out, cfg)


def transfer(linear: np.ndarray, cfg: DetectorConfig) -> np.ndarray:
    """The amplifier's gamma applied to a linear output level: brightness + contrast * T(y), T(y) = sign(y)
    |y|^gamma, y = (level - brightness) / contrast. float32; an identity (bit for bit) at gamma = 1."""
    if cfg.gamma == 1.0 or cfg.contrast == 0:
        return np.asarray(linear, np.float32)
    y = (np.asarray(linear, np.float64) - cfg.brightness) / cfg.contrast
    return (cfg.brightness + cfg.contrast * np.sign(y) * np.abs(y) ** cfg.gamma).astype(np.float32)


def info_bar(width_px: int, height_px: int, lines: list[str], scale_bar_px: int, scale_label: str) -> np.ndarray:
    """(height_px, width_px) float32 instrument-style data bar: black, white text and a scale bar."""
    bar = np.zeros((height_px, width_px), np.uint8)
    font, size = cv2.FONT_HERSHEY_SIMPLEX, max(height_px / 130.0, 0.3)
    for k, text in enumerate(lines):
        y = int(height_px * (0.4 + 0.4 * k))
        cv2.putText(bar, text, (10, y), font, size, 255, 1, cv2.LINE_AA)
    x1 = width_px - 20
    x0 = max(x1 - scale_bar_px, 0)
    y = int(height_px * 0.6)
    cv2.line(bar, (x0, y), (x1, y), 255, 2)
    cv2.putText(bar, scale_label, (x0, int(height_px * 0.35)), font, size, 255, 1, cv2.LINE_AA)
    return bar.astype(np.float32) / 255.0
