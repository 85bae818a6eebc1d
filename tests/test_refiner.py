"""The refiner: shapes, label preservation by construction, learning, resuming, applying, fidelity that fails."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import digest, small_config

from refiner.apply import apply
from refiner.data import CropSampler, boundary_map, condition_channels, load_dataset
from refiner.fidelity import (
    FidelityThresholds,
    boundary_f_score,
    image_boundary_f,
    label_fidelity,
    otsu_segmenter,
    strong_edges,
)
from refiner.losses import AugmentConfig, content_loss, diff_augment, log_spectrum
from refiner.nets import (
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
    RefinerNoise,
    ToneCurve,
    build_networks,
    image_noise,
    interior_mask,
    refine_array,
)
from refiner.train import FidelityWarning, RefinerConfig, load_generator, select_checkpoint, train
from simulator.io.check import check_dataset
from simulator.io.writer import write_dataset

torch.set_num_threads(1)

# Small and fast: 64 px crops, a 2-layer discriminator, one held-out image.
FAST = RefinerConfig(discriminator=DiscriminatorConfig(channels=(16, 32)), holdout_images=1, n_samples=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A synthetic dataset, a 'real' one that differs only in appearance (brighter, lower-contrast substrate
    and more noise), and a 16-bit synthetic dataset to apply the refiner to."""
    root = tmp_path_factory.mktemp("refiner")
    write_dataset(root / "synthetic", small_config(), n_images=5, seed=1)
    real_cfg = small_config(shading={"substrate_yield": 0.7}, detector={"probe_current_pA": 100.0})
    write_dataset(root / "real", real_cfg, n_images=4, seed=2)
    write_dataset(root / "sixteen", small_config(image={"bit_depth": 16}), n_images=2, seed=3)
    return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A short run (60 steps) shared by the learning and apply tests."""
    run = tmp_path_factory.mktemp("run") / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(data / "synthetic", data / "real", run, steps=60, crop_px=64, batch_size=4, seed=0,
                       device="cpu", sample_every=30, checkpoint_every=30, config=FAST, segmenter=otsu_segmenter)
    return run, result


# ------------------------------------------------------------------------------------------- shapes and design
def test_shapes_dtypes_and_identity_at_start(data):
    gen, disc = build_networks(GeneratorConfig(), DiscriminatorConfig(), seed=0)
    x = torch.rand(2, 1, 64, 48)
    noise = RefinerNoise.draw((2, 1, 64, 48), torch.Generator().manual_seed(0))
    out = gen(x, torch.zeros(2, 2, 64, 48), noise)
    assert out.refined.shape == (2, 1, 64, 48) and out.refined.dtype == torch.float32
    # Identity tone curve, zero residual and texture, and no real levels yet: the identity.
    assert torch.allclose(out.refined, x, atol=1e-5)
    # With real levels, each image takes the black/white levels (1st/99th percentiles) of one real image, picked
    # by its latent: the refined image's own percentiles land there.
    gen.set_real_levels(torch.tensor([[0.1, 0.5], [0.3, 0.9]]))
    picks = RefinerNoise(noise.pixels, torch.tensor([[-3.0, 0.0], [3.0, 0.0]]))  # first, last real image
    refined = gen(x, torch.zeros(2, 2, 64, 48), picks).refined.detach().numpy()
    assert np.allclose(np.percentile(refined[0], [1, 99]), [0.1, 0.5], atol=1e-4)
    assert np.allclose(np.percentile(refined[1], [1, 99]), [0.3, 0.9], atol=1e-4)
    assert Generator(GeneratorConfig()).load_state_dict(gen.state_dict()) is not None  # levels travel with it
    assert disc(x).shape == (2, 1, 4, 3)  # one logit per patch (4 stride-2 layers)

    items = load_dataset(data / "synthetic", labels=True)
    assert items[0].image.dtype == np.float32 and items[0].labels.dtype == np.int32 and items[0].bit_depth == 8
    sampler = CropSampler(items, load_dataset(data / "real", labels=False), 32, condition=True,
                          generator=torch.Generator().manual_seed(0))
    batch = sampler.sample(3)
    assert batch.synthetic.shape == (3, 1, 32, 32) and batch.real.shape == (3, 1, 32, 32)
    assert batch.condition.shape == (3, 2, 32, 32)
    # The conditioning is exactly the foreground and the instance boundaries of the crop.
    assert torch.equal(batch.condition[:, 1], (batch.condition[:, 1] > 0).float())
    with pytest.raises(ValueError, match="x must be"):
        gen(x[:, 0], torch.zeros(2, 2, 64, 48), noise)
    with pytest.raises(ValueError, match="condition must be"):
        gen(x, torch.zeros(2, 1, 64, 48), noise)



def test_discriminator_view_matches_the_realism_normalisation_and_ignores_the_drawn_levels():
    from eval.data.pixels import image_levels
    from eval.realism.data import ImageSet, normalized
    from refiner.train import refined_view

    gen, _ = build_networks(GeneratorConfig(texture=False), DiscriminatorConfig(), seed=0)
    with torch.no_grad():  # a non-trivial monotone tone curve
        gen.tone.raw.copy_(torch.linspace(-3, 1, len(gen.tone.raw)))
    gen.set_real_levels(torch.tensor([[0.05, 0.4], [0.2, 0.7]]))  # no clipping at 0 or 1 here
    image = torch.rand(1, 1, 96, 96, generator=torch.Generator().manual_seed(0)) ** 3
    levels = torch.tensor([image_levels(image[0, 0].numpy())])
    views = []
    for pick in (-3.0, 3.0):  # the first and the last real image's levels
        noise = RefinerNoise(torch.zeros_like(image), torch.tensor([[pick, 0.0]]))
        out = gen(image, torch.zeros(1, 2, 96, 96), noise, levels)
        views.append(refined_view(gen, out, out.refined, levels))
        # what eval.realism sees of the whole refined image (zero residual: exact)
        whole = normalized(ImageSet("r", (out.refined[0, 0].detach().numpy(),), ("r",), 1.0)).images[0]
        assert np.allclose(views[-1][0, 0].detach().numpy(), whole, atol=1e-4)
    assert torch.allclose(views[0], views[1], atol=1e-5)
    assert not torch.allclose(out.refined, image, atol=1e-2)

def test_boundary_map_oracle():
    labels = np.zeros((6, 6), np.int32)
    labels[1:4, 1:3] = 1
    labels[1:4, 3:5] = 2
    b = boundary_map(labels)
    # Every pixel of both instances touches another id except none here (2-wide blocks); the substrate ring
    # around them is boundary too; far corners are not.
    assert b[1:4, 1:5].all() and b[0, 1:5].all() and b[4, 1:5].all() and not b[5, 0] and not b[0, 0]
    assert condition_channels(labels)[0].sum() == 12


def _randomised_generator(cfg: GeneratorConfig, scale: float = 0.5):
    """A generator whose every layer (including the zero-initialised last ones) has random weights."""
    gen, _ = build_networks(cfg, DiscriminatorConfig(), seed=0)
    with torch.no_grad():
        for k, p in enumerate(p for name, p in gen.named_parameters() if not name.startswith("tone")):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(k)) * scale)
    return gen


def _blob_condition(size: int, centre: tuple[int, int], radius: int) -> torch.Tensor:
    yy, xx = np.mgrid[0:size, 0:size]
    labels = (((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) <= radius**2).astype(np.int32)
    return torch.from_numpy(condition_channels(labels))[None]


@pytest.mark.parametrize(("texture", "particle"), [(False, False), (True, False), (False, True), (True, True)])
def test_generator_cannot_reach_beyond_its_receptive_field(texture, particle):
    cfg = GeneratorConfig(n_layers=3, texture=texture, particle=particle)
    gen = _randomised_generator(cfg, scale=0.2)  # small enough that no tanh saturates
    size, c = 161, 80
    x = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(1))
    blob = (c, c + 30) if particle else (20, 20)  # a particle within reach of the changed pixel, or far away
    cond = _blob_condition(size, blob, 12)
    z = RefinerNoise.draw((1, 1, size, size), torch.Generator().manual_seed(2))
    y0 = gen(x, cond, z).refined
    x2 = x.clone()
    x2[0, 0, c, c] += 0.5
    changed = (gen(x2, cond, z).refined - y0).abs()[0, 0] > 0
    rows, cols = np.nonzero(changed.numpy())
    assert changed.any()
    radius = max(np.abs(rows - c).max(), np.abs(cols - c).max())
    assert radius <= cfg.receptive_radius_px
    if texture:
        assert radius > cfg.n_layers  # the texture branch does reach further, within its stated bound
    if particle:  # the particle branch reaches from the changed substrate pixel into the particle's interior
        assert changed[c - 8 : c + 9, c + 22 : c + 39].any()


def test_substrate_texture_never_touches_labelled_particles():
    cfg = GeneratorConfig()
    gen = _randomised_generator(cfg, scale=1.0)
    size = 96
    cond = _blob_condition(size, (48, 40), 12)
    x = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(1))
    out = gen(x, cond, RefinerNoise.draw((1, 1, size, size), torch.Generator().manual_seed(2)))
    fg = cond[0, 0].numpy() > 0
    near = cv2.dilate(fg.astype(np.uint8), np.ones((2 * cfg.texture_margin_px + 1,) * 2, np.uint8)) > 0
    texture = out.texture[0, 0].detach().numpy()
    assert np.all(texture[near] == 0)
    assert np.abs(texture[~near]).max() > 0.01 and np.abs(texture).max() <= cfg.texture_max


def _two_tone_particles(size: int = 96) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Two touching discs on a dark substrate, each lit in two tones (a bright and a dark half), with a thin
    bright rim: (image (1, 1, H, W), condition, labels)."""
    yy, xx = np.mgrid[0:size, 0:size]
    labels = np.zeros((size, size), np.int32)
    for k, (cy, cx) in enumerate(((48, 30), (48, 62)), start=1):
        labels[((yy - cy) ** 2 + (xx - cx) ** 2) <= 16**2] = k
    image = np.full((size, size), 0.15, np.float32)
    fg = labels > 0
    image[fg] = np.where(yy[fg] < 48, 0.75, 0.45)
    image[boundary_map(labels) & fg] = 0.95
    return torch.from_numpy(image)[None, None], torch.from_numpy(condition_channels(labels))[None], labels


def test_flattening_a_particle_leaves_no_ring_at_its_rim():
    # The mask is a smoothstep of the Chebyshev distance D to the nearest substrate/boundary pixel: 0 up to the
    # margin, 1 from margin + ramp + 1 on (oracle: OpenCV's chessboard distance transform).
    size = 96
    yy, xx = np.mgrid[0:size, 0:size]
    radius = np.hypot(yy - 48, xx - 48)
    labels = (radius <= 30).astype(np.int32)
    labels[(radius <= 30) & (xx > 60)] = 2  # a particle/particle boundary as well
    cond = torch.from_numpy(condition_channels(labels))[None]
    inside = ((labels > 0) & ~boundary_map(labels)).astype(np.uint8)
    d_cheb = cv2.distanceTransform(inside, cv2.DIST_C, 3)
    for margin, ramp in ((1, 6), (2, 0)):
        q = interior_mask(cond[:, :1], cond[:, 1:2], margin, ramp)[0, 0].numpy()
        t = np.clip((d_cheb - margin) / (ramp + 1), 0, 1)
        np.testing.assert_allclose(q, t * t * (3 - 2 * t), atol=1e-6)
    # A particle whose brightness rises towards its rim (edge glow, 4 px range), flattened as far as the branch
    # goes: the glow must fade into the flat interior, not end in a step (a ring drawn inside the particle). With
    # no ramp the step is 2.8 x the steepest step of the input.
    labels = (radius <= 30).astype(np.int32)
    image = np.where(labels > 0, 0.45 + 0.4 * np.exp(-(30 - radius) / 4), 0.15).astype(np.float32)
    x = torch.from_numpy(image)[None, None]
    cond = torch.from_numpy(condition_channels(labels))[None]
    noise = RefinerNoise.draw(tuple(x.shape), torch.Generator().manual_seed(0))
    steepest = {}
    for ramp in (0, GeneratorConfig().particle_ramp_px):
        gen, _ = build_networks(GeneratorConfig(texture=False, particle_ramp_px=ramp), DiscriminatorConfig(), seed=0)
        with torch.no_grad():
            gen.particle.net[-1].bias[0] = -10.0
            refined = gen(x, cond, noise).refined[0, 0].numpy()
        glow = lambda im: im[48, 70] - im[48, 48]  # noqa: E731  (8 px inside the rim vs the centre)
        assert glow(refined) < 0.5 * glow(image)  # the glow is flattened there
        steepest[ramp] = np.abs(np.diff(refined[48, 48:77])).max() / np.abs(np.diff(image[48, 48:77])).max()
    assert steepest[0] > 2.0 and steepest[GeneratorConfig().particle_ramp_px] < 1.2, steepest


def test_particle_shading_acts_inside_particles_only_and_rescales_their_shading():
    cfg = GeneratorConfig(texture=False, detail_max=1.0)
    x, cond, labels = _two_tone_particles()
    noise = RefinerNoise.draw(tuple(x.shape), torch.Generator().manual_seed(2))
    # Random weights: a change of arbitrary sign and scale, exactly zero on the substrate and within the margin
    # of every boundary (particle/substrate and particle/particle), bounded by the contrast factor.
    gen = _randomised_generator(cfg, scale=1.0)
    particle = gen(x, cond, noise).particle[0, 0].detach().numpy()
    outside = (labels == 0) | boundary_map(labels)
    k = 2 * cfg.particle_margin_px + 1
    near = cv2.dilate(outside.astype(np.uint8), np.ones((k, k), np.uint8)) > 0
    assert np.all(particle[near] == 0) and np.abs(particle[~near]).max() > 0.02
    assert np.abs(particle).max() <= np.expm1(cfg.particle_contrast_max) * 0.3  # |T(x) - M| <= 0.3 here
    # A uniform contrast factor exp(-c) (last layer's bias only) pulls each half towards the local particle
    # mean: the two tones come closer, their mean stays, the rims and the substrate do not change at all.
    gen, _ = build_networks(cfg, DiscriminatorConfig(), seed=0)
    with torch.no_grad():
        gen.particle.net[-1].bias[0] = -10.0  # shading: tanh -> -1, factor exp(-particle_contrast_max)
    refined = gen(x, cond, noise).refined[0, 0].detach().numpy()
    full = 2 * (cfg.particle_margin_px + cfg.particle_ramp_px + 1) + 1  # where the mask is 1
    core = cv2.erode((labels == 1).astype(np.uint8), np.ones((full, full), np.uint8)) > 0
    yy = np.mgrid[0:96, 0:96][0]
    top, bottom = core & (yy < 44), core & (yy > 52)
    before = x[0, 0].numpy()[top].mean() - x[0, 0].numpy()[bottom].mean()
    after = refined[top].mean() - refined[bottom].mean()
    assert 0.2 * before < after < 0.75 * before, (before, after)
    assert abs(refined[core].mean() - x[0, 0].numpy()[core].mean()) < 0.02
    assert np.abs(refined[near] - x[0, 0].numpy()[near]).max() < 1e-6  # the identity up to float rounding
    # Pixel noise is shading's fine detail, and it is kept: on a noisy copy, the change is as smooth as before.
    noisy = (x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    change = (gen(noisy, cond, noise).refined - noisy)[0, 0].detach().numpy()
    assert np.std(np.diff(change, axis=1)[core[:, 1:]]) < 0.2 * 0.02 * np.sqrt(2)
    # The second output rescales exactly that fine detail, inside particles and on the substrate, never near a
    # boundary: factor exp(-detail_max) on the noise of the particle cores and of the substrate far from them.
    with torch.no_grad():
        gen.particle.net[-1].bias[0] = 0.0
        gen.particle.net[-1].bias[1] = -10.0
    out = gen(noisy, cond, noise)
    detail = out.detail[0, 0].detach().numpy()
    assert np.all(detail[near & (labels > 0)] == 0) and np.all(out.particle.detach().numpy() == 0)
    substrate_near = cv2.dilate((labels > 0).astype(np.uint8), np.ones((k + 4, k + 4), np.uint8)) > 0
    assert np.all(detail[substrate_near & (labels == 0)] == 0)
    far = cv2.erode((labels == 0).astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
    refined = out.refined[0, 0].detach().numpy()
    fine = lambda image, region: np.std(np.diff(image, axis=1)[region[:, 1:]])  # noqa: E731
    for region in (core, far):
        ratio = fine(refined, region) / fine(noisy[0, 0].numpy(), region)
        assert 0.5 * np.exp(-cfg.detail_max) < ratio < 1.5 * np.exp(-cfg.detail_max), ratio
    # A flat particle stays flat whatever the weights: the branch rescales shading, it cannot draw an edge.
    flat = torch.where(cond[:, :1] > 0, torch.tensor(0.6), torch.tensor(0.15))
    out = _randomised_generator(cfg, scale=1.0)(flat, cond, noise)
    assert out.particle.abs().max() < 1e-5


def test_tone_curve_is_strictly_increasing():
    curve = ToneCurve(9, min_slope=0.2)
    with torch.no_grad():
        curve.raw.copy_(torch.tensor([-30.0, 5, -30, 2, -30, 0, 1, -30]))
    y = curve(torch.linspace(0, 1, 1001))
    slopes = torch.diff(y) / (1 / 1000)
    assert slopes.min() >= 0.2 - 1e-3


@pytest.mark.parametrize(("texture", "particle"), [(False, False), (True, True)])
def test_tiled_refinement_equals_whole_image(texture, particle):
    gen = _randomised_generator(GeneratorConfig(texture=texture, particle=particle), scale=0.3)
    rng = np.random.default_rng(0)
    image = rng.random((150, 171), dtype=np.float32)
    labels = cv2.resize((rng.random((15, 18)) > 0.6).astype(np.uint8), (171, 150),
                        interpolation=cv2.INTER_NEAREST).astype(np.int32)  # blocks with interiors
    noise = image_noise(image.shape, seed=0, index=3)
    whole = refine_array(gen, image, condition_channels(labels), noise, tile_px=1000)
    tiled = refine_array(gen, image, condition_channels(labels), noise, tile_px=31)
    assert np.abs(whole - image).max() > 0.01  # the test generator does change the image
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_losses_and_augmentation():
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    # Content loss ignores fine detail, not a shift of the low-passed image.
    fine = torch.zeros_like(x)
    fine[..., ::2, :] = 0.1
    fine[..., 1::2, :] = -0.1
    assert content_loss(fine, 2.0) < 0.01 < content_loss(fine + 0.1, 2.0)
    # Spectrum in the fine band: more noise, more power.
    noisy = x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    assert (log_spectrum(noisy) > log_spectrum(x)).all()
    g = torch.Generator().manual_seed(0)
    y = diff_augment(x.requires_grad_(), AugmentConfig(), g)
    y.sum().backward()
    assert y.shape == x.shape and x.grad is not None
    with pytest.raises(ValueError, match="augment.cutout"):
        AugmentConfig(cutout=1.5)


# ------------------------------------------------------------------------------------------- fidelity
def _sim_image():
    from simulator.pipeline import as_written, simulate_image

    cfg = small_config(image={"width_px": 256, "height_px": 192})
    sim = simulate_image(cfg, seed=5, index=0)
    return as_written(sim, cfg), sim.render.instance_id.astype(np.int32), cfg.image.pixel_size_nm


def test_fidelity_fails_when_the_image_moves_and_passes_for_tone_changes():
    image, labels, px = _sim_image()
    same = label_fidelity(image, image, labels, px)
    assert same.passed and same.boundary_f_change == 0 and same.segmenter_miou == 1.0
    assert same.boundary_f_unrefined > 0.6  # the strong edges are the particle outlines
    toned = label_fidelity(image, np.clip(image**0.8 * 1.1, 0, 1), labels, px)
    assert toned.passed, toned
    shifted = label_fidelity(image, np.roll(image, 3, axis=1), labels, px)
    assert not shifted.passed
    assert shifted.boundary_f_change < -0.1 and shifted.segmenter_miou < 0.95
    # Edge F-score directly: perfect edges score 1, edges moved 3 px score low.
    truth = boundary_map(labels)
    assert boundary_f_score(truth, labels).f == 1.0
    assert boundary_f_score(np.roll(truth, 4, axis=0), labels).f < 0.5
    assert strong_edges(np.zeros((20, 20), np.float32)).sum() == 0
    assert image_boundary_f(image, labels, FidelityThresholds(tolerance_px=0)) < same.boundary_f_unrefined


def test_otsu_segmenter_finds_the_particles():
    image, labels, px = _sim_image()
    seg = otsu_segmenter(image, px)
    fg, truth = seg > 0, labels > 0
    assert seg.dtype == np.int32 and (fg & truth).sum() / (fg | truth).sum() > 0.8
    with pytest.raises(ValueError, match="pixel_size_nm"):
        otsu_segmenter(image, 0.0)


# ------------------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_training_learns_the_real_appearance(data, trained):
    run, result = trained
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 61))
    d = np.array([r["d_loss"] for r in log])
    assert d[-15:].mean() < d[:10].mean() - 0.02  # the discriminator learns to tell them apart
    # The refiner moves the held-out synthetic image's substrate towards the brighter "real" substrate.
    gen, meta = load_generator(run / "generators" / "step_000060.pt")
    held = load_dataset(data / "synthetic", labels=True)[-1]
    real = load_dataset(data / "real", labels=True)
    refined = refine_array(gen, held.image, condition_channels(held.labels), image_noise(held.image.shape, 0, 0))
    sub = held.labels == 0
    real_sub = np.mean([r.image[r.labels == 0].mean() for r in real])
    before, after = held.image[sub].mean(), refined[sub].mean()
    assert abs(after - real_sub) < 0.5 * abs(before - real_sub), (before, after, real_sub)
    # Every part of the generator was trained (tone curve, local residual, substrate texture, particle shading).
    init, _ = build_networks(FAST.generator, FAST.discriminator, seed=0)
    for name, value in init.state_dict().items():
        assert not torch.equal(value, gen.state_dict()[name]), f"{name} never changed"
    # Checkpoints, their evaluations, the selected generator and the sample grids are all there.
    steps = [e["step"] for e in result.evaluations]
    assert steps == [0, 30, 60] and meta["step"] == 60
    assert all(0 <= e["fidelity"]["segmenter_miou"] <= 1 for e in result.evaluations)
    passing = [e["step"] for e in result.evaluations if e["step"] > 0 and e["passed"]]
    assert result.selected_step == (max(passing) if passing else None)  # select = "last"
    if passing:
        assert torch.load(run / "generator.pt", weights_only=False)["step"] == result.selected_step
        # Selecting again by another rule rewrites generator.pt and the flags; then back to the run's rule.
        by_gap = min((e for e in result.evaluations if e["step"] in passing),
                     key=lambda e: (e["appearance"]["gap"], -e["step"]))["step"]
        assert select_checkpoint(run, "appearance") == by_gap
        assert torch.load(run / "generator.pt", weights_only=False)["step"] == by_gap
        flags = [json.loads(line)["selected"] for line in (run / "fidelity.jsonl").read_text().splitlines()]
        assert flags == [e["step"] == by_gap for e in result.evaluations]
        assert select_checkpoint(run, "last") == result.selected_step
    grid = cv2.imread(str(run / "samples" / "step_000060.png"), cv2.IMREAD_UNCHANGED)
    assert grid.shape == (2 * 64 + 4, 3 * 64 + 8)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(data, tmp_path):
    kwargs = dict(crop_px=48, batch_size=2, seed=3, device="cpu", sample_every=100, checkpoint_every=3,
                  config=FAST, segmenter=otsu_segmenter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(data / "synthetic", data / "real", tmp_path / "a", steps=8, **kwargs)

        class Interrupt(Exception):
            pass

        def crash(info):
            if info.step == 5:  # after the checkpoint at step 3: steps 4-5 are lost and redone
                raise Interrupt

        with pytest.raises(Interrupt):
            train(data / "synthetic", data / "real", tmp_path / "b", steps=8, on_step=crash, **kwargs)
        assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["step"] == 3
        with pytest.raises(FileExistsError, match="resume"):
            train(data / "synthetic", data / "real", tmp_path / "b", steps=8, **kwargs)
        with pytest.raises(ValueError, match="seed"):
            train(data / "synthetic", data / "real", tmp_path / "b", steps=8, resume=True,
                  **{**kwargs, "seed": 4})
        resumed = train(data / "synthetic", data / "real", tmp_path / "b", steps=8, resume=True, **kwargs)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 8
    for key in ("generator", "discriminator"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), name
    assert a["opt_g"]["state"][0]["step"] == b["opt_g"]["state"][0]["step"] == 8
    log_a = (tmp_path / "a" / "log.jsonl").read_text()
    assert log_a == (tmp_path / "b" / "log.jsonl").read_text()  # steps 4-5 logged once, not twice
    assert [e["step"] for e in resumed.evaluations] == [0, 3, 6, 8]


def test_checkpoints_that_break_fidelity_are_never_selected(data, tmp_path):
    # Thresholds no refined image can meet: every checkpoint fails, is warned about, and none is used.
    strict = dataclasses.replace(FAST, fidelity=FidelityThresholds(max_boundary_f_change=0.0, min_segmenter_miou=1.0))
    with pytest.warns(FidelityWarning) as caught:
        result = train(data / "synthetic", data / "real", tmp_path / "run", steps=4, crop_px=48, batch_size=2,
                       device="cpu", checkpoint_every=2, config=strict, segmenter=otsu_segmenter)
    messages = [str(w.message) for w in caught]
    assert sum("BREAKS LABEL FIDELITY" in m for m in messages) == 2 and "no checkpoint passed" in messages[-1]
    assert result.selected_step is None and not (tmp_path / "run" / "generator.pt").exists()
    records = [json.loads(line) for line in (tmp_path / "run" / "fidelity.jsonl").read_text().splitlines()]
    assert [(r["step"], r["passed"], r["selected"]) for r in records[1:]] == [(2, False, False), (4, False, False)]
    with pytest.raises(FileNotFoundError, match="label-fidelity"):
        apply(tmp_path / "run", data / "sixteen", tmp_path / "out")


def test_bad_settings_are_refused(data, tmp_path):
    with pytest.raises(ValueError, match="crop_px=512"):
        train(data / "synthetic", data / "real", tmp_path / "r", steps=2, crop_px=512, device="cpu", config=FAST)
    with pytest.raises(ValueError, match="device"):
        train(data / "synthetic", data / "real", tmp_path / "r", steps=2, device="tpu", config=FAST)
    with pytest.raises(ValueError, match="steps"):
        train(data / "synthetic", data / "real", tmp_path / "r", steps=0, device="cpu", config=FAST)
    with pytest.raises(FileNotFoundError, match="annotations.json"):
        train(tmp_path, data / "real", tmp_path / "r", steps=2, device="cpu", config=FAST)
    with pytest.raises(ValueError, match="gan_loss"):
        RefinerConfig(gan_loss="wgan")
    with pytest.raises(ValueError, match="residual_max"):
        GeneratorConfig(residual_max=2.0)


# ------------------------------------------------------------------------------------------- apply
def test_apply_keeps_labels_and_annotations_byte_identical(data, trained, tmp_path):
    run, _ = trained
    ckpt = run / "generators" / "step_000060.pt"
    src = data / "sixteen"
    manifest = apply(run, src, tmp_path / "out", device="cpu", checkpoint=ckpt)
    out = tmp_path / "out"
    before, after = digest(src), digest(out)
    for name, sha in before.items():
        if name.startswith(("labels/", "records/")) or name in ("annotations.json", "run.json"):
            assert after[name] == sha, name
    images = sorted((src / "images").glob("*.png"))
    assert [p.name for p in images] == sorted(p.name for p in (out / "images").glob("*.png"))
    changed = 0
    for path in images:
        a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(out / "images" / path.name), cv2.IMREAD_UNCHANGED)
        assert b.dtype == a.dtype == np.uint16 and b.shape == a.shape
        changed += int((a != b).any())
    assert changed == len(images)
    assert check_dataset(out) == []
    from refiner.train import sha256_file

    assert manifest["refiner"]["checkpoint_sha256"] == sha256_file(ckpt)
    assert manifest["refiner"]["step"] == 60 and manifest["refiner"]["config"]["crop_px"] == 64
    assert json.loads((out / "manifest.json").read_text()) == json.loads(json.dumps(manifest))
    # Deterministic: the same call gives the same bytes; a non-empty output is refused without overwrite.
    with pytest.raises(FileExistsError, match="overwrite"):
        apply(run, src, out, device="cpu", checkpoint=ckpt)
    apply(run, src, out, device="cpu", checkpoint=ckpt, overwrite=True)
    assert digest(out) == after
    with pytest.raises(ValueError, match="input folder"):
        apply(run, src, src, device="cpu", checkpoint=ckpt, overwrite=True)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        apply(run, src, tmp_path / "x", checkpoint=run / "nope.pt")


@pytest.mark.slow
def test_cli_refine_train_then_apply(data, tmp_path):
    """The commands a user runs: a short training run, then apply; annotations and labels unchanged."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run, out = tmp_path / "run", tmp_path / "refined"
    train_cmd = [sys.executable, str(root / "cli.py"), "refine", "train", "--synthetic", str(data / "synthetic"),
                 "--real", str(data / "real"), "--out", str(run), "--steps", "4", "--crop-px", "64",
                 "--batch-size", "2", "--checkpoint-every", "2", "--sample-every", "2", "--device", "cpu"]
    proc = subprocess.run(train_cmd, capture_output=True, text=True, cwd=root, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "label fidelity passed" in proc.stderr + proc.stdout and (run / "generator.pt").is_file()
    proc = subprocess.run([sys.executable, str(root / "cli.py"), "refine", "apply", str(run), "--input",
                           str(data / "synthetic"), "--out", str(out), "--device", "cpu"],
                          capture_output=True, text=True, cwd=root, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (out / "annotations.json").read_bytes() == (data / "synthetic" / "annotations.json").read_bytes()
    proc = subprocess.run([sys.executable, str(root / "cli.py"), "refine", "apply", str(run), "--input",
                           str(data / "synthetic"), "--out", str(out)], capture_output=True, text=True, cwd=root,
                          env=env)
    assert proc.returncode == 2 and str(out) in proc.stderr  # an existing output is not overwritten silently
