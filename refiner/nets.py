"""The refiner's generator (label-preserving by construction) and its PatchGAN discriminator.

Generator: refined = clip(g * (T(x) + a * tanh(f([x, foreground, boundary, z])) + m * b * tanh(s(...))
                               + q * (exp(c * tanh(p_1(...))) - 1) * (L - M)
                               + (q + s) * (exp(d * tanh(p_2(...))) - 1) * (T(x) - L')) + o, 0, 1)
    T  a learned monotone tone curve (piecewise linear, strictly increasing): global contrast/gamma, which can
       change how bright a structure is but never where it is;
    f  a few 3x3 convolutions: a local residual whose receptive field is (2 * n_layers + 1) px, bounded in
       amplitude by ``residual_max``; it sees the image, the label conditioning (foreground, instance
       boundaries, both from the dataset's label map) and white noise z, so it can reshape noise texture and
       edge profiles, but cannot move a structure further than its receptive radius (and the content loss,
       a penalty on the low-passed residual, keeps it from trying);
    s  substrate texture (optional, needs the conditioning): dilated 3x3 convolutions at half resolution on
       the image, noise and foreground (receptive field ~80 px: residues, stains), high-passed (no local
       mean: it adds detail, not brightness), bounded by ``texture_max`` (well below particle contrast) and
       multiplied by a mask m that is exactly zero within
       ``texture_margin_px`` of any labelled particle: it can only change what the labels call substrate;
    p  particle shading (optional, needs the conditioning): dilated 3x3 convolutions at half resolution on the
       toned image, the particle's shading and the particle interiors; it sets a smooth local contrast
       factor in [exp(-c), exp(c)] by which a particle's shading L (a Gaussian mean of T(x) over particle
       interiors at ~1.5 px: pixel noise and fine texture are left alone) varies about its local mean M (the
       same at ~20 px, about a particle), so it can flatten the two-tone shading of a faceted particle or
       strengthen it. It is multiplied by a mask q that is exactly zero
       within ``particle_margin_px`` of any instance boundary or substrate pixel and rises smoothly to 1 over
       ``particle_ramp_px`` further in (so a flattened particle keeps no ring at its rim): it never touches an edge, a
       rim or the substrate, and since it scales the image's own variations it cannot draw an edge where the
       toned image is flat. Its second output sets a factor in [exp(-d), exp(d)] on the fine detail T(x) - L'
       (pixel noise and fine texture about the local mean at ~1.5 px) of particle interiors and of the substrate,
       both away from every boundary (off by default: ``detail_max = 0``);
    g, o  a per-image gain and offset (a positive affine map moves no edge). Real images differ from each other
       in brightness and contrast (operator settings: the reference set's substrate level ranges over a factor
       of 3), simulated ones barely. ``levels = "real"`` (default): each refined image gets the black and white
       levels (1st and 99th percentiles) of one real training image, drawn by its per-image latent, by mapping
       T(p1) and T(p99) of its own synthetic image there; the raw intensity distribution then follows the real
       set's by construction, and the networks learn appearance only (the discriminator compares images
       normalised by these levels). ``levels = "learned"``: log g ~ N(0, sg^2), o ~ N(0, so^2) with spreads
       learned against a discriminator on raw intensities. ``levels = "none"``: g = 1, o = 0.
All start as the identity (zero last layers, identity curve); with "real" levels the identity holds up to the
affine map to the drawn levels.

Discriminator: a PatchGAN: one full-resolution 3x3 convolution (so pixel noise is seen unaliased), then strided
4x4 convolutions with BatchNorm (or spectral normalisation); one logit per patch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import kornia
import numpy as np
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from eval.data.pixels import image_levels
from eval.training import seeded_init
from refiner.data import N_CONDITION_CHANNELS
from refiner.losses import low_pass

LEVEL_MODES = ("real", "learned", "none")
TEXTURE_HIGHPASS_SIGMA_PX = 3.0  # the substrate texture keeps only detail finer than this
MEAN_POOL_PX = 4  # the particle shading's local mean is computed at this fraction of the resolution


@dataclass(frozen=True, slots=True, kw_only=True)
class GeneratorConfig:
    condition: bool = True  # foreground + boundary channels from the label map
    width: int = 16  # channels of the hidden 3x3 convolutions
    n_layers: int = 4  # 3x3 convolutions: receptive field 2 * n_layers + 1 px
    residual_max: float = 0.3  # bound of the local residual, fraction of full scale
    tone_knots: int = 17  # knots of the monotone tone curve on [0, 1]
    min_tone_slope: float = 0.2  # the tone curve's slope never falls below this: contrast cannot vanish
    texture: bool = True  # substrate texture branch (needs condition=True)
    texture_width: int = 12
    texture_dilations: tuple[int, ...] = (1, 2, 4, 8, 1)  # at half resolution
    texture_max: float = 0.08  # bound of the substrate texture, fraction of full scale
    texture_margin_px: int = 2  # the texture is exactly zero this close (Chebyshev) to a labelled particle
    particle: bool = True  # particle shading branch (needs condition=True)
    particle_width: int = 12
    particle_dilations: tuple[int, ...] = (1, 2, 4, 8, 1)  # at half resolution
    particle_contrast_max: float = 2.0  # bound of the log contrast factor: factors in [exp(-c), exp(c)]
    particle_mean_sigma_px: float = 20.0  # Gaussian scale of the local particle mean M (about a particle)
    particle_detail_sigma_px: float = 1.5  # shading is the particle's local mean L at this scale: finer detail
    # (pixel noise, fine texture) is left as it is
    particle_margin_px: int = 1  # the shading is exactly zero this close (Chebyshev) to a boundary or substrate
    particle_ramp_px: int = 6  # ... and reaches full strength over this many px further in (smoothstep): a
    # short ramp leaves the rim's own brightness as a band with a sharp inner edge (a ring) in a flattened particle
    detail_max: float = 0.0  # bound of the log factor on fine detail (T(x) - L, pixel noise and fine texture) of
    # particle interiors and substrate away from boundaries: factors in [exp(-d), exp(d)]; 0 = off
    # per-image black/white levels: "real" (drawn from the real images), "learned", "none"
    levels: Literal["real", "learned", "none"] = "real"
    max_log_gain_std: float = 0.5  # bounds of the learned spreads (levels = "learned")
    max_offset_std: float = 0.1

    def __post_init__(self):
        if self.levels not in LEVEL_MODES:
            raise ValueError(f"generator.levels must be one of {LEVEL_MODES}, got {self.levels!r}")
        if self.texture and not self.condition:
            raise ValueError("generator.texture needs generator.condition = True (it is masked by the labels)")
        if self.particle and not self.condition:
            raise ValueError("generator.particle needs generator.condition = True (it is masked by the labels)")
        if self.particle_width < 1 or not self.particle_dilations or min(self.particle_dilations) < 1:
            raise ValueError(f"generator.particle_width and particle_dilations must be positive, got "
                             f"{self.particle_width!r}, {self.particle_dilations!r}")
        if not 0 <= self.detail_max <= 2:
            raise ValueError(f"generator.detail_max must be in [0, 2], got {self.detail_max!r}")
        if not 0 <= self.particle_contrast_max <= 2:
            raise ValueError(f"generator.particle_contrast_max must be in [0, 2], got {self.particle_contrast_max!r}")
        if not 0 < self.particle_detail_sigma_px < self.particle_mean_sigma_px or self.particle_margin_px < 0:
            raise ValueError(f"generator.particle_detail_sigma_px must be in (0, particle_mean_sigma_px) and "
                             f"particle_margin_px >= 0, got {self.particle_detail_sigma_px!r}, "
                             f"{self.particle_mean_sigma_px!r}, {self.particle_margin_px!r}")
        if self.texture_width < 1 or not self.texture_dilations or min(self.texture_dilations) < 1:
            raise ValueError(f"generator.texture_width and texture_dilations must be positive, got "
                             f"{self.texture_width!r}, {self.texture_dilations!r}")
        if not 0 <= self.texture_max <= 0.5:
            raise ValueError(f"generator.texture_max must be in [0, 0.5], got {self.texture_max!r}")
        if not (0 < self.max_log_gain_std <= 2 and 0 < self.max_offset_std <= 0.5):
            raise ValueError(f"generator.max_log_gain_std must be in (0, 2] and max_offset_std in (0, 0.5], got "
                             f"{self.max_log_gain_std!r}, {self.max_offset_std!r}")
        if self.particle_ramp_px < 0:
            raise ValueError(f"generator.particle_ramp_px must be >= 0, got {self.particle_ramp_px!r}")
        if self.texture_margin_px < 0:
            raise ValueError(f"generator.texture_margin_px must be >= 0, got {self.texture_margin_px!r}")
        if self.width < 1:
            raise ValueError(f"generator.width must be >= 1, got {self.width!r}")
        if self.n_layers < 2:
            raise ValueError(f"generator.n_layers must be >= 2, got {self.n_layers!r}")
        if not 0 <= self.residual_max <= 1:
            raise ValueError(f"generator.residual_max must be in [0, 1], got {self.residual_max!r}")
        if self.tone_knots < 2:
            raise ValueError(f"generator.tone_knots must be >= 2, got {self.tone_knots!r}")
        if not 0 <= self.min_tone_slope < 1:
            raise ValueError(f"generator.min_tone_slope must be in [0, 1), got {self.min_tone_slope!r}")

    @property
    def in_channels(self) -> int:
        return 2 + (N_CONDITION_CHANNELS if self.condition else 0)  # image, noise, [conditioning]

    @property
    def min_image_px(self) -> int:
        """Smallest image side the generator accepts: its reflect-padded blurs need more pixels than their radius
        (the texture's high-pass: 9 px)."""
        return (max(1, round(3 * TEXTURE_HIGHPASS_SIGMA_PX)) if self.texture else 1) + 1

    @property
    def receptive_radius_px(self) -> int:
        """An output pixel depends on input pixels at most this far away (Chebyshev distance)."""
        radius = self.n_layers
        if self.texture:
            # half resolution, pooling and upsampling, then the high-pass (Gaussian kernel radius 3 sigma)
            texture = 2 * sum(self.texture_dilations) + 4 + round(3 * TEXTURE_HIGHPASS_SIGMA_PX)
            radius = max(radius, texture, self.texture_margin_px + 4)
        if self.particle:
            # the local mean (pooled, blurred with kernel radius 3 sigma, upsampled) feeds the half-resolution
            # network; the mask sees labels up to margin + ramp + 1 px away (the substrate mask of the detail
            # factor: margin + 4)
            f = MEAN_POOL_PX
            mean = f * (max(1, round(3 * self.particle_mean_sigma_px / f)) + 2)
            detail = max(1, round(3 * self.particle_detail_sigma_px))
            radius = max(radius, 2 * sum(self.particle_dilations) + 4 + mean + detail,
                         self.particle_margin_px + max(self.particle_ramp_px + 1, 4))
        return radius

    @property
    def tile_alignment_px(self) -> int:
        """Tiles must start at multiples of this (the texture branch pools 2 x 2, the particle branch's local
        mean 4 x 4)."""
        return MEAN_POOL_PX if self.particle else 2 if self.texture else 1


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscriminatorConfig:
    full_res_width: int = 8  # a 3x3 convolution at full resolution first (pixel noise, edge profiles); 0 = none
    channels: tuple[int, ...] = (16, 32, 64, 64)  # one strided 4x4 conv each
    # "batch" (BatchNorm after every strided conv), "spectral" (spectral norm), "none"
    norm: Literal["batch", "spectral", "none"] = "batch"
    input_gain: float = 4.0  # the input is (x - 0.5) * input_gain: SEM substrate detail is a few % of full scale

    def __post_init__(self):
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"discriminator.channels must be positive, got {self.channels!r}")
        if self.full_res_width < 0:
            raise ValueError(f"discriminator.full_res_width must be >= 0, got {self.full_res_width!r}")
        if self.norm not in ("batch", "spectral", "none"):
            raise ValueError(f"discriminator.norm must be 'batch', 'spectral' or 'none', got {self.norm!r}")
        if not self.input_gain > 0:
            raise ValueError(f"discriminator.input_gain must be > 0, got {self.input_gain!r}")

    @property
    def receptive_field_px(self) -> int:
        rf, jump = (3 if self.full_res_width else 1), 1
        for _ in self.channels:
            rf, jump = rf + 3 * jump, jump * 2
        return rf + 2 * jump  # final 3x3


@dataclass(frozen=True, slots=True)
class GeneratorOut:
    refined: torch.Tensor  # (B, 1, H, W) in [0, 1]
    toned: torch.Tensor  # (B, 1, H, W): the tone curve alone, T(x)
    residual: torch.Tensor  # (B, 1, H, W): the local residual a * tanh(f(...)), before clipping
    texture: torch.Tensor  # (B, 1, H, W): the masked substrate texture (zeros without the branch)
    particle: torch.Tensor  # (B, 1, H, W): the masked particle shading change (zeros without the branch)
    detail: torch.Tensor  # (B, 1, H, W): the masked change of fine detail (zeros without the branch)
    gain: torch.Tensor  # (B,) per-image gain g
    offset: torch.Tensor  # (B,) per-image offset o


@dataclass(frozen=True, slots=True)
class RefinerNoise:
    """The generator's random inputs for a batch: per-pixel white noise and the per-image latent."""

    pixels: torch.Tensor  # (B, 1, H, W) standard normal
    latent: torch.Tensor  # (B, 2) standard normal: log-gain and offset draws

    @staticmethod
    def draw(shape: tuple[int, ...], generator: torch.Generator) -> RefinerNoise:
        """Noise for a batch of shape (B, 1, H, W), drawn on the CPU from ``generator``."""
        latent = torch.randn((shape[0], 2), generator=generator)
        return RefinerNoise(torch.randn(shape, generator=generator), latent)

    def to(self, device) -> RefinerNoise:
        return RefinerNoise(self.pixels.to(device), self.latent.to(device))


def substrate_mask(foreground: torch.Tensor, margin_px: int) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1]: 0 within ``margin_px`` + 2 (Chebyshev) of a foreground pixel (so certainly within
    ``margin_px``), rising to 1 over the next 3 px (the foreground dilated by margin + 2, then two 3 x 3 box
    filters)."""
    grow = margin_px + 2
    near = nn.functional.max_pool2d(foreground, 2 * grow + 1, stride=1, padding=grow)
    m = 1.0 - near
    for _ in range(2):
        m = nn.functional.avg_pool2d(m, 3, stride=1, padding=1, count_include_pad=False)
    return m * (1.0 - near)  # the box filters must not leak texture into the dilated zone


def interior_mask(foreground: torch.Tensor, boundary: torch.Tensor, margin_px: int, ramp_px: int) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1]: where the particle shading may act. 0 within ``margin_px`` (Chebyshev) of a
    substrate or instance-boundary pixel, rising as a smoothstep of the Chebyshev distance D to reach 1 at
    D = margin + ramp + 1 (distance by iterated 3 x 3 dilation, capped there)."""
    near = 1.0 - foreground * (1.0 - boundary)
    reach = margin_px + ramp_px + 1
    dist = torch.zeros_like(near)
    for _ in range(reach):  # after k dilations, near is 1 exactly where D <= k
        dist = dist + (1.0 - near)
        near = nn.functional.max_pool2d(near, 3, stride=1, padding=1)
    t = ((dist - margin_px) / (ramp_px + 1)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def masked_mean(x: torch.Tensor, weight: torch.Tensor, sigma_px: float, pool_px: int = 1) -> torch.Tensor:
    """Gaussian-weighted local mean of ``x`` over the pixels where ``weight`` is 1 (x itself where the
    neighbourhood holds none); with ``pool_px > 1`` computed at 1/pool_px resolution and upsampled bilinearly
    (for means smooth at that scale)."""
    h, w = x.shape[-2:]
    s = sigma_px / pool_px
    k = 2 * max(1, round(3 * s)) + 1

    def smooth(t: torch.Tensor) -> torch.Tensor:
        if pool_px > 1:
            t = nn.functional.avg_pool2d(t, pool_px, ceil_mode=True)
        t = kornia.filters.gaussian_blur2d(t, (k, k), (s, s), border_type="replicate")
        if pool_px > 1:
            t = nn.functional.interpolate(t, scale_factor=pool_px, mode="bilinear", align_corners=False)
        return t[..., :h, :w]

    num, den = smooth(x * weight), smooth(weight)
    return torch.where(den > 1e-3, num / den.clamp_min(1e-3), x)


def _half_res_net(c_in: int, width: int, dilations: tuple[int, ...], c_out: int = 1) -> nn.Sequential:
    """Dilated 3x3 convolutions (LeakyReLU between), ``c_out`` output channels, last layer zero (output 0 at
    start)."""
    layers: list[nn.Module] = []
    for d in dilations[:-1]:
        layers += [nn.Conv2d(c_in, width, 3, padding=d, dilation=d, padding_mode="replicate"), nn.LeakyReLU(0.2)]
        c_in = width
    d = dilations[-1]
    last = nn.Conv2d(c_in, c_out, 3, padding=d, dilation=d, padding_mode="replicate")
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


def _pool2(t: torch.Tensor) -> torch.Tensor:
    return nn.functional.avg_pool2d(t, 2, ceil_mode=True)


def _upsample2(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return nn.functional.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)[..., :h, :w]


class SubstrateTexture(nn.Module):
    """Dilated 3x3 convolutions at half resolution: (image, noise, foreground) -> texture in (-1, 1)."""

    def __init__(self, width: int, dilations: tuple[int, ...]):
        super().__init__()
        self.net = _half_res_net(3, width, dilations)

    def forward(self, x: torch.Tensor, noise: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        inputs = torch.cat([2 * _pool2(x) - 1, 2 * _pool2(noise), _pool2(foreground)], dim=1)
        u = torch.tanh(_upsample2(self.net(inputs), h, w))
        # Detail only: without its local mean the texture cannot brighten or darken the substrate as a whole
        # (which, masked near particles, would draw halos around them); levels are the tone curve's job.
        return 0.5 * (u - low_pass(u, TEXTURE_HIGHPASS_SIGMA_PX))


class ParticleShading(nn.Module):
    """Dilated 3x3 convolutions at half resolution: (toned image, the particles' smooth shading about their local
    mean, particle interiors, boundaries) -> (B, 2, H, W) in (-1, 1): the log contrast of the particles' shading
    and the log factor of the fine detail (scaled by ``particle_contrast_max`` and ``detail_max`` in the
    generator)."""

    def __init__(self, width: int, dilations: tuple[int, ...]):
        super().__init__()
        self.net = _half_res_net(4, width, dilations, c_out=2)

    def forward(self, toned: torch.Tensor, shading: torch.Tensor, interior: torch.Tensor,
                boundary: torch.Tensor) -> torch.Tensor:
        """shading: L - M, the particle's smooth shading about its local mean."""
        h, w = toned.shape[-2:]
        inputs = torch.cat([2 * _pool2(toned) - 1, 8 * _pool2(shading), _pool2(interior), _pool2(boundary)], 1)
        return torch.tanh(_upsample2(self.net(inputs), h, w))


class ToneCurve(nn.Module):
    """Strictly increasing piecewise-linear map of [0, 1] with evenly spaced knots (identity at start)."""

    def __init__(self, knots: int, min_slope: float):
        super().__init__()
        self.knots = knots
        self.min_slope = min_slope
        start = (1.0 - min_slope) / (knots - 1)  # softplus(raw) = start gives slope 1 everywhere
        self.raw = nn.Parameter(torch.full((knots - 1,), float(torch.log(torch.expm1(torch.tensor(start))))))
        self.offset = nn.Parameter(torch.zeros(()))

    def values(self) -> torch.Tensor:
        """(knots,) curve values at x = 0, 1/(k-1), ..., 1."""
        steps = nn.functional.softplus(self.raw) + self.min_slope / (self.knots - 1)
        return self.offset + torch.cat([steps.new_zeros(1), torch.cumsum(steps, 0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.values()
        pos = x.clamp(0, 1) * (self.knots - 1)
        idx = pos.floor().clamp(max=self.knots - 2).long()
        frac = pos - idx
        return y[idx] + frac * (y[idx + 1] - y[idx])


class Generator(nn.Module):
    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        self.tone = ToneCurve(cfg.tone_knots, cfg.min_tone_slope)
        layers: list[nn.Module] = []
        c_in = cfg.in_channels
        for _ in range(cfg.n_layers - 1):
            layers += [nn.Conv2d(c_in, cfg.width, 3, padding=1, padding_mode="replicate"), nn.LeakyReLU(0.2)]
            c_in = cfg.width
        last = nn.Conv2d(c_in, 1, 3, padding=1, padding_mode="replicate")
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.local = nn.Sequential(*layers, last)
        self.texture = SubstrateTexture(cfg.texture_width, cfg.texture_dilations) if cfg.texture else None
        self.particle = ParticleShading(cfg.particle_width, cfg.particle_dilations) if cfg.particle else None
        # Spreads s = bound * sigmoid(raw), starting at 20 % of their bound.
        start = float(torch.logit(torch.tensor(0.2)))
        self.raw_spread = nn.Parameter(torch.full((2,), start)) if cfg.levels == "learned" else None
        # levels = "real": (n, 2) black/white levels of the real training images (set by ``set_real_levels``;
        # saved with the weights); empty: the identity levels.
        self.register_buffer("real_levels", torch.zeros((0, 2)))

    def set_real_levels(self, levels: torch.Tensor) -> None:
        """Store the (n, 2) levels (low, high) of the real training images that refined images will take."""
        levels = torch.as_tensor(levels, dtype=torch.float32).reshape(-1, 2)
        if len(levels) and not bool((levels[:, 1] > levels[:, 0]).all()):
            raise ValueError("real levels must have high > low for every image")
        self.real_levels = levels.to(self.real_levels.device)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if "real_levels" in state_dict:  # its length is the number of real training images
            self.set_real_levels(state_dict["real_levels"])
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def spreads(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(std of log gain, std of offset) of the per-image appearance (zeros when disabled)."""
        if self.raw_spread is None:
            zero = self.tone.offset.new_zeros(())
            return zero, zero
        s = torch.sigmoid(self.raw_spread)
        return self.cfg.max_log_gain_std * s[0], self.cfg.max_offset_std * s[1]

    def forward(self, x: torch.Tensor, condition: torch.Tensor, noise: RefinerNoise,
                levels: torch.Tensor | None = None) -> GeneratorOut:
        """x: (B, 1, H, W) in [0, 1]; condition: (B, C, H, W) (C = 0 when unconditioned); noise: its random
        inputs (``RefinerNoise.draw`` or ``image_noise``); levels: (B, 2) ``image_levels`` of the whole image each
        x was cut from (default: of x itself)."""
        if not isinstance(noise, RefinerNoise):
            raise TypeError(f"noise must be a RefinerNoise, got {type(noise).__name__}")
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"x must be (B, 1, H, W), got {tuple(x.shape)}")
        expected = N_CONDITION_CHANNELS if self.cfg.condition else 0
        if condition.shape[1] != expected or condition.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"condition must be (B, {expected}, {x.shape[-2]}, {x.shape[-1]}), "
                             f"got {tuple(condition.shape)}")
        if noise.pixels.shape != x.shape or noise.latent.shape != (x.shape[0], 2):
            raise ValueError(f"noise must be pixels {tuple(x.shape)} and latent ({x.shape[0]}, 2), got "
                             f"{tuple(noise.pixels.shape)} and {tuple(noise.latent.shape)}")
        z = noise.pixels
        toned = self.tone(x)
        inputs = torch.cat([2 * x - 1, z, condition], dim=1)
        residual = self.cfg.residual_max * torch.tanh(self.local(inputs))
        if self.texture is None:
            texture = torch.zeros_like(x)
        else:
            foreground = condition[:, :1]
            texture = (self.cfg.texture_max * substrate_mask(foreground, self.cfg.texture_margin_px)
                       * self.texture(x, z, foreground))
        particle, detail = self._particle_shading(toned, condition)
        gain, offset = self._levels_map(x, noise.latent, levels)
        refined = (gain[:, None, None, None] * (toned + residual + texture + particle + detail)
                   + offset[:, None, None, None]).clamp(0, 1)
        return GeneratorOut(refined=refined, toned=toned, residual=residual, texture=texture, particle=particle,
                            detail=detail, gain=gain, offset=offset)

    def _particle_shading(self, toned: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(shading change, detail change), both zero without the branch.

        shading: q * (exp(a) - 1) * (L - M), zero outside the particle interiors. L and M are local means of T(x)
        over the particle interiors at the detail and particle scales: only the shading between them is rescaled.
        detail: (q + s) * (exp(b) - 1) * (T(x) - L'), the fine detail (pixel noise, fine texture) about the local
        mean L' of its own region (particle interiors or substrate, at the detail scale); s is the substrate
        mask, zero within ``particle_margin_px`` + 2 px of any particle. Both only rescale the image's own
        variations, away from every boundary."""
        if self.particle is None:
            zero = torch.zeros_like(toned)
            return zero, zero
        foreground, boundary = condition[:, :1], condition[:, 1:2]
        interior = foreground * (1.0 - boundary)
        substrate = 1.0 - foreground
        shading = masked_mean(toned, interior, self.cfg.particle_detail_sigma_px)
        mean = masked_mean(toned, interior, self.cfg.particle_mean_sigma_px, MEAN_POOL_PX)
        logs = self.particle(toned, shading - mean, interior, boundary)
        q = interior_mask(foreground, boundary, self.cfg.particle_margin_px, self.cfg.particle_ramp_px)
        particle = q * torch.expm1(self.cfg.particle_contrast_max * logs[:, :1]) * (shading - mean)
        if self.cfg.detail_max == 0:
            return particle, torch.zeros_like(toned)
        s = substrate_mask(foreground, self.cfg.particle_margin_px)
        local = torch.where(foreground > 0, shading,
                            masked_mean(toned, substrate, self.cfg.particle_detail_sigma_px))
        detail = (q + s) * torch.expm1(self.cfg.detail_max * logs[:, 1:]) * (toned - local)
        return particle, detail

    def _levels_map(self, x: torch.Tensor, latent: torch.Tensor, levels: torch.Tensor | None):
        """Per-image gain and offset, (B,) each."""
        if self.cfg.levels == "learned":
            s_gain, s_offset = self.spreads()
            return torch.exp(s_gain * latent[:, 0]), s_offset * latent[:, 1]
        ones = x.new_ones(x.shape[0])
        if self.cfg.levels == "none" or len(self.real_levels) == 0:
            return ones, 0 * ones
        if levels is None:
            levels = torch.tensor([image_levels(im) for im in x[:, 0].detach().cpu().numpy()], dtype=x.dtype)
        levels = levels.to(x.device, x.dtype)
        t_low, t_high = self.tone(levels[:, 0]), self.tone(levels[:, 1])
        # the latent's first draw picks a real image: uniform over the list (normal CDF of a standard normal)
        pick = torch.special.ndtr(latent[:, 0])
        index = (pick * len(self.real_levels)).long().clamp(0, len(self.real_levels) - 1)
        target = self.real_levels[index]
        gain = (target[:, 1] - target[:, 0]) / (t_high - t_low).clamp_min(1e-4)
        return gain, target[:, 0] - gain * t_low


class Discriminator(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        self.cfg = cfg

        def conv(c_in: int, c_out: int, k: int, stride: int) -> nn.Module:
            layer = nn.Conv2d(c_in, c_out, k, stride=stride, padding=1)
            return spectral_norm(layer) if cfg.norm == "spectral" else layer

        layers: list[nn.Module] = []
        c_in = 1
        if cfg.full_res_width:
            layers += [conv(1, cfg.full_res_width, 3, 1), nn.LeakyReLU(0.2)]
            c_in = cfg.full_res_width
        for c in cfg.channels:
            layers.append(conv(c_in, c, 4, 2))
            if cfg.norm == "batch":
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.LeakyReLU(0.2))
            c_in = c
        layers.append(conv(c_in, 1, 3, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, H, W) in [0, 1] -> (B, 1, H / 2^n, W / 2^n) patch logits."""
        return self.net((x - 0.5) * self.cfg.input_gain)


def build_networks(g_cfg: GeneratorConfig, d_cfg: DiscriminatorConfig, seed: int) -> tuple[Generator, Discriminator]:
    """Both networks with weights drawn from ``seed`` (the global torch RNG is left as it was)."""
    with seeded_init(seed):
        return Generator(g_cfg), Discriminator(d_cfg)


def image_noise(shape: tuple[int, int], seed: int, index: int) -> RefinerNoise:
    """Noise for image ``index`` of a refinement run with root ``seed``: (1, 1, H, W) pixels and (1, 2) latent,
    drawn on the CPU from ``SeedSequence(seed, spawn_key=(index,))``, so every device and tiling refines an
    image the same way."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence(seed, spawn_key=(index,)).generate_state(1)[0]))
    return RefinerNoise.draw((1, 1, *shape), g)


@torch.no_grad()
def refine_array(generator: Generator, image: np.ndarray, condition: np.ndarray | None, noise: RefinerNoise, *,
                 device: str | torch.device = "cpu", tile_px: int = 512) -> np.ndarray:
    """Refine a whole (H, W) float32 [0, 1] image, tile by tile.

    Tiles of ``tile_px`` are extended by the generator's receptive radius on every side (clipped at the image
    border) and only their core is kept, so the result equals refining the whole image at once.
    condition: (C, H, W) float32 conditioning (None when unconditioned); noise: from ``image_noise``.
    Returns (H, W) float32 in [0, 1].
    """
    if image.ndim != 2:
        raise ValueError(f"image must be (H, W), got shape {image.shape}")
    if tile_px < 1:
        raise ValueError(f"tile_px must be >= 1, got {tile_px!r}")
    h, w = image.shape
    if tuple(noise.pixels.shape) != (1, 1, h, w) or tuple(noise.latent.shape) != (1, 2):
        raise ValueError(f"noise must be pixels (1, 1, {h}, {w}) and latent (1, 2), got "
                         f"{tuple(noise.pixels.shape)} and {tuple(noise.latent.shape)}")
    if generator.cfg.condition:
        if condition is None or condition.shape != (N_CONDITION_CHANNELS, h, w):
            got = None if condition is None else condition.shape
            raise ValueError(f"this refiner is conditioned on labels: condition must be "
                             f"({N_CONDITION_CHANNELS}, {h}, {w}), got {got}")
        cond = torch.from_numpy(np.ascontiguousarray(condition, np.float32))[None]
    else:
        cond = torch.zeros((1, 0, h, w))
    x = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None]
    levels = torch.tensor([image_levels(image)], dtype=torch.float32, device=device)  # of the whole image
    align = generator.cfg.tile_alignment_px
    m = -(-generator.cfg.receptive_radius_px // align) * align  # margin rounded up to the alignment
    tile_px = -(-tile_px // align) * align
    out = np.empty((h, w), np.float32)
    was_training = generator.training
    generator.eval()
    try:
        for y0 in range(0, h, tile_px):
            for x0 in range(0, w, tile_px):
                y1, x1 = min(y0 + tile_px, h), min(x0 + tile_px, w)
                ya, yb, xa, xb = max(0, y0 - m), min(h, y1 + m), max(0, x0 - m), min(w, x1 + m)
                tile_x, tile_c, tile_z = (t[..., ya:yb, xa:xb].to(device) for t in (x, cond, noise.pixels))
                tile_noise = RefinerNoise(tile_z, noise.latent.to(device))
                refined = generator(tile_x, tile_c, tile_noise, levels).refined[0, 0].cpu().numpy()
                out[y0:y1, x0:x1] = refined[y0 - ya : y1 - ya, x0 - xa : x1 - xa]
    finally:
        generator.train(was_training)
    return out
