"""Dataset records: one schema. Run-length (COCO RLE) masks, visible and amodal, and the COCO image and
annotation records of one simulated image.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import pycocotools.mask as mask_utils
from scipy import ndimage

from simulator.classes import class_name, instance_classes
from simulator.config import SimConfig, config_to_dict

if TYPE_CHECKING:  # annotations only: reading a dataset needs no renderer
    from simulator.pipeline import SimImage
    from simulator.render import RenderOut

CATEGORY = {"id": 1, "name": "particle", "supercategory": "particle"}
FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------------- RLE
def _runs_to_rles(inst: np.ndarray, start: np.ndarray, length: np.ndarray, n: int, height: int, width: int):
    """Column-major runs (sorted by instance, then start) -> n compressed COCO RLEs for instances 1..n."""
    total = height * width
    end = start + length
    first = np.r_[True, inst[1:] != inst[:-1]] if len(inst) else np.zeros(0, bool)
    prev_end = np.r_[0, end[:-1]] if len(inst) else np.zeros(0, np.int64)
    gap = start - np.where(first, 0, prev_end)
    pairs = np.stack([gap, length], axis=1).ravel()
    bounds = np.searchsorted(inst, np.arange(1, n + 2))
    objs = []
    for k in range(n):
        lo, hi = bounds[k], bounds[k + 1]
        counts = pairs[2 * lo : 2 * hi].tolist()
        tail = total - (int(end[hi - 1]) if hi > lo else 0)
        if tail > 0 or hi == lo:  # like pycocotools: no trailing empty run
            counts.append(tail)
        objs.append({"counts": counts, "size": [height, width]})
    rles = mask_utils.frPyObjects(objs, height, width) if objs else []
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def _runs_of_sorted(inst: np.ndarray, pos: np.ndarray):
    """(instance, position) pairs sorted by instance then position -> runs of consecutive positions."""
    if len(pos) == 0:
        return inst, pos, pos
    brk = np.r_[True, (inst[1:] != inst[:-1]) | (pos[1:] != pos[:-1] + 1)]
    starts = np.flatnonzero(brk)
    lengths = np.diff(np.r_[starts, len(pos)])
    return inst[starts], pos[starts], lengths


def visible_rles(instance_id: np.ndarray, n: int) -> list[dict]:
    """COCO RLE of every instance 1..n of an (H, W) label image (column-major, as COCO expects)."""
    height, width = instance_id.shape
    flat = instance_id.T.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.r_[0, change]
    lengths = np.diff(np.r_[starts, flat.size])
    values = flat[starts]
    fg = values > 0
    order = np.argsort(values[fg], kind="stable")
    return _runs_to_rles(values[fg][order], starts[fg][order], lengths[fg][order], n, height, width)


def amodal_rles(buffers: RenderOut) -> list[dict]:
    """COCO RLE of every primary's full projected (amodal) mask (the renderer lists them column-major)."""
    height, width = buffers.shape
    pix = buffers.amodal_pixel
    cm = (pix % width) * height + pix // width
    inst, start, length = _runs_of_sorted(buffers.amodal_instance, cm)
    return _runs_to_rles(inst, start, length, buffers.n_instances, height, width)


# --------------------------------------------------------------------------------------------------- records
def bbox_of_slices(slc) -> list[float]:
    rows, cols = slc
    return [float(cols.start), float(rows.start), float(cols.stop - cols.start), float(rows.stop - rows.start)]


def image_records(sim: SimImage, cfg: SimConfig, file_stem: str) -> tuple[dict, list[dict]]:
    """COCO image record and annotation records (ids assigned later) for one simulated image."""
    buffers, prim = sim.render, sim.scene.primaries
    height, width = buffers.shape
    n = buffers.n_instances
    visible_area = np.bincount(buffers.instance_id.ravel(), minlength=n + 1)
    amodal_area = buffers.amodal_area_px()
    vis_slices = ndimage.find_objects(buffers.instance_id, max_label=n)
    vis_rle = visible_rles(buffers.instance_id, n)
    amo_rle = amodal_rles(buffers)

    rows, cols = buffers.amodal_pixel // width, buffers.amodal_pixel % width
    present = np.flatnonzero(amodal_area[1:] > 0) + 1
    bounds = np.searchsorted(buffers.amodal_instance, present)
    if len(bounds):
        r0, r1 = np.minimum.reduceat(rows, bounds), np.maximum.reduceat(rows, bounds)
        c0, c1 = np.minimum.reduceat(cols, bounds), np.maximum.reduceat(cols, bounds)

    codes = instance_classes(visible_area[present], amodal_area[present], cfg.image.pixel_size_nm, cfg.classes)
    annotations, hidden = [], []
    for j, k in enumerate(present):
        p = k - 1
        border = bool(r0[j] == 0 or c0[j] == 0 or r1[j] == height - 1 or c1[j] == width - 1)
        record = {
            "instance_id": int(k),
            "category_id": CATEGORY["id"],
            "iscrowd": 0,
            "aggregate_id": int(prim.aggregate_id[p]),
            "diameter_nm": float(2 * prim.radius_nm[p]),
            "semi_axes_nm": [float(v) for v in prim.semi_axes_nm[p]],
            "centre_nm": [float(v) for v in prim.centre_nm[p]],
            "amodal_segmentation": amo_rle[p],
            "amodal_area": int(amodal_area[k]),
            "amodal_bbox": [float(c0[j]), float(r0[j]), float(c1[j] - c0[j] + 1), float(r1[j] - r0[j] + 1)],
            "occluded_fraction": float(1.0 - visible_area[k] / amodal_area[k]),
            "touches_border": border,
        }
        if visible_area[k] > 0:
            record["segmentation"] = vis_rle[p]
            record["area"] = int(visible_area[k])
            record["bbox"] = bbox_of_slices(vis_slices[p])
            record["particle_class"] = class_name(int(codes[j]))
            annotations.append(record)
        else:
            hidden.append(record)

    image = {
        "file_name": f"{file_stem}.png",
        "label_file": f"labels/{file_stem}.png" if cfg.output.label_maps else None,
        "width": width,
        "height": height,
        "pixel_size_nm": cfg.image.pixel_size_nm,
        "seed": sim.seed,
        "image_index": sim.index,
        "n_primaries": len(prim),
        "n_aggregates": sim.scene.n_aggregates,
        "n_forced_placements": sim.scene.n_forced_placements,
        "coverage": float((buffers.instance_id > 0).mean()),
        "hidden_particles": hidden,
        "sim_params": config_to_dict(cfg),
    }
    return image, annotations


def ignore_ids_from_annotations(
    annotations: Iterable[Mapping], *, max_occluded_fraction: float = 0.5
) -> frozenset[int]:
    """Instance ids of a semsynth image's annotations to ignore: cut by the border or mostly hidden.

    ``annotations``: the image's COCO records (``instance_id``, ``touches_border``, ``occluded_fraction``).
    A particle is ignored when it touches the border or its occluded fraction exceeds ``max_occluded_fraction``.
    """
    if not 0.0 <= max_occluded_fraction <= 1.0:
        raise ValueError(f"max_occluded_fraction must be in [0, 1], got {max_occluded_fraction!r}")
    return frozenset(
        int(a["instance_id"])
        for a in annotations
        if a.get("touches_border", False) or float(a.get("occluded_fraction", 0.0)) > max_occluded_fraction
    )


def counted_ignore_ids(annotations: Iterable[Mapping], *, measured_class: str | None = "full",
                       max_occluded_fraction: float = 0.5) -> frozenset[int]:
    """Instance ids to ignore when only the measured class counts.

    When the annotations carry ``particle_class`` (simulated datasets; real ones ingested with class masks), a
    particle counts when its class is ``measured_class`` and it does not touch the image border; everything
    else (other classes, unclassified instances, border particles) is an ignore region. ``measured_class=None``,
    or annotations without classes, fall back to ``ignore_ids_from_annotations`` (border or occluded beyond
    ``max_occluded_fraction``).
    """
    annotations = list(annotations)
    if measured_class is None or not any("particle_class" in a for a in annotations):
        return ignore_ids_from_annotations(annotations, max_occluded_fraction=max_occluded_fraction)
    return frozenset(
        int(a["instance_id"])
        for a in annotations
        if a.get("particle_class") != measured_class or a.get("touches_border", False)
    )
