"""Built-in CNN instance segmenter: a small U-Net in plain PyTorch, trained on semsynth-layout datasets.

    image (H, W) in [0, 1] -> normalise (per image percentiles) -> [rescale to the training nm/px]
      -> U-Net -> 3 maps: foreground, instance boundary, distance to the instance's boundary (0..1 per instance)
      -> [rescale back] -> markers (distance high, boundary low) -> watershed on (boundary - distance) -> ids

Network: a 2x space-to-depth stem (the U runs at half resolution, which keeps training CPU-feasible), a U of
``depth`` poolings with two 3x3 conv + BatchNorm + ReLU per level, and a full-resolution head that sees the
upsampled features and the input image, so boundaries stay pixel-sharp. Default about 1.9 M parameters.

Training (``train_unet``): random crops (half of them centred on a particle), rot90 and flips, mild intensity
jitter; loss = BCE + Dice on foreground and boundary + weighted L1 on the distance map; AdamW with warm-up and
cosine decay. The crops and augmentations of step s come from ``SeedSequence([seed, 0, s])``, so a run resumed
from its checkpoint continues exactly as if it had not been interrupted (on CPU, same thread count). The
checkpoint (weights, configs, training arguments, step, optimizer state, dataset description, loss history) is
written atomically every ``checkpoint_every`` steps and at the end.

Inference (``load_unet`` -> ``UNetModel``, an ``eval.segment`` model): the whole image in one pass when it fits
in ``tile_px``, else overlapping tiles blended with linear ramps.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from eval.data.pixels import normalise, resample
from eval.segment.interface import Prediction, check_input, remove_small_instances
from eval.segment.options import config_from_options
from eval.segment.watershed import marker_watershed
from eval.training import check_resume, load_checkpoint, resolve_device, save_checkpoint, seeded_init
from simulator.io.reader import read_dataset, read_manifest

CHECKPOINT_FORMAT = "semsynth-unet"
CHECKPOINT_VERSION = 1
MAP_NAMES = ("foreground", "boundary", "distance")
UNET_PERCENTILES = (0.5, 99.8)  # per-image contrast: these intensity percentiles map to 0 and 1


# ---------------------------------------------------------------------------------------------------- configs
@dataclass(frozen=True, slots=True, kw_only=True)
class UNetConfig:
    """Network shape: channels double per level from ``base_channels`` up to ``max_channels``."""

    base_channels: int = 16
    depth: int = 4  # poolings inside the U (after the 2x stem)
    max_channels: int = 256
    head_channels: int = 8  # full-resolution head

    def __post_init__(self):
        for name in ("base_channels", "depth", "max_channels", "head_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"unet.{name} must be an integer >= 1, got {value!r}")
        if self.depth > 7:
            raise ValueError(f"unet.depth must be <= 7, got {self.depth!r}")

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(min(self.base_channels * 2**k, self.max_channels) for k in range(self.depth + 1))

    @property
    def multiple_px(self) -> int:
        """Input sides must be multiples of this (inputs are padded to it)."""
        return 2 ** (self.depth + 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class PostprocessConfig:
    """From the three maps to instances."""

    foreground_threshold: float = 0.5
    boundary_threshold: float = 0.5  # marker pixels must have a lower boundary probability
    marker_distance: float = 0.45  # ... and a higher normalised distance (0 at the boundary, 1 at the centre)
    min_marker_area_nm2: float = 100.0
    min_area_nm2: float = 300.0  # smaller instances are dropped

    def __post_init__(self):
        for name in ("foreground_threshold", "boundary_threshold", "marker_distance"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"postprocess.{name} must be in [0, 1], got {value!r}")
        for name in ("min_marker_area_nm2", "min_area_nm2"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"postprocess.{name} must be a finite number >= 0, got {value!r}")


# ---------------------------------------------------------------------------------------------------- network
def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """(B, 1, H, W) normalised image -> (B, 3, H, W) logits of foreground, boundary and distance.
    H and W must be multiples of ``cfg.multiple_px``."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        self.down = nn.ModuleList(_conv_block(4 if k == 0 else ch[k - 1], ch[k]) for k in range(len(ch)))
        self.up = nn.ModuleList(nn.ConvTranspose2d(ch[k + 1], ch[k], 2, stride=2) for k in range(len(ch) - 1))
        self.dec = nn.ModuleList(_conv_block(2 * ch[k], ch[k]) for k in range(len(ch) - 1))
        h = cfg.head_channels
        self.to_full = nn.Sequential(nn.Conv2d(ch[0], 4 * h, 1), nn.PixelShuffle(2))
        self.head = nn.Sequential(nn.Conv2d(h + 1, h, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(h, 3, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        m = self.cfg.multiple_px
        if image.ndim != 4 or image.shape[1] != 1 or image.shape[2] % m or image.shape[3] % m:
            raise ValueError(f"UNet input must be (B, 1, H, W) with H, W multiples of {m}, got {tuple(image.shape)}")
        x = F.pixel_unshuffle(image, 2)
        skips = []
        for k, block in enumerate(self.down):
            x = block(F.max_pool2d(x, 2) if k else x)
            skips.append(x)
        for k in reversed(range(len(self.dec))):
            x = self.dec[k](torch.cat([skips[k], self.up[k](x)], dim=1))
        return self.head(torch.cat([self.to_full(x), image], dim=1))


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def build_unet(cfg: UNetConfig, seed: int) -> UNet:
    """A freshly initialised network; the global torch RNG is left as it was."""
    with seeded_init(seed):
        return UNet(cfg)


# ------------------------------------------------------------------------------------------- data and targets
def instance_targets(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training targets of a label map: foreground (uint8), boundary (uint8: foreground pixels whose 3 x 3
    neighbourhood holds another id or background) and the distance to the instance's boundary divided by its
    maximum within the instance (float32 in [0, 1]: 0 on the boundary, 1 at the instance's centre)."""
    labels = labels.astype(np.int32)
    fg = labels > 0
    lab_f = labels.astype(np.float32) if labels.max() < 2**24 else labels.astype(np.float64)
    hi = ndimage.grey_dilation(lab_f, size=(3, 3), mode="nearest")
    lo = ndimage.grey_erosion(lab_f, size=(3, 3), mode="nearest")
    boundary = fg & (hi != lo)
    inner = fg & ~boundary
    dist = ndimage.distance_transform_edt(inner).astype(np.float32)
    n = int(labels.max())
    if n:
        peak = np.zeros(n + 1, np.float32)
        peak[1:] = ndimage.maximum(dist, labels, index=np.arange(1, n + 1))
        dist = dist / np.maximum(peak[labels], 1e-6)
    return fg.astype(np.uint8), boundary.astype(np.uint8), np.clip(dist, 0, 1).astype(np.float32)


@dataclass(frozen=True, slots=True)
class TrainImage:
    image: np.ndarray  # (H, W) float32, normalised, at the training pixel size, padded to at least the crop
    targets: np.ndarray  # (3, H, W) float16: foreground, boundary, distance
    fg_index: np.ndarray  # flat indices of foreground pixels (crop centres)
    source: str


def _dataset_description(folder: Path) -> dict:
    desc: dict[str, Any] = {"path": str(folder.resolve())}
    manifest = read_manifest(folder)
    if manifest is not None:
        desc.update({k: manifest.get(k) for k in ("generator", "config_hash", "seed", "n_images")})
    return desc


def load_training_images(dataset_dirs: Sequence[Path], pixel_size_nm: float | None,
                         crop_px: int) -> tuple[list[TrainImage], list[dict]]:
    """Every labelled image of the datasets, normalised, rescaled to ``pixel_size_nm`` (None: as is) and
    reflect-padded to at least ``crop_px``, with its targets; plus a description of each dataset."""
    images, described = [], []
    for folder in map(Path, dataset_dirs):
        dataset = read_dataset(folder).labelled()
        desc = _dataset_description(folder)
        sizes = []
        for k, record in enumerate(dataset):
            image, labels, pixel_nm = record.image, record.labels, record.pixel_size_nm
            factor = 1.0 if pixel_size_nm is None else pixel_nm / pixel_size_nm
            norm = resample(normalise(image, percentiles=UNET_PERCENTILES, to=(0.0, 1.0)), factor)
            lab = resample(labels, factor, labels=True)
            pad = [(0, max(crop_px - s, 0)) for s in norm.shape]
            if any(p[1] for p in pad):
                norm, lab = np.pad(norm, pad, mode="reflect"), np.pad(lab, pad, mode="reflect")
            fg, boundary, dist = instance_targets(lab)
            images.append(TrainImage(norm, np.stack([fg, boundary, dist]).astype(np.float16),
                                     np.flatnonzero(fg).astype(np.int64), f"{folder}#{k}"))
            sizes.append(pixel_nm)
        if not sizes:
            raise ValueError(f"{folder}: no image with a label map (labels/*.png) to train on")
        desc["images_used"] = len(sizes)
        desc["pixel_size_nm"] = sorted(set(sizes))
        described.append(desc)
    return images, described


def dataset_pixel_sizes(dataset_dirs: Sequence[Path]) -> list[float]:
    """Pixel sizes of every labelled image of the datasets."""
    return [size for folder in dataset_dirs for size in read_dataset(folder, labels=False).labelled().pixel_sizes_nm()]


def sample_batch(images: Sequence[TrainImage], rng: np.random.Generator, batch_size: int, crop_px: int,
                 *, augment: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(B, 1, crop, crop) float32 inputs and (B, 3, crop, crop) float32 targets: random crops, half of them
    centred on a foreground pixel, with random rot90 / flip and intensity jitter if ``augment``."""
    xs, ys = np.empty((batch_size, 1, crop_px, crop_px), np.float32), np.empty((batch_size, 3, crop_px, crop_px),
                                                                             np.float32)
    for b in range(batch_size):
        item = images[rng.integers(len(images))]
        h, w = item.image.shape
        if len(item.fg_index) and rng.random() < 0.5:
            cy, cx = divmod(int(item.fg_index[rng.integers(len(item.fg_index))]), w)
            y0 = int(np.clip(cy - crop_px // 2, 0, h - crop_px))
            x0 = int(np.clip(cx - crop_px // 2, 0, w - crop_px))
        else:
            y0, x0 = int(rng.integers(h - crop_px + 1)), int(rng.integers(w - crop_px + 1))
        x = item.image[y0 : y0 + crop_px, x0 : x0 + crop_px]
        y = item.targets[:, y0 : y0 + crop_px, x0 : x0 + crop_px]
        if augment:
            k = int(rng.integers(4))
            x, y = np.rot90(x, k), np.rot90(y, k, axes=(1, 2))
            if rng.random() < 0.5:
                x, y = x[:, ::-1], y[:, :, ::-1]
            gain, gamma = np.exp(rng.uniform(-0.2, 0.2)), np.exp(rng.uniform(-0.2, 0.2))
            x = gain * np.sign(x) * np.abs(x) ** gamma + rng.uniform(-0.05, 0.05)
        xs[b, 0], ys[b] = x, y
    return xs, ys


# ------------------------------------------------------------------------------------------------------- loss
def _dice_loss(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    inter = (prob * target).sum(dim=(1, 2))
    return (1 - (2 * inter + 1) / (prob.sum(dim=(1, 2)) + target.sum(dim=(1, 2)) + 1)).mean()


def unet_loss(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """BCE + Dice on foreground and boundary, L1 on the distance map (weighted to the foreground)."""
    fg, boundary, dist = targets[:, 0], targets[:, 1], targets[:, 2]
    out = {}
    for k, (name, target) in enumerate((("foreground", fg), ("boundary", boundary))):
        out[name] = F.binary_cross_entropy_with_logits(logits[:, k], target) + _dice_loss(
            torch.sigmoid(logits[:, k]), target)
    weight = fg + 0.1
    out["distance"] = 2.0 * ((torch.sigmoid(logits[:, 2]) - dist).abs() * weight).sum() / weight.sum()
    out["total"] = out["foreground"] + out["boundary"] + out["distance"]
    return out


def learning_rate(step: int, steps: int, lr: float) -> float:
    """Linear warm-up over min(50, steps / 10) steps, then cosine decay to 5 % of ``lr`` at ``steps``."""
    warm = max(min(50, steps // 10), 1)
    if step < warm:
        return lr * (step + 1) / warm
    t = min((step - warm) / max(steps - warm, 1), 1.0)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


# ----------------------------------------------------------------------------------------------- checkpoints
def read_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"U-Net checkpoint {path} does not exist")
    state = load_checkpoint(path, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a semsynth U-Net checkpoint (format {CHECKPOINT_FORMAT!r})")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {state.get('version')!r}, this code reads "
                         f"{CHECKPOINT_VERSION}")
    return state


# -------------------------------------------------------------------------------------------------- training
@dataclass(frozen=True, slots=True)
class TrainResult:
    checkpoint: Path
    step: int  # steps done in total (including those before a resume)
    start_step: int  # where this call started (0, or the resumed checkpoint's step)
    losses: dict[str, float]  # mean of the last (up to) 20 steps' training losses
    val_losses: dict[str, float] | None  # on the held-out crops at the end (None without validation images)
    seconds: float  # wall time of this call's steps
    seconds_per_step: float
    n_train_images: int
    n_val_images: int
    n_parameters: int
    pixel_size_nm: float | None  # inputs are rescaled to this at training and inference (None: not rescaled)
    device: str


# training arguments that must match to resume (steps may grow)
_RESUME_KEYS = ("crop_px", "batch_size", "lr", "seed", "val_fraction", "pixel_size_nm", "weight_decay")


def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    else:
        n_val = 0
    order = np.random.default_rng([seed, 1]).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


@torch.no_grad()
def _validate(net: UNet, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    net.eval()
    sums: dict[str, float] = {}
    for x, y in batches:
        for k, v in unet_loss(net(x), y).items():
            sums[k] = sums.get(k, 0.0) + float(v)
    net.train()
    return {f"val_{k}": v / len(batches) for k, v in sums.items()}


def train_unet(
    dataset_dirs: Sequence[str | Path],
    out_path: str | Path,
    *,
    steps: int,
    crop_px: int = 256,
    batch_size: int = 8,
    lr: float = 2e-3,
    seed: int = 0,
    device: str = "auto",
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    val_fraction: float = 0.1,
    resume: bool = False,
    overwrite: bool = False,
    checkpoint_every: int = 100,
    pixel_size_nm: float | None = None,
    rescale_inputs: bool = True,
    weight_decay: float = 1e-4,
    model: UNetConfig | None = None,
    postprocess: PostprocessConfig | None = None,
) -> TrainResult:
    """Train the U-Net on labelled datasets (semsynth layout) and write its checkpoint to ``out_path``.

    steps: total optimisation steps (with ``resume``, training continues from the checkpoint's step up to it).
    crop_px: square training crops, a multiple of ``model.multiple_px`` (32 by default).
    pixel_size_nm: inputs are rescaled to this nm/px at training and inference (default: the median over the
        training images); ``rescale_inputs=False`` uses images as they are.
    val_fraction: share of images held out; their loss on fixed crops is reported at checkpoints and the end.
    on_step(step, losses): called after every step (losses: total, foreground, boundary, distance, lr, and
        val_* at checkpoints).
    resume: continue from ``out_path`` (same datasets and arguments); without it an existing ``out_path`` is
        refused unless ``overwrite``.
    """
    out_path = Path(out_path)
    dirs = [Path(d) for d in dataset_dirs]
    if not dirs:
        raise ValueError("train_unet needs at least one dataset folder")
    for name, value, lo in (("steps", steps, 1), ("batch_size", batch_size, 1), ("checkpoint_every",
                                                                                  checkpoint_every, 1)):
        if not isinstance(value, int) or value < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be > 0, got {lr!r}")
    model_cfg = model or UNetConfig()
    post_cfg = postprocess or PostprocessConfig()
    if crop_px < model_cfg.multiple_px or crop_px % model_cfg.multiple_px:
        raise ValueError(f"crop_px must be a positive multiple of {model_cfg.multiple_px}, got {crop_px!r}")
    dev = resolve_device(device)

    previous = None
    if out_path.exists():
        if resume:
            previous = read_checkpoint(out_path)
        elif not overwrite:
            raise FileExistsError(f"{out_path} exists; pass resume=True to continue it or overwrite=True")
    if previous is not None:
        model_cfg = UNetConfig(**previous["model_config"])
        post_cfg = PostprocessConfig(**previous["postprocess"])
        target_px = previous["pixel_size_nm"]
    elif rescale_inputs:
        target_px = float(pixel_size_nm) if pixel_size_nm is not None else float(np.median(dataset_pixel_sizes(dirs)))
        if not (math.isfinite(target_px) and target_px > 0):
            raise ValueError(f"pixel_size_nm must be > 0, got {pixel_size_nm!r}")
    else:
        target_px = None
    args = {"datasets": [str(d.resolve()) for d in dirs], "steps": steps, "crop_px": crop_px,
            "batch_size": batch_size, "lr": lr, "seed": seed, "val_fraction": val_fraction,
            "pixel_size_nm": target_px, "weight_decay": weight_decay, "checkpoint_every": checkpoint_every}
    if previous is not None:
        check_resume(previous["train_args"], args, ("datasets", *_RESUME_KEYS), where=str(out_path))

    images, datasets = load_training_images(dirs, target_px, crop_px)
    train_idx, val_idx = _split(len(images), val_fraction, seed)
    train_images = [images[i] for i in train_idx]
    val_rng = np.random.default_rng([seed, 2])
    val_batches = []
    if len(val_idx):
        val_images = [images[i] for i in val_idx]
        for _ in range(max(1, 16 // batch_size)):
            x, y = sample_batch(val_images, val_rng, batch_size, crop_px, augment=False)
            val_batches.append((torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)))

    net = build_unet(model_cfg, seed).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    start, history = 0, []
    if previous is not None:
        net.load_state_dict(previous["model_state"])
        opt.load_state_dict(previous["optimizer_state"])
        start, history = int(previous["step"]), list(previous["history"])

    def state(step: int) -> dict:
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": step,
            "model_config": dataclasses.asdict(model_cfg), "postprocess": dataclasses.asdict(post_cfg),
            "pixel_size_nm": target_px, "train_args": args, "datasets": datasets,
            "n_train_images": len(train_idx), "n_val_images": len(val_idx),
            "val_images": [images[i].source for i in val_idx], "history": history,
            "model_state": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "optimizer_state": _to_cpu(opt.state_dict()), "torch_version": str(torch.__version__),
        }

    net.train()
    t0 = time.perf_counter()
    recent: list[dict[str, float]] = []
    for step in range(start, steps):
        rng = np.random.default_rng([seed, 0, step])
        x, y = sample_batch(train_images, rng, batch_size, crop_px)
        x, y = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, steps, lr)
        losses = unet_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt.step()
        record = {k: float(v.detach()) for k, v in losses.items()} | {"lr": opt.param_groups[0]["lr"]}
        done = step + 1
        if done % checkpoint_every == 0 or done == steps:
            if val_batches:
                record |= _validate(net, val_batches)
            history.append({"step": done, **record})
            save_checkpoint(out_path, state(done))
        else:
            history.append({"step": done, **record})
        recent = (recent + [record])[-20:]
        if on_step is not None:
            on_step(done, record)
    seconds = time.perf_counter() - t0
    final = history[-1] if history else {}
    if start >= steps and previous is not None:
        recent = [h for h in history[-20:]]
    keys = ("total", "foreground", "boundary", "distance")
    return TrainResult(
        checkpoint=out_path,
        step=max(steps, start),
        start_step=start,
        losses={k: float(np.mean([r[k] for r in recent])) for k in keys} if recent else {},
        val_losses={k[4:]: float(v) for k, v in final.items() if k.startswith("val_")} or None,
        seconds=seconds,
        seconds_per_step=seconds / max(steps - start, 1),
        n_train_images=len(train_idx),
        n_val_images=len(val_idx),
        n_parameters=count_parameters(net),
        pixel_size_nm=target_px,
        device=str(dev),
    )


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


# ------------------------------------------------------------------------------------------------- inference
def _ramp(n: int, overlap: int) -> np.ndarray:
    """1-D blending weight: rises linearly over ``overlap`` pixels at both ends."""
    w = np.ones(n, np.float32)
    if overlap > 0:
        r = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        w[:overlap] = np.minimum(w[:overlap], r)
        w[-overlap:] = np.minimum(w[-overlap:], r[::-1])
    return w


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


@torch.no_grad()
def forward_image(net: UNet, image: np.ndarray, device: torch.device, *, tile_px: int = 1024,
                  overlap_px: int = 128) -> np.ndarray:
    """(3, H, W) float32 probabilities of a normalised image: one pass if it fits in ``tile_px``, else
    overlapping tiles blended with linear ramps. Each pass is reflect-padded to the network's multiple."""
    net.eval()
    m = net.cfg.multiple_px
    h, w = image.shape
    tile_h, tile_w = min(tile_px, h), min(tile_px, w)
    out = np.zeros((3, h, w), np.float32)
    weight = np.zeros((h, w), np.float32)
    for y0 in _tile_starts(h, tile_h, overlap_px):
        for x0 in _tile_starts(w, tile_w, overlap_px):
            tile = image[y0 : y0 + tile_h, x0 : x0 + tile_w]
            ph, pw = -tile_h % m, -tile_w % m
            mode = "reflect" if ph < tile_h and pw < tile_w else "edge"
            padded = np.pad(tile, ((0, ph), (0, pw)), mode=mode)
            x = torch.from_numpy(np.ascontiguousarray(padded))[None, None].to(device)
            prob = torch.sigmoid(net(x))[0, :, :tile_h, :tile_w].float().cpu().numpy()
            wy = _ramp(tile_h, overlap_px if h > tile_h else 0)
            wx = _ramp(tile_w, overlap_px if w > tile_w else 0)
            wt = wy[:, None] * wx[None, :]
            out[:, y0 : y0 + tile_h, x0 : x0 + tile_w] += prob * wt
            weight[y0 : y0 + tile_h, x0 : x0 + tile_w] += wt
    return out / weight


def postprocess_maps(maps: np.ndarray, pixel_size_nm: float, cfg: PostprocessConfig) -> Prediction:
    """Instances from (3, H, W) foreground / boundary / distance probabilities: markers where the distance is
    high and the boundary low, watershed on (boundary - distance) within the foreground; score = mean
    foreground probability of the instance."""
    fg, boundary, dist = maps
    px2 = pixel_size_nm**2
    mask = fg > cfg.foreground_threshold
    seeds = mask & (dist > cfg.marker_distance) & (boundary < cfg.boundary_threshold)
    markers = remove_small_instances(ndimage.label(seeds)[0].astype(np.int32), cfg.min_marker_area_nm2 / px2)
    ids = marker_watershed(boundary - dist, markers, mask)
    ids = remove_small_instances(ids, cfg.min_area_nm2 / px2)
    n = int(ids.max())
    means = ndimage.mean(fg, ids, index=np.arange(1, n + 1)) if n else []
    return Prediction(ids=ids, scores={k + 1: float(v) for k, v in enumerate(means)})


class UNetModel:
    """``unet:PATH``: a trained checkpoint as an ``eval.segment`` model."""

    def __init__(self, net: UNet, checkpoint: Mapping, postprocess: PostprocessConfig, device: torch.device, *,
                 tile_px: int, overlap_px: int, spec: str, path: Path):
        self.net, self.post, self.device = net, postprocess, device
        self.tile_px, self.overlap_px = tile_px, overlap_px
        self.pixel_size_nm: float | None = checkpoint["pixel_size_nm"]
        self.meta = {k: checkpoint[k] for k in ("step", "model_config", "train_args", "datasets", "n_train_images",
                                                  "n_val_images")}
        self.spec, self.path = spec, path

    def predict_maps(self, image: np.ndarray, pixel_size_nm: float) -> np.ndarray:
        """(3, H, W) foreground, boundary and distance probabilities at the image's own resolution."""
        check_input(image, pixel_size_nm)
        factor = 1.0 if self.pixel_size_nm is None else pixel_size_nm / self.pixel_size_nm
        x = resample(normalise(image, percentiles=UNET_PERCENTILES, to=(0.0, 1.0)), factor)
        maps = forward_image(self.net, x, self.device, tile_px=self.tile_px, overlap_px=self.overlap_px)
        if abs(factor - 1.0) >= 1e-6:
            h, w = image.shape
            maps = np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m in maps])
        return maps

    def __call__(self, image: np.ndarray, pixel_size_nm: float, image_info: Mapping | None = None) -> Prediction:
        return postprocess_maps(self.predict_maps(image, pixel_size_nm), float(pixel_size_nm), self.post)

    def describe(self) -> dict:
        return {"kind": "unet", "spec": self.spec, "path": str(self.path), "pixel_size_nm": self.pixel_size_nm,
                "tile_px": self.tile_px, "overlap_px": self.overlap_px, "device": str(self.device),
                "n_parameters": count_parameters(self.net), **dataclasses.asdict(self.post),
                **{k: v for k, v in self.meta.items()}}


def load_unet(path: str | Path, *, spec: str | None = None, device: str = "auto", tile_px: int = 1024,
              overlap_px: int = 128, **postprocess: Any) -> UNetModel:
    """A trained U-Net from its checkpoint. ``postprocess`` overrides the checkpoint's ``PostprocessConfig``
    fields (foreground_threshold, boundary_threshold, marker_distance, min_marker_area_nm2, min_area_nm2);
    ``tile_px`` / ``overlap_px`` set the inference tiling; ``device`` is cpu, cuda or auto."""
    path = Path(path)
    spec = spec or f"unet:{path}"
    if not path.is_file():
        raise FileNotFoundError(f"model spec {spec!r}: U-Net checkpoint {path} does not exist")
    tile_px, overlap_px = int(tile_px), int(overlap_px)
    if tile_px < 64 or not 0 <= overlap_px < tile_px // 2:
        raise ValueError(f"model spec {spec!r}: need tile_px >= 64 and 0 <= overlap_px < tile_px / 2, got "
                         f"tile_px={tile_px}, overlap_px={overlap_px}")
    state = read_checkpoint(path)
    fields = [f.name for f in dataclasses.fields(PostprocessConfig)]
    unknown = sorted(set(postprocess) - set(fields))
    if unknown:
        raise ValueError(f"model spec {spec!r}: unknown option(s) {unknown}; accepted: "
                         f"{['device', 'tile_px', 'overlap_px', *fields]}")
    post = config_from_options(PostprocessConfig, {**state["postprocess"], **postprocess},
                               where=f"model spec {spec!r}")
    dev = resolve_device(device)
    net = UNet(UNetConfig(**state["model_config"]))
    net.load_state_dict(state["model_state"])
    net.to(dev).eval()
    return UNetModel(net, state, post, dev, tile_px=tile_px, overlap_px=overlap_px, spec=spec, path=path)
