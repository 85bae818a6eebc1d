"""Training of the appearance model on paired (label buffers, real image) data, into a run folder.

    Pairs (buffers of each real image's labels, the real image in the normalised view, its levels)
    -> PairSampler (paired random crops and flips, one torch.Generator) -> family step (gan | vae)
    -> every ``checkpoint_every`` steps: checkpoint, fidelity gate on training images, sample grid, state
    -> model.pt = the latest checkpoint that passes the gate (else the one that misses it least)

Run folder: ``config.json``, ``losses.jsonl``, ``evaluations.jsonl``, ``checkpoints/step_NNNNNN.pt``,
``state.pt`` (everything ``resume`` needs: weights, optimisers, generator states), ``samples/step_NNNNNN.png``
(labels | render | generated | real), ``model.pt`` and ``selection.json``. Every file is written atomically; a
resumed run continues exactly as an uninterrupted one (same device and thread count).

Random streams: ``SeedSequence(seed).spawn(3)`` -> network initialisation, training draws (crops, flips, noise,
augmentation, latent samples) and the gate's noise; no global torch seeding.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from refiner.appearance.gate import GateConfig, gate_reference, judge, load_segmenter
from refiner.appearance.inputs import N_BUFFERS
from refiner.appearance.nets import (
    FAMILIES,
    NetConfig,
    PatchDiscriminator,
    ResidualEncoder,
    ResidualGenerator,
    draw_noise,
    latent_to_noise,
)
from refiner.losses import AugmentConfig, diff_augment

STATE_FILE = "state.pt"
MODEL_FILE = "model.pt"


# ------------------------------------------------------------------------------------------------ data


@dataclass(frozen=True, slots=True)
class Pairs:
    """Paired training data: per image the model inputs, the real image in the normalised view and its levels."""

    buffers: list[np.ndarray]  # (N_BUFFERS, H, W) float32, ``inputs.model_inputs`` of the image's labels
    real: list[np.ndarray]  # (H, W) float32, ``eval.realism.normalized`` view (levels at 0.25 / 0.75)
    labels: list[np.ndarray]  # (H, W) int32 instance ids as stored (the gate scores against them)
    levels: list[tuple[float, float]]  # (1st, 99th percentile) of the stored image in [0, 1]
    names: list[str]
    pixel_size_nm: float

    def __post_init__(self):
        n = len(self.buffers)
        if not n or any(len(x) != n for x in (self.real, self.labels, self.levels, self.names)):
            raise ValueError("Pairs: buffers, real, labels, levels and names must be non-empty and of equal length")
        for b, r, lab, name in zip(self.buffers, self.real, self.labels, self.names, strict=True):
            if b.shape != (N_BUFFERS, *r.shape) or lab.shape != r.shape:
                raise ValueError(f"{name}: buffers {b.shape}, image {r.shape} and labels {lab.shape} do not match")

    def subset(self, index: Sequence[int]) -> Pairs:
        pick = list(index)
        return Pairs([self.buffers[i] for i in pick], [self.real[i] for i in pick], [self.labels[i] for i in pick],
                     [self.levels[i] for i in pick], [self.names[i] for i in pick], self.pixel_size_nm)

    def centre_crop(self, size_px: int) -> Pairs:
        """The centre ``size_px`` square of every image (the whole image where smaller)."""
        def cut(a):
            h, w = a.shape[-2:]
            ch, cw = min(size_px, h), min(size_px, w)
            t, left = (h - ch) // 2, (w - cw) // 2
            return np.ascontiguousarray(a[..., t:t + ch, left:left + cw])
        return Pairs([cut(b) for b in self.buffers], [cut(r) for r in self.real], [cut(lab) for lab in self.labels],
                     list(self.levels), list(self.names), self.pixel_size_nm)

    def save(self, path: str | Path) -> None:
        """One compressed .npz without pickles (render and real image as float16, labels as uint16; the label
        buffers are recomputed on loading): carries prepared data to a machine without the simulator's packages
        (about 2 MB per 1024 x 712 image)."""
        arrays = {"pixel_size_nm": np.float64(self.pixel_size_nm), "names": np.array(self.names),
                  "levels": np.array(self.levels, np.float64)}
        for i in range(len(self.names)):
            if self.labels[i].max() > np.iinfo(np.uint16).max:
                raise ValueError(f"{self.names[i]}: more than 65535 instances")
            arrays[f"render_{i}"] = self.buffers[i][0].astype(np.float16)
            arrays[f"real_{i}"] = self.real[i].astype(np.float16)
            arrays[f"labels_{i}"] = self.labels[i].astype(np.uint16)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        _atomic_write(Path(path), buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> Pairs:
        """Pairs saved by ``save`` (render and real image rounded to float16)."""
        from refiner.appearance.inputs import instance_pieces, label_buffers, separate_touching

        with np.load(path, allow_pickle=False) as z:
            n = len(z["names"])
            labels = [z[f"labels_{i}"].astype(np.int32) for i in range(n)]
            buffers = [np.concatenate([z[f"render_{i}"].astype(np.float32)[None],
                                       label_buffers(instance_pieces(separate_touching(labels[i])))])
                       for i in range(n)]
            return cls(buffers, [z[f"real_{i}"].astype(np.float32) for i in range(n)], labels,
                       [tuple(map(float, lv)) for lv in z["levels"]], [str(s) for s in z["names"]],
                       float(z["pixel_size_nm"]))


class PairSampler:
    """Paired random crops (same position and flip for buffers and real image), drawn from ``generator``."""

    def __init__(self, pairs: Pairs, crop_px: int, generator: torch.Generator):
        small = [n for n, r in zip(pairs.names, pairs.real, strict=True) if min(r.shape) < crop_px]
        if small:
            raise ValueError(f"crop_px={crop_px} is larger than images {small[:3]}")
        self.crop_px = crop_px
        self.generator = generator
        self._x = [torch.from_numpy(np.concatenate([b, r[None]])) for b, r in zip(pairs.buffers, pairs.real,
                                                                                   strict=True)]

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(buffers (B, N_BUFFERS, c, c), real (B, 1, c, c))."""
        g, c = self.generator, self.crop_px
        out = []
        for _ in range(batch_size):
            x = self._x[int(torch.randint(len(self._x), (1,), generator=g))]
            top = int(torch.randint(x.shape[1] - c + 1, (1,), generator=g))
            left = int(torch.randint(x.shape[2] - c + 1, (1,), generator=g))
            crop = x[:, top:top + c, left:left + c]
            flips = torch.randint(2, (2,), generator=g)
            if flips[0]:
                crop = crop.flip(2)
            if flips[1]:
                crop = crop.flip(1)
            out.append(crop)
        batch = torch.stack(out)
        return batch[:, :N_BUFFERS], batch[:, N_BUFFERS:]


# --------------------------------------------------------------------------------------------- configs


@dataclass(frozen=True, slots=True, kw_only=True)
class AppearanceConfig:
    family: str = "gan"
    steps: int = 400
    batch_size: int = 4
    crop_px: int = 96
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    tone_lr_factor: float = 10.0  # the tone curve's dozen parameters learn this much faster
    low_sigma_px: float = 4.0  # paired L1 on images blurred with this Gaussian (gan)
    w_low: float = 10.0
    w_adv: float = 1.0
    w_fm: float = 2.0
    w_edge: float = 5.0  # low-passed correction on the edge band (moves edges)
    r1_gamma: float = 1.0
    r1_every: int = 4  # lazy R1: every k-th discriminator step, weighted by k
    augment_translation: float = 0.125  # DiffAugment (joint for real and generated, with their buffers)
    augment_cutout: float = 0.25
    kl_weight: float = 1.0  # vae: beta of the KL term (nats per image pixel)
    checkpoint_every: int = 100
    gate_images: int = 3  # training images the gate generates and scores ...
    gate_crop_px: int = 384  # ... on a centre crop of this size (0: whole images)
    net: NetConfig = field(default_factory=NetConfig)
    gate: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.gate_crop_px < 0:
            raise ValueError(f"gate_crop_px must be >= 0, got {self.gate_crop_px!r}")
        for name in ("steps", "batch_size", "crop_px", "checkpoint_every", "gate_images", "r1_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.crop_px % 8:
            raise ValueError(f"crop_px must be a multiple of 8, got {self.crop_px!r}")


def config_from_dict(data: dict) -> AppearanceConfig:
    data = dict(data)
    net = NetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.pop("net", {}).items()})
    gate = GateConfig(**data.pop("gate", {}))
    return AppearanceConfig(**data, net=net, gate=gate)


# ---------------------------------------------------------------------------------------------- losses


def gaussian_blur(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W), reflect padding, kernel +-3 sigma."""
    r = max(1, round(3 * sigma_px))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma_px) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def joint_augment(x: torch.Tensor, translation: float, cutout: float, generator: torch.Generator) -> torch.Tensor:
    """DiffAugment (``refiner.losses.diff_augment``: translation with zero fill, cutout) per sample, the same
    for all channels of a sample, so stacking real and generated crops with their buffers along channels
    augments them alike. Differentiable."""
    return diff_augment(x, AugmentConfig(translation=translation, cutout=cutout), generator)


def edge_penalty(correction: torch.Tensor, buffers: torch.Tensor, sigma_px: float = 1.5) -> torch.Tensor:
    """Mean |low-passed correction| on the edge band (where the gate < 1): a smooth offset there shifts
    where a segmenter puts the edge; texture (high frequencies) is not penalised."""
    band = (buffers[:, -1:] < 0.95).to(correction.dtype)
    return (gaussian_blur(correction, sigma_px).abs() * band).sum() / band.sum().clamp_min(1.0)


def _d_input(image: torch.Tensor, buffers: torch.Tensor) -> torch.Tensor:
    """The discriminator sees the image with the foreground and separation buffers."""
    return torch.cat([image, buffers[:, 1:2], buffers[:, 3:4]], 1)


# --------------------------------------------------------------------------------------------- models


@dataclass
class Nets:
    family: str
    generator: ResidualGenerator
    discriminator: PatchDiscriminator | None
    encoder: ResidualEncoder | None
    log_sigma: torch.nn.Parameter | None  # vae: log of the Gaussian likelihood's scale


def build_nets(cfg: AppearanceConfig, init_seed: int) -> Nets:
    """The family's networks, initialised from ``init_seed`` (global torch RNG left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        gen = ResidualGenerator(cfg.net, cfg.net.noise_channels(cfg.family))
        if cfg.family == "gan":
            return Nets("gan", gen, PatchDiscriminator(cfg.net), None, None)
        return Nets("vae", gen, None, ResidualEncoder(cfg.net), torch.nn.Parameter(torch.tensor(-2.5)))


def _optimisers(nets: Nets, cfg: AppearanceConfig) -> dict[str, torch.optim.Optimizer]:
    tone = list(nets.generator.tone.parameters())
    rest = [p for n, p in nets.generator.named_parameters() if not n.startswith("tone.")]
    groups = [{"params": rest}, {"params": tone, "lr": cfg.lr_g * cfg.tone_lr_factor}]
    if nets.family == "gan":
        return {"g": torch.optim.Adam(groups, cfg.lr_g, betas=(0.5, 0.99)),
                "d": torch.optim.Adam(nets.discriminator.parameters(), cfg.lr_d, betas=(0.5, 0.99))}
    groups[0]["params"] = [*rest, *nets.encoder.parameters(), nets.log_sigma]
    return {"g": torch.optim.Adam(groups, cfg.lr_g, betas=(0.9, 0.99))}


def gan_step(nets: Nets, opt: dict, buffers: torch.Tensor, real: torch.Tensor, cfg: AppearanceConfig,
             gen: torch.Generator, step: int) -> dict[str, float]:
    dev = buffers.device
    noise = draw_noise("gan", cfg.net, (real.shape[0], *real.shape[-2:]), gen).to(dev)
    out = nets.generator(buffers, noise)
    fake, correction = out.image, out.correction
    d = nets.discriminator

    def augmented(image_real, image_fake):
        both = torch.cat([_d_input(image_real, buffers), _d_input(image_fake, buffers)], 1)
        both = joint_augment(both, cfg.augment_translation, cfg.augment_cutout, gen)
        return both[:, :3], both[:, 3:]

    # discriminator: hinge, lazy R1 on real crops
    a_real, a_fake = augmented(real, fake.detach())
    logits_real, _ = d(a_real)
    logits_fake, _ = d(a_fake)
    loss_d = F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean()
    r1 = torch.zeros((), device=dev)
    if cfg.r1_gamma > 0 and step % cfg.r1_every == 0:
        x = a_real.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(d(x)[0].sum(), x, create_graph=True)
        r1 = grad.pow(2).sum(dim=(1, 2, 3)).mean()
        loss_d = loss_d + 0.5 * cfg.r1_gamma * cfg.r1_every * r1
    opt["d"].zero_grad(set_to_none=True)
    loss_d.backward()
    opt["d"].step()
    # generator: adversarial + feature matching + paired low-frequency L1 + edge penalty
    a_real, a_fake = augmented(real, fake)
    with torch.no_grad():
        _, feats_real = d(a_real)
    logits_fake, feats_fake = d(a_fake)
    adv = -logits_fake.mean()
    fm = sum(F.l1_loss(f, r) for f, r in zip(feats_fake, feats_real, strict=True)) / len(feats_real)
    low = F.l1_loss(gaussian_blur(fake, cfg.low_sigma_px), gaussian_blur(real, cfg.low_sigma_px))
    edge = edge_penalty(correction, buffers)
    loss_g = cfg.w_adv * adv + cfg.w_fm * fm + cfg.w_low * low + cfg.w_edge * edge
    opt["g"].zero_grad(set_to_none=True)
    loss_g.backward()
    opt["g"].step()
    return {k: float(v.detach()) for k, v in (("d", loss_d), ("r1", r1), ("adv", adv), ("fm", fm), ("low_l1", low),
                                               ("edge", edge), ("l1", F.l1_loss(fake.detach(), real)))}


def vae_step(nets: Nets, opt: dict, buffers: torch.Tensor, real: torch.Tensor, cfg: AppearanceConfig,
             gen: torch.Generator, step: int) -> dict[str, float]:
    mu, logvar = nets.encoder(real - buffers[:, :1], buffers)
    eps = torch.randn(mu.shape, generator=gen).to(mu.device)
    z = mu + torch.exp(0.5 * logvar) * eps
    latent = latent_to_noise(z, tuple(real.shape[-2:]))
    # no observation noise in training: the likelihood accounts for it (pixel_sigma * 0)
    out = nets.generator(buffers, torch.cat([latent, torch.zeros_like(latent[:, :1])], 1))
    fake, correction = out.image, out.correction
    s = nets.log_sigma
    log_sd = s + out.log_scale  # heteroscedastic: the decoder says where the residual is noisier
    nll = (0.5 * ((real - fake) / torch.exp(log_sd)) ** 2 + log_sd).mean() + 0.5 * np.log(2 * np.pi)
    kl = 0.5 * (mu**2 + torch.exp(logvar) - 1 - logvar).sum(dim=(1, 2, 3)).mean() / real[0].numel()
    edge = edge_penalty(correction, buffers)
    loss = nll + cfg.kl_weight * kl + cfg.w_edge * edge
    opt["g"].zero_grad(set_to_none=True)
    loss.backward()
    opt["g"].step()
    with torch.no_grad():  # samples carry the likelihood's learned scale as observation noise
        nets.generator.pixel_sigma.copy_(torch.exp(s.detach()))
    low = F.l1_loss(gaussian_blur(fake.detach(), cfg.low_sigma_px), gaussian_blur(real, cfg.low_sigma_px))
    return {k: float(v.detach()) for k, v in (("nll", nll), ("kl", kl), ("edge", edge), ("low_l1", low),
                                               ("l1", F.l1_loss(fake.detach(), real)), ("sigma", torch.exp(s)))}


# --------------------------------------------------------------------------------------------- applying


@torch.no_grad()
def generate(generator: ResidualGenerator, family: str, net_cfg: NetConfig, buffers: np.ndarray,
             noise_gen: torch.Generator, device: torch.device | str = "cpu") -> np.ndarray:
    """(H, W) float32 generated image (normalised view) for one image's buffers; noise drawn on the CPU."""
    b = torch.from_numpy(np.ascontiguousarray(buffers))[None].to(device)
    noise = draw_noise(family, net_cfg, (1, *buffers.shape[-2:]), noise_gen).to(device)
    generator.eval()
    return generator(b, noise).image[0, 0].float().cpu().numpy()


def to_stored(image: np.ndarray, levels: tuple[float, float]) -> np.ndarray:
    """Normalised view (levels at 0.25 / 0.75) -> stored intensities in [0, 1] with the given levels."""
    lo, hi = levels
    return np.clip(lo + (image - 0.25) / 0.5 * (hi - lo), 0.0, 1.0).astype(np.float32)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[ResidualGenerator, dict]:
    """A saved generator (checkpoint or model.pt) and its metadata."""
    blob = torch.load(path, map_location=device, weights_only=False)
    cfg = config_from_dict(blob["config"])
    gen = ResidualGenerator(cfg.net, cfg.net.noise_channels(cfg.family)).to(device)
    gen.load_state_dict(blob["generator"])
    gen.eval()
    return gen, blob


# ---------------------------------------------------------------------------------------------- running


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device (expected cpu, cuda or auto)")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda or auto, got {device!r}")
    return torch.device(device)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with open(fd, "wb", closefd=True) as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_torch(obj, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic_write(path, buf.getvalue())


def _write_jsonl(path: Path, records: list[dict]) -> None:
    _atomic_write(path, "".join(json.dumps(r) + "\n" for r in records).encode())


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def sample_grid(labels: np.ndarray, render: np.ndarray, generated: np.ndarray, real: np.ndarray,
                crop_px: int = 256, gap_px: int = 4) -> np.ndarray:
    """uint8 grid labels | render | generated | real of a centre crop (written into the run folder only)."""
    h, w = labels.shape
    c = min(crop_px, h, w)
    t, left = (h - c) // 2, (w - c) // 2
    sl = (slice(t, t + c), slice(left, left + c))
    lab = labels[sl]
    lab_img = np.where(lab > 0, 0.35 + 0.5 * ((lab * 0.6180339) % 1.0), 0.0)
    panels = [lab_img, render[sl], generated[sl], real[sl]]
    gap = np.ones((c, gap_px))
    row = np.concatenate([x for p in panels for x in (np.clip(p, 0, 1), gap)][:-1], axis=1)
    return (row * 255 + 0.5).astype(np.uint8)


@dataclass(frozen=True, slots=True)
class StepInfo:
    step: int
    losses: dict[str, float]


def _seeds(seed: int) -> tuple[int, int, int]:
    init, train, gate = np.random.SeedSequence(seed).spawn(3)
    return tuple(int(s.generate_state(1, np.uint64)[0] % (2**63)) for s in (init, train, gate))


def _state(nets: Nets, opts: dict, gen: torch.Generator, step: int) -> dict:
    state = {"step": step, "generator": nets.generator.state_dict(), "rng": gen.get_state(),
             "opt": {k: o.state_dict() for k, o in opts.items()}}
    if nets.discriminator is not None:
        state["discriminator"] = nets.discriminator.state_dict()
    if nets.encoder is not None:
        state["encoder"] = nets.encoder.state_dict()
        state["log_sigma"] = nets.log_sigma.detach().cpu().clone()
    return state


def _load_state(nets: Nets, opts: dict, gen: torch.Generator, state: dict) -> int:
    nets.generator.load_state_dict(state["generator"])
    if nets.discriminator is not None:
        nets.discriminator.load_state_dict(state["discriminator"])
    if nets.encoder is not None:
        nets.encoder.load_state_dict(state["encoder"])
        with torch.no_grad():
            nets.log_sigma.copy_(state["log_sigma"])
    for k, o in opts.items():
        o.load_state_dict(state["opt"][k])
    gen.set_state(state["rng"])
    return int(state["step"])


def select(evaluations: list[dict]) -> dict:
    """The latest checkpoint that passed the gate; when none passed, the one that misses it least (later wins
    ties)."""
    passed = [e for e in evaluations if e["passed"]]
    if passed:
        return max(passed, key=lambda e: e["step"])
    return min(evaluations, key=lambda e: (e["violation"], -e["step"]))


def train(pairs: Pairs, out_dir: str | Path, cfg: AppearanceConfig = AppearanceConfig(), *, seed: int = 0,
          device: str = "cpu", resume: bool = False, render_settings: dict | None = None,
          on_step: Callable[[StepInfo], None] | None = None, gate_pairs: Pairs | None = None) -> dict:
    """Train the family ``cfg.family`` on ``pairs`` into ``out_dir``; returns the selection record.

    ``gate_pairs`` (default: the first ``cfg.gate_images`` of ``pairs``) are the images the fidelity gate
    generates and scores at every checkpoint: training images, never test images. ``render_settings`` (the
    shading and probe configs as dicts) are recorded so that ``apply`` renders simulated labels the same way.
    """
    out = Path(out_dir)
    dev = resolve_device(device)
    init_seed, train_seed, gate_seed = _seeds(seed)
    record = {"config": asdict(cfg), "seed": seed, "render": render_settings or {}, "train_images": pairs.names,
              "levels": [list(lv) for lv in pairs.levels], "pixel_size_nm": pairs.pixel_size_nm,
              "family": cfg.family}
    if resume:
        if not (out / STATE_FILE).exists():
            raise FileNotFoundError(f"{out / STATE_FILE}: no state to resume (expected a run folder of "
                                    "`appearance train`)")
        saved = json.loads((out / "config.json").read_text())
        if saved["config"] != json.loads(json.dumps(asdict(cfg))) or saved["seed"] != seed:
            raise ValueError(f"{out / 'config.json'}: the run was started with another config or seed; resume "
                             "with the same options (expected the config.json values)")
    else:
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"{out}: not empty (expected an empty or absent run folder, or --resume)")
        out.mkdir(parents=True, exist_ok=True)
        _atomic_write(out / "config.json", json.dumps(record, indent=1).encode())

    nets = build_nets(cfg, init_seed)
    for m in (nets.generator, nets.discriminator, nets.encoder):
        if m is not None:
            m.to(dev).train()
    if nets.log_sigma is not None:
        nets.log_sigma.data = nets.log_sigma.data.to(dev)
    opts = _optimisers(nets, cfg)
    gen = torch.Generator().manual_seed(train_seed)
    start = 0
    if resume:
        start = _load_state(nets, opts, gen, torch.load(out / STATE_FILE, map_location="cpu", weights_only=False))
    losses = [r for r in _read_jsonl(out / "losses.jsonl") if r["step"] <= start]
    evaluations = [e for e in _read_jsonl(out / "evaluations.jsonl") if e["step"] <= start]

    gate_set = gate_pairs if gate_pairs is not None else pairs.subset(range(min(cfg.gate_images, len(pairs.names))))
    if cfg.gate_crop_px:
        gate_set = gate_set.centre_crop(cfg.gate_crop_px)
    segment = load_segmenter(cfg.gate.segmenter)
    ref = gate_reference(gate_set.real, [b[0] for b in gate_set.buffers], gate_set.labels, gate_set.pixel_size_nm,
                         segment, cfg.gate)

    def checkpoint(step: int) -> None:
        blob = {"generator": {k: v.detach().cpu() for k, v in nets.generator.state_dict().items()},
                "config": asdict(cfg), "step": step, "render": record["render"], "levels": record["levels"],
                "pixel_size_nm": pairs.pixel_size_nm, "family": cfg.family, "seed": seed}
        _save_torch(blob, out / "checkpoints" / f"step_{step:06d}.pt")
        generated = [generate(nets.generator, cfg.family, cfg.net, b,
                              torch.Generator().manual_seed(gate_seed + i), dev)
                     for i, b in enumerate(gate_set.buffers)]
        nets.generator.train()
        ev = {"step": step, **judge(generated, gate_set.labels, gate_set.pixel_size_nm, segment, ref, cfg.gate)}
        evaluations.append(ev)
        _write_jsonl(out / "evaluations.jsonl", evaluations)
        grid = sample_grid(gate_set.labels[0], gate_set.buffers[0][0], generated[0], gate_set.real[0])
        _write_png(out / "samples" / f"step_{step:06d}.png", grid)

    if start == 0 and not evaluations:
        checkpoint(0)
    sampler = PairSampler(pairs, cfg.crop_px, gen)
    step_fn = gan_step if cfg.family == "gan" else vae_step
    for step in range(start + 1, cfg.steps + 1):
        buffers, real = sampler.sample(cfg.batch_size)
        rec = step_fn(nets, opts, buffers.to(dev), real.to(dev), cfg, gen, step)
        losses.append({"step": step, **rec})
        if on_step is not None:
            on_step(StepInfo(step, rec))
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpoint(step)
            _write_jsonl(out / "losses.jsonl", losses)
            _save_torch(_state(nets, opts, gen, step), out / STATE_FILE)
    _write_jsonl(out / "losses.jsonl", losses)
    chosen = select(evaluations)
    blob = torch.load(out / "checkpoints" / f"step_{chosen['step']:06d}.pt", map_location="cpu", weights_only=False)
    _save_torch(blob, out / MODEL_FILE)
    selection = {"step": chosen["step"], "passed": chosen["passed"], "rule": "latest passing, else least violation",
                 "evaluation": chosen}
    _atomic_write(out / "selection.json", json.dumps(selection, indent=1).encode())
    return selection


def _write_png(path: Path, image: np.ndarray) -> None:
    import cv2

    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    _atomic_write(path, data.tobytes())

