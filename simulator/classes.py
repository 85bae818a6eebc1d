"""Particle classes: which visible particles a size measurement counts.

BAM's annotators sort every manually segmented particle of the TiO2 reference images into three classes
(``classes/<id>_cm.tif``): fully visible particles (green; the ones a size measurement counts), small visible
fragments of particles mostly hidden behind others (red) and particles lying under others, partly hidden
(blue). semsynth gives simulated particles the same classes from their exact geometry, and real particles from
such class masks, so that real and synthetic images count the same particles.

From geometry (``classify``), with ``occluded = 1 - visible area / amodal area`` (the share of the particle's
projection that lies under other particles):

    full      occluded <= full_max_occluded
    fragment  occluded >  fragment_min_occluded, or visible area < fragment_max_area_nm2 (a small remnant)
    under     otherwise (partly hidden under others, still a sizeable visible part)

The thresholds are fitted to the annotators' choices (``fit_thresholds``: the class shares and the fragments'
visible areas of simulated images matched to those of labelled real images); docs/evaluation.md gives the
fitted values and the commands.

From a class mask (``classes_from_mask``): each instance of a label map takes the class painted on the
majority of its pixels; instances with no painted pixel (outside the painted rows, say) get no class.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from simulator.config import ClassesConfig
from simulator.io.errors import UserError

CLASSES = ("full", "fragment", "under")  # code 1, 2, 3 in class maps; 0 = no class
MEASURED_CLASS = "full"
# BAM's colours (RGB) in the reference set's class masks
BAM_COLOURS: dict[str, tuple[int, int, int]] = {"full": (0, 255, 0), "fragment": (255, 0, 0), "under": (0, 0, 255)}


def classify(occluded_fraction: np.ndarray, visible_area_nm2: np.ndarray, cfg: ClassesConfig) -> np.ndarray:
    """Class codes (1 full, 2 fragment, 3 under) of particles from their occluded fraction and visible area.

    occluded_fraction : (N,) in [0, 1]; visible_area_nm2 : (N,) >= 0. Returns (N,) uint8.
    """
    occ = np.asarray(occluded_fraction, float)
    area = np.asarray(visible_area_nm2, float)
    if occ.shape != area.shape:
        raise ValueError(f"occluded_fraction and visible_area_nm2 must have one shape, got {occ.shape}, {area.shape}")
    code = np.full(occ.shape, 3, np.uint8)
    fragment = (occ > cfg.fragment_min_occluded) | (area < cfg.fragment_max_area_nm2)
    code[fragment] = 2
    code[occ <= cfg.full_max_occluded] = 1  # a fully visible particle is never a fragment, however small
    return code


def instance_classes(visible_area_px: np.ndarray, amodal_area_px: np.ndarray, pixel_size_nm: float,
                     cfg: ClassesConfig) -> np.ndarray:
    """Class codes of rendered particles from their visible and amodal (projected) pixel counts."""
    visible = np.asarray(visible_area_px, float)
    amodal = np.asarray(amodal_area_px, float)
    if np.any(amodal <= 0):
        raise ValueError("every particle needs an amodal area > 0 (expected particles that reach the image)")
    return classify(1.0 - visible / amodal, visible * pixel_size_nm**2, cfg)


def class_name(code: int) -> str | None:
    return CLASSES[code - 1] if 1 <= code <= len(CLASSES) else None


class ClassMaskError(ValueError):
    """A class mask that cannot be read as a class map: ``what`` is wrong, ``expected`` instead."""

    what: str
    expected: str

    @classmethod
    def of(cls, what: str, expected: str) -> ClassMaskError:
        err = cls(f"{what} (expected {expected})")
        err.what, err.expected = what, expected
        return err


class ClassMaskFileError(UserError, ClassMaskError):
    """A class mask file that cannot be used: ``error: <class mask file>: <what> (expected ...)``, exit 2."""

    @classmethod
    def naming(cls, path, err: ClassMaskError) -> ClassMaskFileError:
        what, expected = getattr(err, "what", str(err)), getattr(err, "expected", "an RGB class mask")
        return cls(path, what, expected)


def class_map_from_rgb(rgb: np.ndarray, colours: Mapping[str, tuple[int, int, int]] = BAM_COLOURS,
                       *, tolerance: int = 60) -> np.ndarray:
    """(H, W) uint8 class codes (0 = none) of an RGB class mask; black is background.

    A pixel takes the class whose colour lies within ``tolerance`` (max abs channel difference) of it; a pixel
    near no colour and not near black is an error (a colour the map does not name), as are colours that lie
    within ``tolerance`` of each other (the map cannot tell them apart).
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ClassMaskError.of(f"class mask must be an RGB image, got shape {rgb.shape}", "(H, W, 3)")
    unknown = set(colours) - set(CLASSES)
    if unknown:
        raise ClassMaskError.of(f"unknown class names {sorted(unknown)}", f"some of {list(CLASSES)}")
    named = [(name, np.asarray(colours[name], np.int16)) for name in CLASSES if name in colours]
    anchors = [np.zeros(3, np.int16)] + [c for _, c in named]
    for i in range(len(anchors)):
        for j in range(i + 1, len(anchors)):
            if np.abs(anchors[i] - anchors[j]).max() <= 2 * tolerance:
                raise ClassMaskError.of(
                    f"class colours {anchors[i].tolist()} and {anchors[j].tolist()} are too close to tell apart",
                    f"colours, black included, more than {2 * tolerance} apart in some channel")
    pix = rgb[..., :3].astype(np.int16)
    codes = np.zeros(pix.shape[:2], np.uint8)
    matched = np.abs(pix).max(-1) <= tolerance  # black
    for name, colour in named:
        near = np.abs(pix - colour).max(-1) <= tolerance
        codes[near] = CLASSES.index(name) + 1
        matched |= near
    if not matched.all():
        bad = np.argwhere(~matched)
        r, c = bad[0]
        raise ClassMaskError.of(
            f"{len(bad)} pixels have a colour the class map does not name, first {pix[r, c].tolist()} at row {r}, "
            f"column {c}", f"black or one of {({n: list(colours[n]) for n, _ in named})}")
    return codes


def classes_from_mask(labels: np.ndarray, class_map: np.ndarray) -> dict[int, int]:
    """Instance id -> class code by majority vote of its pixels in ``class_map`` (rows beyond the class map's
    height count as unpainted); instances with no painted pixel are left out."""
    labels = np.asarray(labels)
    rows = min(labels.shape[0], class_map.shape[0])
    if class_map.shape[1] != labels.shape[1]:
        raise ClassMaskError.of(
            f"class mask is {class_map.shape[1]} px wide, the label map {labels.shape[1]} px", "the same width")
    lab = labels[:rows].ravel().astype(np.int64)
    cls = class_map[:rows].ravel().astype(np.int64)
    n = int(labels.max()) + 1 if labels.size else 1
    votes = np.bincount(lab * 4 + cls, minlength=n * 4).reshape(n, 4)
    votes[:, 0] = 0
    winner = votes.argmax(1)
    ids = np.flatnonzero(votes.sum(1) > 0)
    return {int(i): int(winner[i]) for i in ids if i > 0}


def fit_thresholds(occluded_fraction: np.ndarray, visible_area_nm2: np.ndarray, target_shares: Mapping[str, float],
                   target_fragment_area_nm2: float) -> ClassesConfig:
    """Thresholds that give simulated particles the annotators' class shares and fragment size.

    occluded_fraction, visible_area_nm2 : every visible simulated particle (counted in the same rows as the real
    ones). target_shares : share of each class among classified real particles; target_fragment_area_nm2 :
    median visible area of real fragments. Grid search: the share of ``full`` sets ``full_max_occluded`` (a
    quantile), then (``fragment_min_occluded``, ``fragment_max_area_nm2``) minimise the squared error of the
    fragment share and of the log median fragment area.
    """
    occ = np.asarray(occluded_fraction, float)
    area = np.asarray(visible_area_nm2, float)
    if occ.size == 0:
        raise ValueError("no simulated particles to fit class thresholds on (expected at least one)")
    full_share = float(target_shares["full"])
    t_full = float(np.quantile(occ, min(max(full_share, 0.0), 1.0)))
    rest = occ > t_full
    best = None
    for t_frag in np.linspace(t_full, 1.0, 41):
        for a_max in np.concatenate([[0.0], np.geomspace(500.0, 60000.0, 40)]):
            frag = rest & ((occ > t_frag) | (area < a_max))
            share = frag.mean()
            if not frag.any():
                continue
            med = float(np.median(area[frag]))
            err = (share - target_shares["fragment"]) ** 2 + 0.05 * np.log(med / target_fragment_area_nm2) ** 2
            if best is None or err < best[0]:
                best = (err, float(t_frag), float(a_max))
    if best is None:
        return ClassesConfig(full_max_occluded=t_full, fragment_min_occluded=1.0, fragment_max_area_nm2=0.0)
    return ClassesConfig(full_max_occluded=round(t_full, 4), fragment_min_occluded=round(best[1], 4),
                         fragment_max_area_nm2=round(best[2], 1))
