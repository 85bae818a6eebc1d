"""Kernel inception distance on features of a denoising autoencoder trained on both image sets."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from eval.realism.c2st import _folds
from eval.realism.config import RealismConfig
from eval.realism.data import ImageSet, random_crops
from eval.realism.nets import DenoisingAutoencoder

# ----------------------------------------------------------------------------------------------- KID


def train_feature_net(images: list[np.ndarray], cfg: RealismConfig, seed: int) -> DenoisingAutoencoder:
    """A denoising autoencoder trained on crops of the given images (both sets): the KID feature extractor."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = DenoisingAutoencoder().to(cfg.device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate)
    for _ in range(cfg.ae_steps):
        clean = torch.from_numpy(random_crops(images, cfg.batch_size, cfg.crop_px, rng))[:, None].to(cfg.device)
        noise = torch.from_numpy(rng.normal(0.0, 0.05, clean.shape).astype(np.float32)).to(cfg.device)
        loss = nn.functional.mse_loss(net(clean + noise), clean)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def kid(features_a: np.ndarray, features_b: np.ndarray, *, subset_size: int, n_subsets: int,
        rng: np.random.Generator) -> tuple[float, float]:
    """Kernel inception distance: unbiased MMD^2 with the cubic polynomial kernel, mean and SD over subsets."""
    d = features_a.shape[1]
    m = min(subset_size, len(features_a), len(features_b))
    values = []
    for _ in range(n_subsets):
        x = features_a[rng.choice(len(features_a), m, replace=False)]
        y = features_b[rng.choice(len(features_b), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        off = ~np.eye(m, dtype=bool)
        values.append(kxx[off].mean() + kyy[off].mean() - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def kid_score(a: ImageSet, b: ImageSet, cfg: RealismConfig) -> tuple[float, float]:
    """KID between held-out crops (fold 1) on features of an autoencoder trained on fold 0 of both sets."""
    rng = np.random.default_rng(cfg.seed + 7)
    fa, fb = _folds(len(a.images), rng), _folds(len(b.images), rng)
    net = train_feature_net([a.images[i] for i in fa[0]] + [b.images[i] for i in fb[0]], cfg, cfg.seed + 11)
    feats = []
    for images, fold in ((a.images, fa[1]), (b.images, fb[1])):
        crops = random_crops([images[i] for i in fold], max(cfg.kid_subset_size, 4 * len(fold)), cfg.crop_px, rng)
        feats.append(net.features(torch.from_numpy(crops)[:, None].to(cfg.device)).cpu().numpy().astype(np.float64))
    pooled = np.concatenate(feats)
    centre, scale = pooled.mean(0), pooled.std(0) + 1e-8  # standardised features: the kernel's x.y/d is O(1)
    return kid((feats[0] - centre) / scale, (feats[1] - centre) / scale, subset_size=cfg.kid_subset_size,
               n_subsets=cfg.kid_subsets, rng=rng)
