"""Label maps -> the model's input buffers, the same function for real masks and simulated label maps.

    labels (H, W) int ids -> ``separate_touching`` (1-px background lines between touching instances, as the
    real masks draw them) -> ``dome_heights`` (per instance: a spherical cap over the distance to its outline,
    scaled by its inscribed radius) -> normals -> simulator ``shade`` (SE yield, no facets, no random substrate)
    -> ``probe_blur`` -> fixed affine to the normalised view (substrate 0.25, flat particle 0.75)
    + foreground, outline, separation, signed distance to the boundary, edge gate.

No detector noise and nothing random: noise is an input channel of the model instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

BUFFER_NAMES = ("render", "foreground", "outline", "separation", "distance", "gate")
N_BUFFERS = len(BUFFER_NAMES)
DISTANCE_SCALE_PX = 5.0  # signed distance enters as tanh(d / DISTANCE_SCALE_PX)
GATE_DEPTH = 0.5  # the correction is scaled by 1 - GATE_DEPTH * exp(-d^2 / (2 GATE_SIGMA_PX^2)) at an edge
GATE_SIGMA_PX = 1.0
RENDER_LOW, RENDER_HIGH = 0.25, 0.75  # the levels ``eval.realism.normalized`` maps the 1st/99th percentiles to


def separate_touching(labels: np.ndarray) -> np.ndarray:
    """(H, W) int32: instance pixels whose right or lower 4-neighbour belongs to another instance set to 0.

    Real masks (4-connected components of a binary mask) are unchanged; a simulated label map gets the 1-px
    background separations the real masks draw between touching particles.
    """
    lab = np.asarray(labels).astype(np.int32, copy=True)
    if lab.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {lab.shape}")
    cut = np.zeros(lab.shape, bool)
    down = (lab[:-1] > 0) & (lab[1:] > 0) & (lab[:-1] != lab[1:])
    right = (lab[:, :-1] > 0) & (lab[:, 1:] > 0) & (lab[:, :-1] != lab[:, 1:])
    cut[:-1] |= down
    cut[:, :-1] |= right
    lab[cut] = 0
    return lab


def instance_pieces(labels: np.ndarray) -> np.ndarray:
    """(H, W) int32: the 4-connected components of the foreground of separated labels (no two ids touch along
    an edge after ``separate_touching``, so every piece is one instance's)."""
    _, pieces = cv2.connectedComponents((np.asarray(labels) > 0).astype(np.uint8), connectivity=4)
    return pieces.astype(np.int32)


def separation_lines(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: background pixels with two or more instance ids among their 8 neighbours."""
    lab = np.asarray(labels)
    big = np.iinfo(np.int32).max
    lo = ndimage.grey_erosion(np.where(lab > 0, lab, big), size=3, mode="nearest")
    hi = ndimage.grey_dilation(lab, size=3, mode="nearest")
    return (lab == 0) & (lo < big) & (hi > lo)


def dome_heights(labels: np.ndarray, pixel_size_nm: float) -> np.ndarray:
    """(H, W) float32 heights (nm): per instance a spherical cap h = R sqrt(1 - (1 - d / R)^2), d the distance to
    the instance's outline and R its inscribed radius (largest d), both in nm; 0 on the background."""
    lab = np.asarray(labels)
    fg = (lab > 0).astype(np.uint8)
    if not fg.any():
        return np.zeros(lab.shape, np.float32)
    d = cv2.distanceTransform(np.pad(fg, 1, constant_values=1), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    n = int(lab.max())
    radius = np.zeros(n + 1, np.float32)
    radius[1:] = ndimage.maximum(d, lab, index=np.arange(1, n + 1))
    r = radius[lab]
    t = np.where(lab > 0, np.clip(d / np.maximum(r, 1e-6), 0.0, 1.0), 0.0)
    return (r * np.sqrt(1.0 - (1.0 - t) ** 2) * pixel_size_nm).astype(np.float32)


def height_normals(height_nm: np.ndarray, pixel_size_nm: float) -> np.ndarray:
    """(H, W, 3) float32 unit normals (x = column, y = row, z = up) of a height field."""
    gy, gx = np.gradient(height_nm.astype(np.float64), pixel_size_nm)
    n = np.stack([-gx, -gy, np.ones_like(gx)], axis=-1)
    return (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32)


def physics_render(labels: np.ndarray, pixel_size_nm: float, shading, probe) -> np.ndarray:
    """(H, W) float32 noise-free render of separated labels in the normalised view: the simulator's ``shade``
    (with ``shading``, a ``ShadingConfig``; no facets, substrate texture or residue: those are random) on dome
    heights and their normals, then ``probe_blur`` (``probe``, a ``ProbeConfig``), then the fixed affine that
    maps the substrate yield to 0.25 and a flat particle's yield to 0.75."""
    from simulator.instrument.probe import probe_blur  # lazy: only the render needs the simulator
    from simulator.render import RenderOut
    from simulator.shading import shade

    lab = np.asarray(labels).astype(np.int32)
    height = dome_heights(lab, pixel_size_nm)
    buffers = RenderOut(instance_id=lab, height_nm=height, normal=height_normals(height, pixel_size_nm),
                        amodal_instance=np.zeros(0, np.int32), amodal_pixel=np.zeros(0, np.int64),
                        n_instances=int(lab.max()))
    signal = probe_blur(shade(buffers, shading, pixel_size_nm), probe, pixel_size_nm)
    lo, hi = shading.substrate_yield, shading.particle_yield
    return (RENDER_LOW + (signal - lo) / (hi - lo) * (RENDER_HIGH - RENDER_LOW)).astype(np.float32)


def label_buffers(labels: np.ndarray) -> np.ndarray:
    """(5, H, W) float32 label buffers of separated labels: foreground, outline (instance pixels next to another
    id), separation lines, tanh of the signed distance to the boundary (px, > 0 inside), edge gate."""
    lab = np.asarray(labels)
    fg = lab > 0
    inner = np.zeros(lab.shape, bool)
    dy = lab[1:] != lab[:-1]
    dx = lab[:, 1:] != lab[:, :-1]
    inner[1:] |= dy
    inner[:-1] |= dy
    inner[:, 1:] |= dx
    inner[:, :-1] |= dx
    outline = inner & fg
    sep = separation_lines(lab)
    fg8 = fg.astype(np.uint8)
    d_in = cv2.distanceTransform(np.pad(fg8, 1, constant_values=1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    d_out = cv2.distanceTransform(np.pad(1 - fg8, 1, constant_values=1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    signed = np.where(fg, d_in, -d_out)
    edge = outline | sep
    d_edge = cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, 5) if edge.any() else np.full(lab.shape, 1e3)
    gate = 1.0 - GATE_DEPTH * np.exp(-(d_edge.astype(np.float64) ** 2) / (2 * GATE_SIGMA_PX**2))
    return np.stack([fg, outline, sep, np.tanh(signed / DISTANCE_SCALE_PX), gate]).astype(np.float32)


@dataclass(frozen=True, slots=True)
class RenderSettings:
    """The simulator stage configs the render uses (``ShadingConfig``, ``ProbeConfig``)."""

    shading: object
    probe: object


def render_settings(config_path) -> RenderSettings:
    """Shading and probe configs of a simulator config file (TOML)."""
    from simulator.config import load_config

    cfg = load_config(config_path)
    return RenderSettings(cfg.shading, cfg.probe)


def model_inputs(labels: np.ndarray, pixel_size_nm: float, settings: RenderSettings) -> np.ndarray:
    """(N_BUFFERS, H, W) float32: the render and label buffers of a label map (real mask or simulated), after
    ``separate_touching`` and renumbering as 4-connected pieces (what a real mask's instances are), so the inputs
    of a real mask and of a simulated label map of the same shapes are identical."""
    sep = instance_pieces(separate_touching(labels))
    render = physics_render(sep, pixel_size_nm, settings.shading, settings.probe)
    return np.concatenate([render[None], label_buffers(sep)])
