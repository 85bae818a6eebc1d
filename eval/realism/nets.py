"""The two small networks of the realism measures: the C2ST crop classifier and the denoising autoencoder whose
features KID compares.
"""

from __future__ import annotations

import torch
from torch import nn

# ----------------------------------------------------------------------------------------------- crops


def _dihedral(batch: torch.Tensor, k: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Rotate each crop by k[i] * 90 degrees and flip where flip[i]: the 8 symmetries of the square."""
    out = torch.empty_like(batch)
    for rot in range(4):
        for f in (False, True):
            sel = (k == rot) & (flip == f)
            if sel.any():
                x = torch.rot90(batch[sel], rot, dims=(-2, -1))
                out[sel] = torch.flip(x, dims=(-1,)) if f else x
    return out


# ----------------------------------------------------------------------------------------------- networks


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.BatchNorm2d(c_out),
                         nn.LeakyReLU(0.2))


class CropClassifier(nn.Module):
    """~70 k parameters: a thin full-resolution layer (pixel noise and edges), three strided blocks, global
    average and max pooling, one logit (A vs B)."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.LeakyReLU(0.2),
            _block(width, 2 * width, 2), _block(2 * width, 4 * width, 2), _block(4 * width, 8 * width, 2),
            _block(8 * width, 8 * width, 1),
        )
        self.head = nn.Linear(16 * width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features((x - 0.5) * 4.0)
        return self.head(torch.cat([f.mean((-2, -1)), f.amax((-2, -1))], 1)).squeeze(1)


class DenoisingAutoencoder(nn.Module):
    """Encoder-decoder trained to remove added noise; the encoder's pooled activations are KID features."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.LeakyReLU(0.2),
            _block(width, 2 * width, 2), _block(2 * width, 4 * width, 2), _block(4 * width, 8 * width, 2),
        )
        up = lambda c_in, c_out: nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 2, stride=2), nn.LeakyReLU(0.2))  # noqa: E731
        self.decoder = nn.Sequential(up(8 * width, 4 * width), up(4 * width, 2 * width), up(2 * width, width),
                                     nn.Conv2d(width, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder((x - 0.5) * 4.0)) / 4.0 + 0.5

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.encoder((x - 0.5) * 4.0)
        return torch.cat([f.mean((-2, -1)), f.std((-2, -1))], 1)
