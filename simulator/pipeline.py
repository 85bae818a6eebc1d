"""The one place that composes the stages and spawns the random streams.

Image ``index`` of a run with root ``seed`` draws from ``SeedSequence(seed, spawn_key=(index,))`` (identical to
``SeedSequence(seed).spawn(n)[index]``), split into one stream per stage, so an image depends only on
(config, seed, index): not on the number of images, the worker count or the order of work. Stages that take no
stream are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.config import SimConfig
from simulator.geometry import Scene, build_scene
from simulator.render import RenderOut, render
from simulator.shading import shade

STAGE_STREAMS = ("geometry", "shading", "instrument", "detector")


@dataclass(frozen=True, slots=True)
class SimImage:
    """One simulated image: the ideal signal in [0, 1], its render buffers (labels) and its scene."""

    signal: np.ndarray  # (H, W) float32 in [0, 1]
    render: RenderOut
    scene: Scene
    seed: int
    index: int


def stage_rngs(seed: int, index: int) -> dict[str, np.random.Generator]:
    """One independent generator per stage for image ``index``."""
    children = np.random.SeedSequence(seed, spawn_key=(index,)).spawn(len(STAGE_STREAMS))
    return {name: np.random.default_rng(child) for name, child in zip(STAGE_STREAMS, children, strict=True)}


def simulate_image(cfg: SimConfig, seed: int, index: int) -> SimImage:
    """geometry -> render -> shading for one image."""
    rngs = stage_rngs(seed, index)
    scene = build_scene(cfg.image, cfg.primary, cfg.aggregate, cfg.field, rngs["geometry"])
    buffers = render(scene.primaries, cfg.image.width_px, cfg.image.height_px, cfg.image.pixel_size_nm)
    signal = shade(buffers, cfg.shading)
    return SimImage(signal=signal, render=buffers, scene=scene, seed=seed, index=index)


def quantize(signal: np.ndarray, bit_depth: int) -> np.ndarray:
    """[0, 1] float -> uint8 or uint16 by rounding to the nearest level (values outside are clipped)."""
    top = (1 << bit_depth) - 1
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return np.rint(np.clip(signal, 0.0, 1.0) * top).astype(dtype)
