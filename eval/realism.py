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

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy.stats import wasserstein_distance
from torch import nn

from eval.image_stats import gradient_magnitude, radial_power_spectrum
from eval.reference import info_bar_start, read_sem_image
from simulator.dataset import read_png


@dataclass(frozen=True, slots=True)
class ImageSet:
    """A named set of (H, W) float32 images in [0, 1] at one pixel size; ``foreground``: their (H, W) bool
    particle masks where every image of the set has a label map (then C2ST also scores substrate-only crops and
    crops holding particles apart), else None."""

    name: str
    images: tuple[np.ndarray, ...]
    names: tuple[str, ...]
    pixel_size_nm: float
    foreground: tuple[np.ndarray, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RealismConfig:
    crop_px: int = 64
    steps: int = 300  # per fold
    batch_size: int = 32
    learning_rate: float = 2e-3
    test_crops_per_image: int = 48
    n_bootstrap: int = 2000
    ae_steps: int = 200
    kid_subset_size: int = 200
    kid_subsets: int = 50
    normalize: str = "image"  # image: each image scaled by its own 1st-99th percentiles before C2ST and KID
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        if self.normalize not in ("image", "none"):
            raise ValueError(f"normalize must be 'image' or 'none', got {self.normalize!r}")
        if self.crop_px < 16 or self.crop_px % 8:
            raise ValueError(f"crop_px must be a multiple of 8 and >= 16, got {self.crop_px!r}")
        for key in ("steps", "batch_size", "test_crops_per_image", "n_bootstrap", "ae_steps", "kid_subsets"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)!r}")
        if self.batch_size % 2:
            raise ValueError(f"batch_size must be even (half A, half B), got {self.batch_size!r}")


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


# ----------------------------------------------------------------------------------------------- loading


def _resample(image: np.ndarray, factor: float) -> np.ndarray:
    if abs(factor - 1.0) < 1e-3:
        return image
    h, w = image.shape
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC)


def _resample_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == shape:
        return mask
    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0


def load_image_set(folder: str | Path, *, pixel_size_nm: float | None = None) -> ImageSet:
    """Images of a semsynth dataset folder (images/ + annotations.json) or of a plain folder of SEM files.

    Plain folders (TIFF/PNG, or the reference layout with SEM/) need the pixel size in their metadata or in
    ``pixel_size_nm``; instrument info bars are removed. Images are scaled to [0, 1] by their bit depth. A
    dataset whose every image has a label map also gives the particle masks (``ImageSet.foreground``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    images, names, sizes, masks = [], [], [], []
    coco_path = folder / "annotations.json"
    if coco_path.is_file():
        coco = json.loads(coco_path.read_text())
        labelled = all(record.get("label_file") for record in coco["images"])
        for record in coco["images"]:
            pixels, _ = read_png(folder / "images" / record["file_name"])
            rows = info_bar_start(pixels)
            images.append(pixels[:rows])
            names.append(record["file_name"])
            sizes.append(float(record.get("pixel_size_nm") or pixel_size_nm or np.nan))
            if labelled:
                labels = cv2.imread(str(folder / record["label_file"]), cv2.IMREAD_UNCHANGED)
                if labels is None or labels.shape[:2] != pixels.shape:
                    raise ValueError(f"{folder / record['label_file']}: missing, unreadable or not of the image's "
                                     f"shape {pixels.shape}")
                masks.append(labels[:rows] > 0)
    else:
        from eval.ingest import find_pairs

        for path, _ in find_pairs(folder):
            pixels, meta_px, dtype = read_sem_image(path)
            rows = info_bar_start(pixels)
            image = pixels[:rows].astype(np.float32)
            top = float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else max(float(image.max()), 1e-12)
            images.append(image / top)
            names.append(path.name)
            sizes.append(float(meta_px or pixel_size_nm or np.nan))
    if not images:
        raise FileNotFoundError(f"{folder}: no images found")
    missing = [n for n, s in zip(names, sizes, strict=True) if not np.isfinite(s)]
    if missing:
        raise ValueError(f"{folder}: no pixel size for {missing[:3]} (pass --pixel-size-nm)")
    target = float(np.median(sizes))
    images = [_resample(im, s / target) for im, s in zip(images, sizes, strict=True)]
    foreground = None
    if masks:
        foreground = tuple(_resample_mask(m, im.shape) for m, im in zip(masks, images, strict=True))
    return ImageSet(folder.name, tuple(images), tuple(names), target, foreground)


def at_pixel_size(images: ImageSet, pixel_size_nm: float) -> ImageSet:
    """The set resampled to another pixel size."""
    factor = images.pixel_size_nm / pixel_size_nm
    resampled = tuple(_resample(im, factor) for im in images.images)
    foreground = None
    if images.foreground is not None:
        foreground = tuple(_resample_mask(m, im.shape) for m, im in zip(images.foreground, resampled, strict=True))
    return ImageSet(images.name, resampled, images.names, pixel_size_nm, foreground)


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


def crop_positions(shapes: list[tuple[int, int]], n: int, crop_px: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) int: image index, top and left of n crops from uniformly chosen images at uniform positions."""
    which = rng.integers(0, len(shapes), n)
    out = np.empty((n, 3), np.int64)
    for i, j in enumerate(which):
        h, w = shapes[j][:2]
        out[i] = j, rng.integers(0, h - crop_px + 1), rng.integers(0, w - crop_px + 1)
    return out


def cut_crops(images: list[np.ndarray], positions: np.ndarray, crop_px: int) -> np.ndarray:
    """(n, crop, crop) float32 crops at ``crop_positions``."""
    out = np.empty((len(positions), crop_px, crop_px), np.float32)
    for i, (j, y, x) in enumerate(positions):
        out[i] = images[j][y : y + crop_px, x : x + crop_px]
    return out


def random_crops(images: list[np.ndarray], n: int, crop_px: int, rng: np.random.Generator) -> np.ndarray:
    """n crops (n, crop, crop) from uniformly chosen images at uniform positions."""
    return cut_crops(images, crop_positions([im.shape for im in images], n, crop_px, rng), crop_px)


def _check_size(images: list[np.ndarray], crop_px: int, set_name: str) -> None:
    small = [im.shape for im in images if min(im.shape) < crop_px]
    if small:
        raise ValueError(f"{set_name}: image(s) of shape {small[0]} smaller than crop_px = {crop_px}")


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


# ----------------------------------------------------------------------------------------------- distances


def _pooled_sample(arrays, n: int, rng: np.random.Generator) -> np.ndarray:
    flat = np.concatenate([x.ravel() for x in arrays])
    return flat[rng.integers(0, flat.size, min(n, flat.size))]


def mean_spectrum(images: ImageSet, crop_px: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Mean radially averaged power spectrum over the square tiles of every image (all whole tiles of
    ``crop_px``, centred as a grid; one central crop alone would make the mean depend on whether it holds a
    particle)."""
    side = min(crop_px, *(min(im.shape) for im in images.images))
    spectra = []
    for im in images.images:
        rows, cols = im.shape[0] // side, im.shape[1] // side
        y0, x0 = (im.shape[0] - rows * side) // 2, (im.shape[1] - cols * side) // 2
        for r in range(rows):
            for c in range(cols):
                y, x = y0 + r * side, x0 + c * side
                freq, power = radial_power_spectrum(im[y : y + side, x : x + side], images.pixel_size_nm)
                spectra.append(power)
    return freq, np.mean(spectra, axis=0)


def distances(a: ImageSet, b: ImageSet, *, seed: int = 0, n_pixels: int = 400_000) -> dict[str, float]:
    """Interpretable distances between two sets at the same pixel size."""
    rng = np.random.default_rng(seed)
    ia, ib = _pooled_sample(a.images, n_pixels, rng), _pooled_sample(b.images, n_pixels, rng)
    grad_a = _pooled_sample([gradient_magnitude(im, a.pixel_size_nm) for im in a.images], n_pixels, rng)
    grad_b = _pooled_sample([gradient_magnitude(im, b.pixel_size_nm) for im in b.images], n_pixels, rng)
    side = min(256, *(min(im.shape) for im in a.images + b.images))
    freq, pa = mean_spectrum(a, side)
    _, pb = mean_spectrum(b, side)
    ok = (pa > 0) & (pb > 0)
    return {
        "intensity_w1": float(wasserstein_distance(ia, ib)),
        "intensity_mean_a": float(ia.mean()), "intensity_mean_b": float(ib.mean()),
        "gradient_w1_per_nm": float(wasserstein_distance(grad_a, grad_b)),
        "gradient_median_a_per_nm": float(np.median(grad_a)), "gradient_median_b_per_nm": float(np.median(grad_b)),
        "spectrum_rms_log10": float(np.sqrt(np.mean((np.log10(pa[ok]) - np.log10(pb[ok])) ** 2))),
    }


# ----------------------------------------------------------------------------------------------- report


@dataclass(frozen=True, slots=True)
class RealismReport:
    set_a: str
    set_b: str
    pixel_size_nm: float
    c2st: C2STResult
    kid: float
    kid_sd: float
    distances: dict[str, float]
    config: RealismConfig

    def to_json(self) -> dict:
        return {
            "set_a": self.set_a, "set_b": self.set_b, "pixel_size_nm": self.pixel_size_nm,
            "c2st_accuracy": self.c2st.accuracy, "c2st_ci95": [self.c2st.ci_low, self.c2st.ci_high],
            "c2st": asdict(self.c2st), "kid": self.kid, "kid_sd": self.kid_sd, "distances": self.distances,
            "config": asdict(self.config),
            "interpretation": "C2ST accuracy 0.5 = indistinguishable, 1.0 = trivially separable; the interval "
                              "is a bootstrap over held-out images",
        }


LEVEL_PERCENTILES = (1.0, 99.0)  # an image's black and white levels: these intensity percentiles


def image_levels(image: np.ndarray) -> tuple[float, float]:
    """(low, high): the image's 1st and 99th intensity percentiles, its black and white level as the operator
    set them."""
    low, high = np.percentile(image, LEVEL_PERCENTILES)
    return float(low), float(high)


def scale_to_levels(image, low, span):
    """An image (array or tensor; ``low`` and ``span`` scalars or broadcastable) scaled so that its levels
    ``low`` and ``low + span`` map to 0.25 and 0.75."""
    return (image - low) / span * 0.5 + 0.25


def normalized(images: ImageSet) -> ImageSet:
    """Each image scaled so that its levels (1st and 99th intensity percentiles) map to 0.25 and 0.75."""
    out = []
    for im in images.images:
        lo, hi = image_levels(im)
        out.append(scale_to_levels(im.astype(np.float64), lo, max(hi - lo, 1e-6)).astype(np.float32))
    return ImageSet(images.name, tuple(out), images.names, images.pixel_size_nm, images.foreground)


def realism(a: ImageSet, b: ImageSet, cfg: RealismConfig = RealismConfig(), on_step=None) -> RealismReport:
    """C2ST, KID and distances between two image sets; set B is resampled to A's pixel size.

    With ``cfg.normalize == "image"`` (default) C2ST and KID see every image scaled by its own intensity
    percentiles: brightness and contrast are operator settings that differ from image to image in any real
    set, and would otherwise dominate the classifier; they remain measured by the intensity distance.
    """
    b = at_pixel_size(b, a.pixel_size_nm)
    na, nb = (normalized(a), normalized(b)) if cfg.normalize == "image" else (a, b)
    result = c2st(na, nb, cfg, on_step)
    kid_mean, kid_sd = kid_score(na, nb, cfg)
    return RealismReport(a.name, b.name, a.pixel_size_nm, result, kid_mean, kid_sd,
                         distances(a, b, seed=cfg.seed), cfg)


def summary_plot(a: ImageSet, b: ImageSet, report: RealismReport, out_png: str | Path) -> None:
    """Intensity and gradient distributions, power spectra, and the C2ST score with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = at_pixel_size(b, a.pixel_size_nm)
    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    ia, ib = _pooled_sample(a.images, 200_000, rng), _pooled_sample(b.images, 200_000, rng)
    bins = np.linspace(0, 1, 129)
    axes[0].hist(ia, bins, density=True, histtype="step", label=a.name)
    axes[0].hist(ib, bins, density=True, histtype="step", label=b.name)
    axes[0].set(xlabel="intensity", ylabel="density", yscale="log", title="intensity")
    axes[0].legend(fontsize=8)
    ga = _pooled_sample([gradient_magnitude(im, a.pixel_size_nm) for im in a.images], 200_000, rng)
    gb = _pooled_sample([gradient_magnitude(im, b.pixel_size_nm) for im in b.images], 200_000, rng)
    gbins = np.linspace(0, np.percentile(np.concatenate([ga, gb]), 99.5), 129)
    axes[1].hist(ga, gbins, density=True, histtype="step")
    axes[1].hist(gb, gbins, density=True, histtype="step")
    axes[1].set(xlabel="gradient magnitude (1/nm)", yscale="log", title="gradient magnitude")
    side = min(256, *(min(im.shape) for im in a.images + b.images))
    for s in (a, b):
        freq, power = mean_spectrum(s, side)
        axes[2].loglog(freq, power, label=s.name)
    axes[2].set(xlabel="spatial frequency (1/nm)", ylabel="power", title="radially averaged power spectrum")
    r = report.c2st
    axes[3].errorbar([0], [r.accuracy], yerr=[[r.accuracy - r.ci_low], [r.ci_high - r.accuracy]], fmt="o",
                     capsize=6, color="k")
    axes[3].axhline(0.5, ls="--", color="tab:green", lw=1)
    axes[3].axhline(1.0, ls="--", color="tab:red", lw=1)
    axes[3].set(xlim=(-1, 1), ylim=(0.4, 1.02), xticks=[], ylabel="held-out balanced accuracy",
                title=f"C2ST {r.accuracy:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def html_summary(report: RealismReport, png_name: str) -> str:
    """A short self-contained page: the scores with their meaning, and the summary figure."""
    import base64

    r = report.c2st
    png = base64.b64encode(Path(png_name).read_bytes()).decode()
    rows = "".join(f"<tr><td>{k}</td><td>{v:.5g}</td></tr>" for k, v in report.distances.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>realism: {report.set_a} vs {report.set_b}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td{{padding:2px 12px}}</style></head><body>
<h1>Realism: {report.set_a} vs {report.set_b}</h1>
<p>Both sets at {report.pixel_size_nm:.3f} nm/px. C2ST: a CNN trained from scratch on {report.config.crop_px} px
crops, cross-fitted over two folds of images; accuracy on crops of held-out images, 95 % interval by bootstrap over
images. 0.5 = indistinguishable, 1.0 = trivially separable.</p>
<table><tr><td><b>C2ST balanced accuracy</b></td><td><b>{r.accuracy:.3f}</b> [{r.ci_low:.3f}, {r.ci_high:.3f}]</td></tr>
<tr><td>A crops called A / B crops called B</td><td>{r.accuracy_a:.3f} / {r.accuracy_b:.3f}</td></tr>
<tr><td>images A / B, test crops</td><td>{r.n_images_a} / {r.n_images_b}, {r.n_test_crops}</td></tr>
<tr><td>KID (self-trained denoising-autoencoder features)</td>
<td>{report.kid:.4g} &plusmn; {report.kid_sd:.2g}</td></tr>
{rows}</table>
<img src="data:image/png;base64,{png}" style="width:100%">
</body></html>
"""
