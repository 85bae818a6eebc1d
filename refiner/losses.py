"""Losses of the refiner: adversarial (LSGAN or hinge), content (SimGAN self-regularisation of the low-passed
residual), noise statistics (neighbour-difference deciles), fine-band spectrum matching, and the differentiable
augmentation shared by real and refined crops (DiffAugment: translation and cutout; no brightness/contrast
jitter, since tone is what is learned).

Tensors are (B, 1, H, W) float32 in [0, 1] unless stated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

GAN_KINDS = ("lsgan", "hinge")


def gan_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Discriminator loss: real patches towards 1 (LSGAN) / above +1 (hinge), refined ones towards 0 / below -1."""
    if kind == "lsgan":
        return 0.5 * (((real_logits - 1) ** 2).mean() + (fake_logits**2).mean())
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    raise ValueError(f"gan loss must be one of {GAN_KINDS}, got {kind!r}")


def gan_g_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Generator loss: refined patches scored as real."""
    if kind == "lsgan":
        return 0.5 * ((fake_logits - 1) ** 2).mean()
    if kind == "hinge":
        return -fake_logits.mean()
    raise ValueError(f"gan loss must be one of {GAN_KINDS}, got {kind!r}")


def low_pass(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Gaussian blur (reflect padding), kernel +-3 sigma."""
    k = 2 * max(1, round(3 * sigma_px)) + 1
    import kornia  # here, not at import: training code that only augments runs where kornia is absent

    return kornia.filters.gaussian_blur2d(x, (k, k), (sigma_px, sigma_px), border_type="reflect")


def content_loss(residual: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """SimGAN self-regularisation of the generator's local residual: mean |G_sigma * residual|.

    The monotone tone curve cannot move a structure, the substrate texture is masked away from every
    labelled particle and the particle shading away from every boundary (and it only rescales the image's own
    variations), so only the local residual is tied to the input; the low-pass lets it reshape noise
    and fine detail (scales below ~sigma) freely.
    """
    return low_pass(residual, sigma_px).abs().mean()


def _radial_bins(h: int, w: int, min_period_px: float, max_period_px: float, n_bins: int, device) -> torch.Tensor:
    fy = torch.fft.fftfreq(h, device=device)
    fx = torch.fft.rfftfreq(w, device=device)
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    edges = torch.logspace(torch.log10(torch.tensor(1 / max_period_px)), torch.log10(torch.tensor(1 / min_period_px)),
                           n_bins + 1).to(device)
    idx = torch.bucketize(radius, edges) - 1
    idx[(radius < edges[0]) | (radius > edges[-1])] = -1
    return idx


def log_spectrum(x: torch.Tensor, *, min_period_px: float = 2.0, max_period_px: float = 12.0,
                 n_bins: int = 8) -> torch.Tensor:
    """(n_bins,) log of the batch-mean radially averaged power spectrum (Hann window, mean removed) in the
    band of periods [min_period_px, max_period_px]: the fine texture and noise of a batch of crops."""
    b, c, h, w = x.shape
    window = torch.outer(torch.hann_window(h, periodic=False, device=x.device),
                         torch.hann_window(w, periodic=False, device=x.device))
    centred = (x - x.mean(dim=(-2, -1), keepdim=True)) * window
    power = torch.fft.rfft2(centred).abs().pow(2).mean(dim=(0, 1)) / window.pow(2).sum()
    idx = _radial_bins(h, w, min_period_px, max_period_px, n_bins, x.device)
    keep = idx >= 0
    sums = torch.zeros(n_bins, device=x.device).index_add(0, idx[keep], power[keep])
    counts = torch.bincount(idx[keep], minlength=n_bins).clamp(min=1)
    return torch.log(sums / counts + 1e-12)


def spectrum_loss(refined: torch.Tensor, real: torch.Tensor, **band) -> torch.Tensor:
    """Mean |log power| difference between refined and real crops in the fine-texture band (unpaired: batch
    means of each)."""
    return (log_spectrum(refined, **band) - log_spectrum(real.detach(), **band)).abs().mean()


_DIFF_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def difference_quantiles(x: torch.Tensor) -> torch.Tensor:
    """(2, 9) deciles of the horizontal and vertical neighbour differences of a batch: the noise level and
    its correlation along and across scan lines (dominated by the substrate, which covers most pixels)."""
    q = torch.tensor(_DIFF_QUANTILES, device=x.device, dtype=x.dtype)
    dx = (x[..., :, 1:] - x[..., :, :-1]).flatten()
    dy = (x[..., 1:, :] - x[..., :-1, :]).flatten()
    return torch.stack([torch.quantile(dx, q), torch.quantile(dy, q)])


def noise_loss(refined: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean |difference| of the neighbour-difference deciles of refined and real crops (unpaired), relative to
    the real ones' inter-decile range: matches noise level and texture statistics, not structures."""
    a, b = difference_quantiles(refined), difference_quantiles(real.detach())
    scale = (b[:, -1] - b[:, 0]).clamp(min=1e-4)[:, None]
    return ((a - b).abs() / scale).mean()


def quantize_ste(x: torch.Tensor, bit_depth: int) -> torch.Tensor:
    """Round to the output's grey levels in the forward pass, identity gradient (straight-through)."""
    top = float((1 << bit_depth) - 1)
    return x + (torch.round(x * top) / top - x).detach()


@dataclass(frozen=True, slots=True, kw_only=True)
class AugmentConfig:
    translation: float = 0.125  # max shift, fraction of the crop (zero padding)
    cutout: float = 0.25  # side of the cut-out square, fraction of the crop (0 = off)

    def __post_init__(self):
        for name in ("translation", "cutout"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"augment.{name} must be in [0, 1), got {value!r}")


def diff_augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random translation (zero-filled) and cutout per sample, differentiable in ``x`` (DiffAugment, Zhao et
    al. 2020). The same policy is applied to real and refined crops before the discriminator."""
    b, _, h, w = x.shape
    dev = x.device
    if cfg.translation > 0:
        sy, sx = int(h * cfg.translation), int(w * cfg.translation)
        ty = torch.randint(-sy, sy + 1, (b, 1, 1), generator=generator).to(dev)
        tx = torch.randint(-sx, sx + 1, (b, 1, 1), generator=generator).to(dev)
        rows = torch.arange(h, device=dev)[None, :, None] + ty
        cols = torch.arange(w, device=dev)[None, None, :] + tx
        padded = F.pad(x, (1, 1, 1, 1))
        rows = (rows + 1).clamp(0, h + 1).expand(b, h, w)
        cols = (cols + 1).clamp(0, w + 1).expand(b, h, w)
        batch = torch.arange(b, device=dev)[:, None, None].expand(b, h, w)
        x = padded[batch, :, rows, cols].permute(0, 3, 1, 2)
    if cfg.cutout > 0:
        ch, cw = max(1, int(h * cfg.cutout)), max(1, int(w * cfg.cutout))
        cy = torch.randint(0, h - ch + 1, (b, 1, 1), generator=generator).to(dev)
        cx = torch.randint(0, w - cw + 1, (b, 1, 1), generator=generator).to(dev)
        yy = torch.arange(h, device=dev)[None, :, None]
        xx = torch.arange(w, device=dev)[None, None, :]
        keep = ~((yy >= cy) & (yy < cy + ch) & (xx >= cx) & (xx < cx + cw))
        x = x * keep[:, None].to(x.dtype)
    return x
