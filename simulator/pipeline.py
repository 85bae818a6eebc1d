"""The one place that composes the stages and spawns the random streams.

    geometry -> scan offsets -> render (labels) -> shading (SE yield, collection) -> charging -> probe blur
             -> detector (dose, noise, gain) [-> info bar] -> quantize

Image ``index`` of a run with root ``seed`` draws from ``SeedSequence(seed, spawn_key=(index,))`` (identical to
``SeedSequence(seed).spawn(n)[index]``), split into one stream per stage, so an image depends only on
(config, seed, index): not on the number of images, the worker count or the order of work. Changing a noise
or blur parameter leaves the geometry stream, hence the geometry, untouched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from simulator.config import SimConfig
from simulator.detector import detect, info_bar
from simulator.geometry.scene import Scene, build_scene
from simulator.instrument.charging import charge
from simulator.instrument.probe import probe_blur
from simulator.instrument.scan import scan_offsets_px
from simulator.io.files import quantize
from simulator.render import RenderOut, render
from simulator.shading import facet_normals, particle_gains, shade
from simulator.specimen import residue_rims, substrate_dots, substrate_texture

# append only: a new stream leaves the others (hence every existing image) unchanged
STAGE_STREAMS = ("geometry", "shading", "instrument", "detector", "residue", "particle_yield", "substrate_dots")


@dataclass(frozen=True, slots=True)
class SimImage:
    """One simulated image: the output level in [0, 1] before the ADC, the ideal signal, the render buffers
    (labels) and the scene. With an info bar, ``image`` and the label buffers have its extra rows (label 0)."""

    image: np.ndarray  # (H', W) float32 output level (clipped and quantised by ``quantize``)
    ideal: np.ndarray  # (H, W) float32 mean SE per primary electron, before charging, blur and noise
    render: RenderOut
    scene: Scene
    seed: int
    index: int


def stage_rngs(seed: int, index: int) -> dict[str, np.random.Generator]:
    """One independent generator per stage for image ``index``."""
    children = np.random.SeedSequence(seed, spawn_key=(index,)).spawn(len(STAGE_STREAMS))
    return {name: np.random.default_rng(child) for name, child in zip(STAGE_STREAMS, children, strict=True)}


def simulate_image(cfg: SimConfig, seed: int, index: int, timings: dict[str, float] | None = None) -> SimImage:
    """All stages for one image. If ``timings`` is given, each stage's wall time (s) is added to it."""
    clock = _StageClock(timings)
    rngs = stage_rngs(seed, index)
    pixel_nm = cfg.image.pixel_size_nm
    shape = (cfg.image.height_px, cfg.image.width_px)
    scene = clock("geometry", build_scene, cfg.image, cfg.primary, cfg.aggregate, cfg.field, rngs["geometry"])
    offsets = clock("scan distortion", scan_offsets_px, shape, pixel_nm, cfg.scan, rngs["instrument"])
    buffers = clock("render", render, scene.primaries, cfg.image.width_px, cfg.image.height_px, pixel_nm, offsets)
    texture = None
    if cfg.shading.substrate_texture > 0:
        texture = clock("substrate texture", substrate_texture, shape, pixel_nm, cfg.shading, rngs["shading"])
    rims = None
    if cfg.shading.residue_rims > 0:
        rims = clock("substrate residue", residue_rims, shape, pixel_nm, cfg.shading, rngs["residue"])
    dots = None
    if cfg.shading.substrate_dots_per_um2 > 0:
        dots = clock("substrate dots", substrate_dots, shape, pixel_nm, cfg.shading, rngs["substrate_dots"])
    normal = clock(
        "facets", facet_normals, buffers, cfg.shading.facets, cfg.shading.facet_count, rngs["shading"]
    )
    sh = cfg.shading
    gains = particle_gains(buffers.n_instances, sh.particle_yield_spread, sh.particle_yield_tilt,
                           rngs["particle_yield"])
    ideal = clock("SE yield + collection", shade, buffers, cfg.shading, pixel_nm, texture, normal, rims, gains,
                  dots)
    signal = clock("charging", charge, ideal, buffers, scene, cfg.charging, pixel_nm)
    signal = clock("probe blur", probe_blur, signal, cfg.probe, pixel_nm)
    image = clock("detector noise", detect, signal, cfg.detector, cfg.scan.dwell_time_us, rngs["detector"])
    if cfg.detector.info_bar:
        image, buffers = _with_info_bar(image, buffers, cfg)
    return SimImage(image=image, ideal=ideal, render=buffers, scene=scene, seed=seed, index=index)


class _StageClock:
    """Calls a stage and, when asked to, adds its wall time to a dict under the stage's name."""

    def __init__(self, timings: dict[str, float] | None):
        self.timings = timings

    def __call__(self, name, fn, *args):
        if self.timings is None:
            return fn(*args)
        t0 = time.perf_counter()
        out = fn(*args)
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
        return out


def _with_info_bar(image: np.ndarray, buffers: RenderOut, cfg: SimConfig) -> tuple[np.ndarray, RenderOut]:
    """Append an instrument data bar below the image; its rows are substrate-free background with label 0."""
    rows = cfg.detector.info_bar_height_px
    width = cfg.image.width_px
    field_um = width * cfg.image.pixel_size_nm / 1000
    bar_nm = 200 if field_um < 20 else 2000
    lines = [
        f"semsynth   EHT = {cfg.shading.beam_energy_keV:.2f} kV   Width = {field_um:.3f} um",
        f"Signal = {'InLens' if cfg.shading.et_fraction < 0.5 else 'SE2'}   Pixel = {cfg.image.pixel_size_nm:.3f} nm",
    ]
    bar = info_bar(width, rows, lines, round(bar_nm / cfg.image.pixel_size_nm), f"{bar_nm} nm")
    pad = ((0, rows), (0, 0))
    padded = replace(
        buffers,
        instance_id=np.pad(buffers.instance_id, pad),
        height_nm=np.pad(buffers.height_nm, pad),
        normal=np.pad(buffers.normal, (*pad, (0, 0))),
    )
    padded.normal[-rows:, :, 2] = 1.0
    return np.vstack([image, bar]), padded


def as_written(sim: SimImage, cfg: SimConfig) -> np.ndarray:
    """The image exactly as written to disk (quantised), scaled to [0, 1], without the info bar rows."""
    top = (1 << cfg.image.bit_depth) - 1
    return quantize(sim.image, cfg.image.bit_depth)[: cfg.image.height_px].astype(np.float32) / top
