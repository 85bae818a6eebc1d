"""Training the refiner: unpaired synthetic and real crops, adversarial + content (+ spectrum) losses, periodic
label-fidelity checks, sample grids and resumable checkpoints.

Run folder (``run_dir``):
    config.json              the resolved training config (checked on resume)
    checkpoint.pt            latest full state: networks, optimisers, every RNG state, step (atomic)
    generators/step_N.pt     the generator at each checkpoint (small)
    generator.pt             the selected generator: the latest checkpoint that passes the label-fidelity checks
                             (``select = "appearance"``: the passing one with the smallest appearance gap to the
                             real images); ``apply`` uses it
    log.jsonl                losses per step
    fidelity.jsonl           per checkpoint (and step 0 = the unrefined images): label fidelity on held-out
                             synthetic images, appearance gap to the real images, passed, selected
    samples/step_N.png       rows of synthetic | refined | real crops

Each step: the discriminator learns to tell real crops from refined ones (both through the same DiffAugment;
with ``d_view = "normalised"``, the default, each crop first scaled by its whole image's 1st/99th percentiles,
as ``eval.realism`` compares images, so the networks learn appearance and not the operator's brightness setting,
which the generator takes from the real images directly),
then the generator learns to fool it while its low-passed residual stays near zero (content loss) and the
deciles of its neighbour differences (noise level and texture) match the real crops' (and, if enabled, its
fine-band power spectrum). A resumed run continues at the saved step with
the saved optimiser and RNG states, so it computes the same weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from eval.calibrate.image_stats import radial_power_spectrum
from eval.data.pixels import image_levels, resample, scale_to_levels
from eval.training import check_resume, load_checkpoint, resolve_device, save_checkpoint, torch_streams
from refiner.data import (
    CropBatch,
    CropSampler,
    condition_channels,
    load_dataset,
)
from refiner.fidelity import (
    FidelityResult,
    FidelityThresholds,
    Segmenter,
    UnrefinedReference,
    default_segmenter,
    label_fidelity,
    mean_fidelity,
    unrefined_reference,
)
from refiner.losses import (
    GAN_KINDS,
    AugmentConfig,
    content_loss,
    diff_augment,
    gan_d_loss,
    gan_g_loss,
    noise_loss,
    quantize_ste,
    spectrum_loss,
)
from refiner.nets import (
    Discriminator,
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
    GeneratorOut,
    RefinerNoise,
    build_networks,
    image_noise,
    refine_array,
)
from simulator.io.files import atomic_write_bytes, atomic_write_json, encode_png, quantize
from simulator.io.reader import ImageRecord

EVAL_NOISE_SEED = 12345  # noise of the held-out evaluation images: the same at every checkpoint
_RESUMABLE = ("steps", "sample_every", "checkpoint_every")  # may change between a run and its resumption
SELECT_RULES = ("last", "appearance")


class FidelityWarning(UserWarning):
    """A checkpoint breaks the label-fidelity checks (boundaries moved or a segmenter reads it differently)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RefinerConfig:
    """Model and loss settings (everything but the run length, crop, batch and seed)."""

    generator: GeneratorConfig = GeneratorConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    augment: AugmentConfig = AugmentConfig()
    fidelity: FidelityThresholds = FidelityThresholds()
    gan_loss: str = "lsgan"
    # the discriminator sees crops scaled by their image's levels ("raw": as stored)
    d_view: Literal["normalised", "raw"] = "normalised"
    adv_weight: float = 1.0
    content_weight: float = 20.0
    content_sigma_px: float = 2.0
    noise_weight: float = 1.0
    spectrum_weight: float = 0.0  # off: batch spectra vary with crop content more than with texture
    lr_g: float = 1e-3  # local residual and substrate texture networks
    lr_global: float = 5e-3  # tone curve and per-image spreads (a few numbers; global changes need larger steps)
    lr_d: float = 5e-4
    beta1: float = 0.5
    beta2: float = 0.999
    holdout_images: int = 2  # last synthetic images: never trained on, used for the fidelity checks
    select: str = "last"  # generator.pt: the latest checkpoint that passes the fidelity checks ("last") or the
    # passing one with the smallest appearance gap ("appearance"; on 2 held-out images a weak signal)
    n_samples: int = 3  # rows of the sample grids

    def __post_init__(self):
        if self.d_view not in ("normalised", "raw"):
            raise ValueError(f"d_view must be 'normalised' or 'raw', got {self.d_view!r}")
        if self.gan_loss not in GAN_KINDS:
            raise ValueError(f"gan_loss must be one of {GAN_KINDS}, got {self.gan_loss!r}")
        for name in ("adv_weight", "content_weight", "noise_weight", "spectrum_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("content_sigma_px", "lr_g", "lr_global", "lr_d"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"Adam betas must be in [0, 1), got {(self.beta1, self.beta2)!r}")
        if self.select not in SELECT_RULES:
            raise ValueError(f"select must be one of {SELECT_RULES}, got {self.select!r}")
        if self.holdout_images < 1:
            raise ValueError(f"holdout_images must be >= 1, got {self.holdout_images!r}")
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples!r}")


def refiner_config_from_dict(data: dict) -> RefinerConfig:
    """Inverse of ``dataclasses.asdict`` for ``RefinerConfig`` (as saved in config.json and checkpoints)."""
    data = dict(data)
    nested = {"generator": GeneratorConfig, "discriminator": DiscriminatorConfig, "augment": AugmentConfig,
              "fidelity": FidelityThresholds}
    for key, cls in nested.items():
        if key in data:
            data[key] = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in dict(data[key]).items()})
    return RefinerConfig(**data)


@dataclass(frozen=True, slots=True)
class StepInfo:
    """What ``on_step`` receives after every step."""

    step: int  # steps done (1-based)
    steps: int
    losses: dict[str, float]  # d_loss, g_adv, content, noise, spectrum, g_total, d_real, d_fake, and the
    # learned per-image spreads gain_spread (std of log gain) and offset_spread
    elapsed_s: float  # since this call of ``train`` started
    evaluation: dict | None = None  # the fidelity.jsonl record when this step was a checkpoint
    sample_png: str | None = None  # path of the sample grid written at this step


@dataclass(frozen=True, slots=True)
class TrainResult:
    run_dir: str
    steps: int
    selected_step: int | None  # step of generator.pt, or None when no checkpoint passed the fidelity checks
    evaluations: list[dict]  # the fidelity.jsonl records
    seconds: float
    seconds_per_step: float


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> tuple[Generator, dict]:
    """A generator file (generator.pt, generators/step_N.pt or checkpoint.pt) -> (network in eval mode, its
    metadata: step, config, ...)."""
    blob = torch.load(path, map_location="cpu", weights_only=False)
    cfg = refiner_config_from_dict(blob["config"]["refiner"])
    gen = Generator(cfg.generator)
    gen.load_state_dict(blob["generator"])
    gen.to(device).eval()
    meta = {k: v for k, v in blob.items() if k not in ("generator", "discriminator", "opt_g", "opt_d", "rng")}
    return gen, meta


# --------------------------------------------------------------------------------------------------- evaluation
def _spectrum(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    freq, power = radial_power_spectrum(image.astype(np.float64), 1.0, n_bins=24)
    band = (freq >= 1 / 64) & (freq <= 0.5)
    return freq[band], np.log10(power[band] + 1e-20)


def refined_view(gen: Generator, out: GeneratorOut, refined: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Refined crops as the discriminator sees them with ``d_view = "normalised"``: scaled by the levels their
    whole refined image has, i.e. the synthetic image's ``levels`` through the tone curve and the per-image map
    (exact up to the local residual and texture, which are bounded and near zero on average). The per-image
    map cancels: the view does not depend on which real image's levels were drawn."""
    low = out.gain * gen.tone(levels[:, 0]) + out.offset
    high = out.gain * gen.tone(levels[:, 1]) + out.offset
    return scale_to_levels(refined, low[:, None, None, None], (high - low)[:, None, None, None])


def appearance_statistics(images: list[np.ndarray], normalised: bool = False) -> dict[str, np.ndarray]:
    """Pooled intensity quantiles and mean log power spectrum (periods 2-64 px) of some images (each first
    scaled by its own levels when ``normalised``)."""
    if normalised:
        levels = [image_levels(im) for im in images]
        images = [scale_to_levels(im, lo, hi - lo) for im, (lo, hi) in zip(images, levels, strict=True)]
    values = np.concatenate([im.ravel() for im in images])
    return {
        "normalised": normalised,
        "quantiles": np.quantile(values, np.linspace(0.005, 0.995, 100)),
        "log_power": np.mean([_spectrum(im)[1] for im in images], axis=0),
    }


def appearance_gap(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    """How far two sets of images are apart in what the refiner can change: W1 distance of their intensity
    distributions (fraction of full scale) and mean |difference| of their log10 power spectra; ``gap`` is
    ``intensity_w1 / 0.01 + log_power_l1 / 0.1`` (each term ~1 for a clearly visible difference)."""
    w1 = float(np.mean(np.abs(a["quantiles"] - b["quantiles"])))
    spec = float(np.mean(np.abs(a["log_power"] - b["log_power"])))
    return {"intensity_w1": w1, "log_power_l1": spec, "gap": w1 / 0.01 + spec / 0.1}


def quantized(image: np.ndarray, bit_depth: int) -> np.ndarray:
    """An image in [0, 1] as it would be written at ``bit_depth``, back in [0, 1]."""
    return (quantize(image, bit_depth).astype(np.float64) / ((1 << bit_depth) - 1)).astype(np.float32)


def evaluate(generator: Generator | None, holdout: list[ImageRecord], references: list[UnrefinedReference],
             real_stats: dict, segmenter: Segmenter, thresholds: FidelityThresholds, device: torch.device) -> dict:
    """Label fidelity on held-out synthetic images (``references``: their ``unrefined_reference``) and the
    appearance gap to the real images (``generator=None``: the unrefined images themselves)."""
    results: list[FidelityResult] = []
    refined_images = []
    for index, (item, ref) in enumerate(zip(holdout, references, strict=True)):
        if generator is None:
            refined = item.image
        else:
            cond = condition_channels(item.labels) if generator.cfg.condition else None
            noise = image_noise(item.image.shape, EVAL_NOISE_SEED, index)
            refined = quantized(refine_array(generator, item.image, cond, noise, device=device), item.bit_depth)
        refined_images.append(refined)
        results.append(label_fidelity(ref, refined, item.labels, item.pixel_size_nm, segmenter, thresholds))
    fid = mean_fidelity(results, thresholds)
    gap = appearance_gap(appearance_statistics(refined_images, real_stats["normalised"]), real_stats)
    return {"fidelity": fid.as_dict(), "per_image": [r.as_dict() for r in results], "appearance": gap,
            "passed": fid.passed}


# --------------------------------------------------------------------------------------------------- samples
def _to_u8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
    return quantize(a, 8)


def sample_grid(synthetic: torch.Tensor, refined: torch.Tensor, real: torch.Tensor, gap_px: int = 4) -> np.ndarray:
    """(rows * h + gaps, 3 * w + gaps) uint8: one row per sample, columns synthetic | refined | real."""
    rows = []
    n, _, h, w = synthetic.shape
    sep = np.full((h, gap_px), 255, np.uint8)
    for i in range(n):
        row = [_to_u8(synthetic[i, 0]), sep, _to_u8(refined[i, 0]), sep, _to_u8(real[i % len(real), 0])]
        rows.append(np.hstack(row))
        rows.append(np.full((gap_px, rows[-1].shape[1]), 255, np.uint8))
    return np.vstack(rows[:-1])


# --------------------------------------------------------------------------------------------------- training
def _jsonl_truncate(path: Path, max_step: int) -> None:
    """Keep the records of steps <= max_step (after an interruption, later ones were not checkpointed)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= max_step]
    atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())


def _append_jsonl(path: Path, records: list[dict]) -> None:
    if records:
        with open(path, "a") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in records))


def _write_evaluations(path: Path, evaluations: list[dict]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(e) + "\n" for e in evaluations).encode())


def _select(evaluations: list[dict], rule: str) -> dict | None:
    candidates = [e for e in evaluations if e["step"] > 0 and e["passed"]]
    if not candidates:
        return None
    if rule == "last":
        return max(candidates, key=lambda e: e["step"])
    return min(candidates, key=lambda e: (e["appearance"]["gap"], -e["step"]))


def select_checkpoint(run_dir: str | Path, rule: str) -> int | None:
    """Select generator.pt of a finished run again, by ``rule`` (see ``RefinerConfig.select``), from its
    per-checkpoint generators and fidelity.jsonl; returns the selected step (None: no checkpoint passed)."""
    run_dir = Path(run_dir)
    if rule not in SELECT_RULES:
        raise ValueError(f"select must be one of {SELECT_RULES}, got {rule!r}")
    path = run_dir / "fidelity.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no fidelity.jsonl (not a refiner run folder)")
    evaluations = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    best = _select(evaluations, rule)
    if best is not None:
        source = run_dir / "generators" / f"step_{best['step']:06d}.pt"
        if not source.is_file():
            raise FileNotFoundError(f"{source}: the selected checkpoint's generator is missing")
        atomic_write_bytes(run_dir / "generator.pt", source.read_bytes())
    for e in evaluations:
        e["selected"] = e is best
    _write_evaluations(path, evaluations)
    return None if best is None else best["step"]


def _adversarial_step(gen: Generator, disc: Discriminator, opt_g: torch.optim.Optimizer,
                      opt_d: torch.optim.Optimizer, batch: CropBatch, g_noise: torch.Generator,
                      g_augment: torch.Generator, config: RefinerConfig, real_bits: int,
                      dev: torch.device) -> dict[str, float]:
    """One discriminator update and one generator update on a batch; returns the losses."""
    syn, cond, real_crops = batch.synthetic.to(dev), batch.condition.to(dev), batch.real.to(dev)
    syn_levels = batch.synthetic_levels.to(dev)
    out = gen(syn, cond, RefinerNoise.draw(tuple(syn.shape), g_noise).to(dev), syn_levels)
    fake = quantize_ste(out.refined, real_bits)  # the grey levels the real images have
    if config.d_view == "normalised":
        # Both sides scaled by their whole image's levels: what eval.realism compares.
        fake = refined_view(gen, out, fake, syn_levels)
        levels = batch.real_levels.to(dev)
        low, high = levels[:, 0, None, None, None], levels[:, 1, None, None, None]
        real_crops = scale_to_levels(real_crops, low, high - low)

    # Discriminator: real vs refined crops, both augmented the same way, in one batch (so that BatchNorm
    # statistics are shared and a global difference in tone stays visible to it).
    n = len(real_crops)
    logits = disc(diff_augment(torch.cat([real_crops, fake.detach()]), config.augment, g_augment))
    real_logits, fake_logits = logits[:n], logits[n:]
    d_loss = gan_d_loss(real_logits, fake_logits, config.gan_loss)
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()

    # Generator: fool the discriminator, keep the low-passed residual at zero, match noise statistics.
    logits = disc(diff_augment(torch.cat([real_crops, fake]), config.augment, g_augment))
    g_adv = gan_g_loss(logits[n:], config.gan_loss)
    content = content_loss(out.residual, config.content_sigma_px)
    zero = torch.zeros((), device=dev)
    noise_term = noise_loss(fake, real_crops) if config.noise_weight > 0 else zero
    spec = spectrum_loss(fake, real_crops) if config.spectrum_weight > 0 else zero
    g_total = (config.adv_weight * g_adv + config.content_weight * content + config.noise_weight * noise_term
               + config.spectrum_weight * spec)
    opt_g.zero_grad(set_to_none=True)
    g_total.backward()
    opt_g.step()

    s_gain, s_offset = gen.spreads()
    return {name: float(value.detach()) for name, value in (
        ("d_loss", d_loss), ("g_adv", g_adv), ("content", content), ("noise", noise_term), ("spectrum", spec),
        ("g_total", g_total), ("d_real", real_logits.mean()), ("d_fake", fake_logits.mean()),
        ("gain_spread", s_gain), ("offset_spread", s_offset))}


def train(
    synthetic_dir: str | Path,
    real_dir: str | Path,
    run_dir: str | Path,
    *,
    steps: int,
    crop_px: int = 256,
    batch_size: int = 4,
    seed: int = 0,
    device: str = "auto",
    resume: bool = False,
    on_step: Callable[[StepInfo], None] | None = None,
    sample_every: int = 100,
    checkpoint_every: int = 250,
    config: RefinerConfig = RefinerConfig(),
    segmenter: Segmenter | None = None,
) -> TrainResult:
    """Train a refiner from the synthetic dataset ``synthetic_dir`` (with label maps) towards the real dataset
    ``real_dir`` (labels unused); writes everything into ``run_dir`` (see the module docstring).

    ``resume=True`` continues an interrupted run in ``run_dir`` from its checkpoint (same settings; ``steps``
    may be raised). A checkpoint that fails the label-fidelity checks is logged, warned about
    (``FidelityWarning``) and never selected. ``segmenter`` defaults to ``fidelity.default_segmenter()``.
    """
    t_start = time.perf_counter()
    for name, value, low in (("steps", steps, 1), ("crop_px", crop_px, 16), ("batch_size", batch_size, 1),
                             ("sample_every", sample_every, 1), ("checkpoint_every", checkpoint_every, 1)):
        if int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed!r}")
    dev = resolve_device(device)
    run_dir = Path(run_dir)
    if segmenter is None:
        segmenter_name, segmenter = default_segmenter()
    else:
        segmenter_name = getattr(segmenter, "__qualname__", type(segmenter).__name__)
    run_cfg = {
        "generator": "semsynth refiner",
        "synthetic_dir": str(Path(synthetic_dir).resolve()),
        "real_dir": str(Path(real_dir).resolve()),
        "steps": steps,
        "crop_px": crop_px,
        "batch_size": batch_size,
        "seed": seed,
        "sample_every": sample_every,
        "checkpoint_every": checkpoint_every,
        "segmenter": segmenter_name,
        "refiner": asdict(config),
    }

    # Data (checked before anything is written): the last ``holdout_images`` synthetic images are only
    # evaluated; real images are resampled to the synthetic pixel size when they differ.
    synthetic = load_dataset(synthetic_dir, labels=True)
    n_hold = config.holdout_images
    if len(synthetic) <= n_hold:
        raise ValueError(f"{synthetic_dir}: {len(synthetic)} images; need more than holdout_images={n_hold}")
    train_syn, holdout = synthetic[:-n_hold], synthetic[-n_hold:]
    pixel_nm = float(np.median([d.pixel_size_nm for d in synthetic]))
    real = [dataclasses.replace(d, image=resample(d.image, d.pixel_size_nm / pixel_nm, tolerance=1e-3),
                                info={**d.info, "pixel_size_nm": pixel_nm})
            for d in load_dataset(real_dir, labels=False)]
    real_bits = max(d.bit_depth for d in real)
    streams = torch_streams(seed, ("sampler", "noise", "augment", "grid_sampler", "grid_noise"))
    g_sampler, g_noise, g_augment = streams["sampler"], streams["noise"], streams["augment"]
    sampler = CropSampler(train_syn, real, crop_px, condition=config.generator.condition, generator=g_sampler)

    ckpt_path = run_dir / "checkpoint.pt"
    blob = None
    if resume and ckpt_path.exists():
        blob = load_checkpoint(ckpt_path, weights_only=False)
        before, now = json.loads(json.dumps(blob["config"])), json.loads(json.dumps(run_cfg))
        check_resume(before, now, sorted((set(before) | set(now)) - set(_RESUMABLE)), where=str(run_dir))
        if blob["step"] > steps:
            raise ValueError(f"{run_dir}: the checkpoint is at step {blob['step']}, past steps={steps}")
    elif run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise FileExistsError(f"{run_dir}: not empty; pass resume=True (--resume) to continue it, or a new folder")
    for sub in ("generators", "samples"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", run_cfg)

    real_stats = appearance_statistics([d.image for d in real], normalised=config.d_view == "normalised")
    references = [unrefined_reference(d.image, d.labels, d.pixel_size_nm, segmenter, config.fidelity)
                  for d in holdout]

    gen, disc = build_networks(config.generator, config.discriminator, seed)
    if config.generator.levels == "real":
        gen.set_real_levels(sampler.real_levels)
    gen.to(dev)
    disc.to(dev)
    is_global = lambda name: name.startswith("tone.") or name == "raw_spread"  # noqa: E731
    global_params = [p for name, p in gen.named_parameters() if is_global(name)]
    conv_params = [p for name, p in gen.named_parameters() if not is_global(name)]
    opt_g = torch.optim.Adam([{"params": conv_params, "lr": config.lr_g},
                              {"params": global_params, "lr": config.lr_global}], betas=(config.beta1, config.beta2))
    opt_d = torch.optim.Adam(disc.parameters(), lr=config.lr_d, betas=(config.beta1, config.beta2))

    # Fixed sample crops for the grids, from their own stream (not the training one).
    grid_sampler = CropSampler(train_syn, real, crop_px, condition=config.generator.condition,
                               generator=streams["grid_sampler"])
    grid = grid_sampler.sample(config.n_samples)
    grid_noise = RefinerNoise.draw(tuple(grid.synthetic.shape), streams["grid_noise"])

    start = 0
    evaluations: list[dict] = []
    if blob is not None:
        gen.load_state_dict(blob["generator"])
        disc.load_state_dict(blob["discriminator"])
        opt_g.load_state_dict(blob["opt_g"])
        opt_d.load_state_dict(blob["opt_d"])
        for g, state in zip((g_sampler, g_noise, g_augment), blob["rng"], strict=True):
            g.set_state(state)
        start = blob["step"]
        evaluations = blob["evaluations"]
        _jsonl_truncate(run_dir / "log.jsonl", start)
    else:
        (run_dir / "log.jsonl").unlink(missing_ok=True)
        baseline = evaluate(None, holdout, references, real_stats, segmenter, config.fidelity, dev)
        evaluations.append({"step": 0, **baseline, "selected": False})
    _write_evaluations(run_dir / "fidelity.jsonl", evaluations)

    def checkpoint(step: int) -> dict:
        record = {"step": step, **evaluate(gen, holdout, references, real_stats, segmenter, config.fidelity, dev)}
        if not record["passed"]:
            f = record["fidelity"]
            warnings.warn(
                f"refiner checkpoint at step {step} BREAKS LABEL FIDELITY and will not be used: boundary F "
                f"{f['boundary_f_unrefined']:.3f} -> {f['boundary_f_refined']:.3f} (allowed change "
                f"{config.fidelity.max_boundary_f_change}), segmenter mIoU {f['segmenter_miou']:.3f} "
                f"(needs >= {config.fidelity.min_segmenter_miou})", FidelityWarning, stacklevel=3)
        meta = {"step": step, "config": run_cfg, "fidelity": record["fidelity"], "appearance": record["appearance"]}
        snapshot = run_dir / "generators" / f"step_{step:06d}.pt"
        save_checkpoint(snapshot, {**meta, "generator": gen.state_dict()})
        best_before = _select(evaluations, config.select)
        evaluations.append({**record, "selected": False})
        best = _select(evaluations, config.select)
        if best is not None and best is not best_before:
            save_checkpoint(run_dir / "generator.pt", {**meta, "generator": gen.state_dict()})
        for e in evaluations:
            e["selected"] = e is best
        save_checkpoint(ckpt_path, {
            "step": step, "config": run_cfg, "generator": gen.state_dict(), "discriminator": disc.state_dict(),
            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
            "rng": [g.get_state() for g in (g_sampler, g_noise, g_augment)], "evaluations": evaluations,
        })
        _write_evaluations(run_dir / "fidelity.jsonl", evaluations)
        return evaluations[-1]

    pending: list[dict] = []
    t_loop = time.perf_counter()
    for step in range(start + 1, steps + 1):
        losses = _adversarial_step(gen, disc, opt_g, opt_d, sampler.sample(batch_size), g_noise, g_augment,
                                   config, real_bits, dev)
        pending.append({"step": step, **losses})
        evaluation = sample_png = None
        if step % sample_every == 0 or step == steps:
            with torch.no_grad():
                refined = gen(grid.synthetic.to(dev), grid.condition.to(dev), grid_noise.to(dev),
                              grid.synthetic_levels.to(dev)).refined
            path = run_dir / "samples" / f"step_{step:06d}.png"
            atomic_write_bytes(path, encode_png(sample_grid(grid.synthetic, refined, grid.real)))
            sample_png = str(path)
        if step % checkpoint_every == 0 or step == steps:
            _append_jsonl(run_dir / "log.jsonl", pending)
            pending = []
            evaluation = checkpoint(step)
        if on_step is not None:
            on_step(StepInfo(step, steps, losses, time.perf_counter() - t_start, evaluation, sample_png))
    _append_jsonl(run_dir / "log.jsonl", pending)
    done = steps - start
    best = _select(evaluations, config.select)
    if best is None:
        warnings.warn(f"{run_dir}: no checkpoint passed the label-fidelity checks; generator.pt was not written "
                      "(lower the learning rates or raise content_weight)", FidelityWarning, stacklevel=2)
    total = time.perf_counter() - t_start
    return TrainResult(str(run_dir), steps, None if best is None else best["step"], evaluations, total,
                       (time.perf_counter() - t_loop) / done if done else float("nan"))
