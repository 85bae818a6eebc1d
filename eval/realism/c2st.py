"""How distinguishable two sets of SEM images are: a classifier two-sample test and interpretable distances.

Main score: a classifier two-sample test (C2ST, Lopez-Paz & Oquab 2017). A small CNN, trained from scratch, learns
to tell crops of set A from crops of set B; its balanced accuracy on crops of *held-out images* is the score
(0.5: indistinguishable, 1.0: trivially separable). Images, not crops, are split into two folds and the test is
cross-fitted (train on one fold, test on the other, then swap), so every image is tested once and never by a
network that saw it. The 95 % interval comes from a bootstrap over test images (crops of one image are
correlated; counting them as independent would make the interval far too narrow).

Interpretable distances, on the same images: Wasserstein-1 between intensity distributions and between gradient
magnitude distributions (per nm), the RMS difference of log10 radially averaged power spectra, and KID (kernel
inception distance, Binkowski et al. 2018) on features of a denoising autoencoder that this module trains itself on
both sets: no downloaded weights.

Both sets are brought to one pixel size (that of set A) before anything is measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from eval.realism.config import RealismConfig
from eval.realism.data import ImageSet, _check_size, crop_positions, cut_crops, random_crops
from eval.realism.nets import CropClassifier, _dihedral


@dataclass(frozen=True, slots=True)
class C2STResult:
    accuracy: float  # balanced accuracy on held-out images' crops
    ci_low: float
    ci_high: float
    accuracy_a: float  # fraction of A's test crops classified as A
    accuracy_b: float
    n_test_crops: int
    n_images_a: int
    n_images_b: int
    folds: list[dict] = field(default_factory=list)  # per fold: train/test image names, final training loss
    # with masks for both sets: the same test crops split into substrate-only crops and crops holding particle
    # pixels, each with its balanced accuracy and crop counts (which content gives a set away)
    by_content: dict[str, dict] | None = None


# ----------------------------------------------------------------------------------------------- C2ST


def _folds(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(n)
    return np.sort(order[: (n + 1) // 2]), np.sort(order[(n + 1) // 2 :])


def _train_classifier(train_a, train_b, cfg: RealismConfig, seed: int, on_step=None) -> tuple[nn.Module, float]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = CropClassifier().to(cfg.device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.learning_rate, total_steps=cfg.steps)
    half = cfg.batch_size // 2
    target = torch.cat([torch.ones(half), torch.zeros(half)]).to(cfg.device)
    losses = []
    for step in range(cfg.steps):
        crops = np.concatenate([random_crops(train_a, half, cfg.crop_px, rng),
                                random_crops(train_b, half, cfg.crop_px, rng)])
        x = torch.from_numpy(crops)[:, None]
        x = _dihedral(x, torch.from_numpy(rng.integers(0, 4, len(x))), torch.from_numpy(rng.random(len(x)) < 0.5))
        loss = nn.functional.binary_cross_entropy_with_logits(net(x.to(cfg.device)), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    return net.eval(), float(np.mean(losses[-max(1, cfg.steps // 10) :]))


@torch.no_grad()
def _test_crops(net: nn.Module, images, masks, label: int, cfg: RealismConfig, seed: int):
    """Classify the test crops of each image (fixed, seeded crop positions): (n_images, crops) bool correct and,
    with masks, (n_images, crops) bool "holds particle pixels" (else None)."""
    rng = np.random.default_rng(seed)
    correct = np.empty((len(images), cfg.test_crops_per_image), bool)
    particle = None if masks is None else np.empty_like(correct)
    for i, image in enumerate(images):
        pos = crop_positions([image.shape], cfg.test_crops_per_image, cfg.crop_px, rng)
        crops = torch.from_numpy(cut_crops([image], pos, cfg.crop_px))[:, None]
        correct[i] = ((net(crops.to(cfg.device)) > 0) == bool(label)).cpu().numpy()
        if masks is not None:
            c = cfg.crop_px
            particle[i] = [masks[i][y : y + c, x : x + c].any() for _, y, x in pos]
    return correct, particle


def accuracy_by_content(correct_a: np.ndarray, particle_a: np.ndarray, correct_b: np.ndarray,
                        particle_b: np.ndarray) -> dict[str, dict]:
    """Balanced accuracy of the test crops holding no particle pixel ("substrate") and of those holding some
    ("particles"), with the crop counts of each set (accuracies None where a set has no such crop)."""
    out = {}
    for name, want in (("substrate", False), ("particles", True)):
        sel_a, sel_b = particle_a == want, particle_b == want
        acc_a = float(correct_a[sel_a].mean()) if sel_a.any() else None
        acc_b = float(correct_b[sel_b].mean()) if sel_b.any() else None
        both = None if acc_a is None or acc_b is None else (acc_a + acc_b) / 2
        out[name] = {"accuracy": both, "accuracy_a": acc_a, "accuracy_b": acc_b,
                     "n_crops_a": int(sel_a.sum()), "n_crops_b": int(sel_b.sum())}
    return out


def balanced_accuracy_ci(correct_a: np.ndarray, correct_b: np.ndarray, crops_per_image: int, *,
                         n_bootstrap: int, rng: np.random.Generator, confidence: float = 0.95):
    """Balanced accuracy and its percentile interval, resampling images within each set."""
    acc_a = correct_a.sum() / (crops_per_image * len(correct_a))
    acc_b = correct_b.sum() / (crops_per_image * len(correct_b))
    boot_a = correct_a[rng.integers(0, len(correct_a), (n_bootstrap, len(correct_a)))].mean(1) / crops_per_image
    boot_b = correct_b[rng.integers(0, len(correct_b), (n_bootstrap, len(correct_b)))].mean(1) / crops_per_image
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile((boot_a + boot_b) / 2, [tail, 100 - tail])
    return float((acc_a + acc_b) / 2), float(low), float(high), float(acc_a), float(acc_b)


def c2st(a: ImageSet, b: ImageSet, cfg: RealismConfig = RealismConfig(), on_step=None) -> C2STResult:
    """Cross-fitted classifier two-sample test between two image sets (at the same pixel size)."""
    if len(a.images) < 2 or len(b.images) < 2:
        raise ValueError(f"C2ST needs at least 2 images per set (held-out images), got {len(a.images)} "
                         f"in {a.name!r} and {len(b.images)} in {b.name!r}")
    _check_size(list(a.images), cfg.crop_px, a.name)
    _check_size(list(b.images), cfg.crop_px, b.name)
    rng = np.random.default_rng(cfg.seed)
    folds_a, folds_b = _folds(len(a.images), rng), _folds(len(b.images), rng)
    with_masks = a.foreground is not None and b.foreground is not None
    crops = cfg.test_crops_per_image
    correct_a, correct_b = np.zeros((len(a.images), crops), bool), np.zeros((len(b.images), crops), bool)
    particle_a, particle_b = np.zeros_like(correct_a), np.zeros_like(correct_b)
    fold_records = []
    for k in range(2):
        tr_a, te_a = folds_a[k], folds_a[1 - k]
        tr_b, te_b = folds_b[k], folds_b[1 - k]
        progress = None if on_step is None else (lambda s, loss, k=k: on_step(k * cfg.steps + s, loss))
        net, final_loss = _train_classifier([a.images[i] for i in tr_a], [b.images[i] for i in tr_b], cfg,
                                            cfg.seed * 2 + k, progress)
        for correct, particle, images, te, label, offset in ((correct_a, particle_a, a, te_a, 1, 101),
                                                             (correct_b, particle_b, b, te_b, 0, 202)):
            masks = [images.foreground[i] for i in te] if with_masks else None
            hit, holds = _test_crops(net, [images.images[i] for i in te], masks, label, cfg, cfg.seed + offset + k)
            correct[te] = hit
            if with_masks:
                particle[te] = holds
        fold_records.append({
            "train_a": [a.names[i] for i in tr_a], "test_a": [a.names[i] for i in te_a],
            "train_b": [b.names[i] for i in tr_b], "test_b": [b.names[i] for i in te_b],
            "final_train_loss": final_loss,
        })
    acc, low, high, acc_a, acc_b = balanced_accuracy_ci(correct_a.sum(1), correct_b.sum(1), crops,
                                                        n_bootstrap=cfg.n_bootstrap, rng=rng)
    by_content = accuracy_by_content(correct_a, particle_a, correct_b, particle_b) if with_masks else None
    return C2STResult(acc, low, high, acc_a, acc_b, crops * (len(a.images) + len(b.images)),
                      len(a.images), len(b.images), fold_records, by_content)
