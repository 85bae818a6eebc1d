"""Networks of the appearance model: the residual generator both families share, the conditional PatchGAN
(``gan``) and the residual encoder (``vae``).

Generator input: the ``N_BUFFERS`` buffers of ``inputs.model_inputs`` (channel 0 the render, the last the edge
gate) and ``n_noise`` noise channels (white noise for ``gan``; the upsampled latent and one white channel for
``vae``). Output: tone(render) + gate * max_correction * tanh(raw) + pixel_sigma * (last noise channel), tone a
monotone curve that starts as the identity, raw from a
last layer initialised to zero and ``pixel_sigma`` a buffer that is 0 until a ``vae`` sets it to its
likelihood's learned scale (a sample of p(x | z) = N(mean, sigma^2)), so an untrained generator returns the
render exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from refiner.appearance.inputs import N_BUFFERS

FAMILIES = ("gan", "vae")


@dataclass(frozen=True, slots=True, kw_only=True)
class NetConfig:
    width: int = 24  # channels of the half-resolution trunk (full resolution: width // 2)
    dilations: tuple[int, ...] = (1, 2, 4, 1)  # half-resolution residual blocks (receptive field ~ 60 px)
    max_correction: float = 0.5  # |correction| < max_correction (normalised view: particle - substrate = 0.5)
    n_noise: int = 2  # gan: white-noise channels
    latent_channels: int = 4  # vae: latent channels at half resolution
    disc_width: int = 24

    def __post_init__(self):
        if self.width < 4 or self.width % 2:
            raise ValueError(f"net.width must be an even number >= 4, got {self.width!r}")
        if not self.max_correction > 0:
            raise ValueError(f"net.max_correction must be > 0, got {self.max_correction!r}")

    def noise_channels(self, family: str) -> int:
        """gan: white-noise channels; vae: the latent channels and one white channel (observation noise)."""
        return self.n_noise if family == "gan" else self.latent_channels + 1


def _conv(c_in: int, c_out: int, k: int = 3, dilation: int = 1, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=dilation * (k // 2), dilation=dilation,
                     padding_mode="reflect" if k > 1 else "zeros")


class _Block(nn.Module):
    def __init__(self, width: int, dilation: int):
        super().__init__()
        self.conv1 = _conv(width, width, dilation=dilation)
        self.conv2 = _conv(width, width)

    def forward(self, x):
        return x + self.conv2(F.leaky_relu(self.conv1(F.leaky_relu(x, 0.2)), 0.2))


@dataclass(frozen=True, slots=True)
class GeneratorOut:
    image: torch.Tensor  # (B, 1, H, W)
    correction: torch.Tensor  # (B, 1, H, W) the gated residual (what the edge penalty sees)
    log_scale: torch.Tensor  # (B, 1, H, W) vae: log noise scale relative to the learned global one (0 at start)


class ToneCurve(nn.Module):
    """Monotone piecewise-linear map of the render's levels, identity at initialisation: slopes exp(theta_k)
    on ``n`` equal segments of [low, high] (theta = 0: slope 1), an offset (0), slope 1 outside. A few
    parameters with a strong paired gradient: the model learns the levels of particles and substrate in a few
    steps and cannot invert a contrast (so cannot move an edge)."""

    def __init__(self, n: int = 12, low: float = -0.25, high: float = 2.0):
        super().__init__()
        self.register_buffer("knots", torch.linspace(low, high, n + 1))
        self.theta = nn.Parameter(torch.zeros(n))
        self.offset = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + offset + sum_k (exp(theta_k) - 1) * (x's path through segment k): exactly x at initialisation."""
        lo, width = self.knots[:-1], self.knots[1:] - self.knots[:-1]
        seg = torch.minimum((x[..., None] - lo).clamp(min=0), width)
        return x + self.offset + (seg * torch.expm1(self.theta)).sum(-1)


class ResidualGenerator(nn.Module):
    """tone(render) + bounded, edge-gated correction (+ observation noise for a vae). ``forward(buffers, noise)``
    -> ``GeneratorOut``."""

    def __init__(self, cfg: NetConfig, n_noise: int):
        super().__init__()
        w, half = cfg.width, cfg.width // 2
        self.max_correction = cfg.max_correction
        self.n_noise = n_noise
        self.head = _conv(N_BUFFERS + n_noise, half)
        self.down = _conv(half, w, stride=2)
        self.trunk = nn.Sequential(*[_Block(w, d) for d in cfg.dilations])
        self.up = _conv(w, half)
        self.fuse = nn.Sequential(_conv(2 * half, half), nn.LeakyReLU(0.2), _conv(half, half), nn.LeakyReLU(0.2))
        self.tail = nn.Conv2d(half, 2, 1)  # correction, log-scale of the observation noise (vae)
        self.register_buffer("pixel_sigma", torch.zeros(()))  # vae: observation noise of samples
        self.tone = ToneCurve()
        nn.init.zeros_(self.tail.weight)  # identity at step 0: correction exactly 0
        nn.init.zeros_(self.tail.bias)

    def forward(self, buffers: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if buffers.shape[1] != N_BUFFERS or noise.shape[1] != self.n_noise:
            raise ValueError(f"expected {N_BUFFERS} buffers and {self.n_noise} noise channels, "
                             f"got {buffers.shape[1]} and {noise.shape[1]}")
        h, w = buffers.shape[-2:]
        x = F.leaky_relu(self.head(torch.cat([buffers, noise], 1)), 0.2)
        y = self.trunk(F.leaky_relu(self.down(x), 0.2))
        y = F.interpolate(self.up(y), size=(h, w), mode="bilinear", align_corners=False)
        raw, raw_scale = self.tail(self.fuse(torch.cat([x, y], 1))).chunk(2, 1)
        correction = self.max_correction * torch.tanh(raw) * buffers[:, -1:]
        log_scale = 3.0 * torch.tanh(raw_scale / 3.0)  # per-pixel log of the noise scale relative to pixel_sigma
        image = self.tone(buffers[:, :1]) + correction + self.pixel_sigma * torch.exp(log_scale) * noise[:, -1:]
        return GeneratorOut(image, correction, log_scale)


class PatchDiscriminator(nn.Module):
    """Conditional PatchGAN on (image, foreground, separation): ``forward`` -> (logits, features)."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        w = cfg.disc_width
        self.layers = nn.ModuleList([
            nn.Conv2d(3, w, 4, 2, 1), nn.Conv2d(w, 2 * w, 4, 2, 1), nn.Conv2d(2 * w, 2 * w, 4, 2, 1),
            nn.Conv2d(2 * w, 2 * w, 3, 1, 1),
        ])
        self.out = nn.Conv2d(2 * w, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.2)
            feats.append(x)
        return self.out(x), feats


class ResidualEncoder(nn.Module):
    """q(z | real - render, buffers): (mu, logvar), each (B, latent_channels, H/2, W/2)."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        w = cfg.width
        self.net = nn.Sequential(
            _conv(1 + N_BUFFERS, w // 2), nn.LeakyReLU(0.2), _conv(w // 2, w, stride=2), nn.LeakyReLU(0.2),
            _conv(w, w, dilation=2), nn.LeakyReLU(0.2), _conv(w, w), nn.LeakyReLU(0.2),
        )
        self.out = nn.Conv2d(w, 2 * cfg.latent_channels, 1)

    def forward(self, residual: torch.Tensor, buffers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.out(self.net(torch.cat([residual, buffers], 1))).chunk(2, 1)
        return mu, logvar.clamp(-8, 4)


def latent_to_noise(z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The VAE's latent (half resolution) as the generator's noise input (bilinear to full resolution)."""
    return F.interpolate(z, size=size, mode="bilinear", align_corners=False)


def draw_noise(family: str, cfg: NetConfig, shape: tuple[int, int, int], generator: torch.Generator) -> torch.Tensor:
    """(B, n, H, W) CPU noise input for ``family`` (shape = (B, H, W)): white N(0, 1) for ``gan``; for ``vae`` a
    prior draw z ~ N(0, 1) at half resolution, upsampled, and one white channel (observation noise)."""
    b, h, w = shape
    if family == "gan":
        return torch.randn((b, cfg.n_noise, h, w), generator=generator)
    if family == "vae":
        z = torch.randn((b, cfg.latent_channels, (h + 1) // 2, (w + 1) // 2), generator=generator)
        return torch.cat([latent_to_noise(z, (h, w)), torch.randn((b, 1, h, w), generator=generator)], 1)
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
