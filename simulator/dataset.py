"""Dataset writer: the only simulator I/O. Layout and fields are documented in docs/dataset-format.md.

    DIR/images/000000.png     8- or 16-bit grayscale image
    DIR/labels/000000.png     16-bit visible instance ids (0 = substrate; value = annotation "instance_id")
    DIR/annotations.json      COCO instances (visible masks as RLE, plus amodal masks and true sizes)
    DIR/manifest.json         resolved config, its hash, seed, package versions, counts

Every file is written to a temporary name in the same folder and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pycocotools.mask as mask_utils
from scipy import ndimage

from simulator.config import SimConfig, config_hash, config_to_dict
from simulator.pipeline import SimImage, quantize, simulate_image  # noqa: F401  (SimImage re-exported)
from simulator.render import RenderOut

CATEGORY = {"id": 1, "name": "particle", "supercategory": "particle"}
FORMAT_VERSION = 1
_PACKAGES = ("semsynth", "numpy", "scipy", "opencv-python-headless", "pycocotools")


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
def _bbox_of_slices(slc) -> list[float]:
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
            record["bbox"] = _bbox_of_slices(vis_slices[p])
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


# --------------------------------------------------------------------------------------------------- files
def _file_mode() -> int:
    """Permissions of an ordinary new file under the current umask (mkstemp alone would give 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, flush, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any, *, compact: bool = False) -> None:
    """JSON written atomically; ``compact`` drops the indentation (3x faster for large annotation files)."""
    text = json.dumps(obj, separators=(",", ":")) if compact else json.dumps(obj, indent=1)
    atomic_write_bytes(path, (text + "\n").encode())


def encode_png(array: np.ndarray, *, labels: bool = False) -> bytes:
    """Lossless PNG. Images are noisy (Huffman-only deflate is as small and faster); label maps are flat
    regions (run-length deflate)."""
    strategy = cv2.IMWRITE_PNG_STRATEGY_RLE if labels else cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, strategy])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _generate_one(args: tuple[SimConfig, int, int, str]) -> tuple[dict, list[dict]]:
    cfg, seed, index, out_dir = args
    sim = simulate_image(cfg, seed, index)
    stem = f"{index:06d}"
    root = Path(out_dir)
    atomic_write_bytes(root / "images" / f"{stem}.png", encode_png(quantize(sim.image, cfg.image.bit_depth)))
    if cfg.output.label_maps:
        if sim.render.n_instances > np.iinfo(np.uint16).max:
            raise ValueError(f"{sim.render.n_instances} primaries do not fit a 16-bit label map")
        atomic_write_bytes(
            root / "labels" / f"{stem}.png", encode_png(sim.render.instance_id.astype(np.uint16), labels=True)
        )
    return image_records(sim, cfg, stem)


def package_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def prepare_output_dir(out_dir: Path, overwrite: bool) -> None:
    """Create ``out_dir``; refuse a non-empty one unless ``overwrite`` and it holds a semsynth dataset."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} is not empty; pass --overwrite to replace the dataset in it")
        if not (out_dir / "manifest.json").exists():
            raise FileExistsError(
                f"{out_dir} is not empty and holds no semsynth dataset (no manifest.json); "
                "refusing to delete it: choose another folder or empty it yourself"
            )
        shutil.rmtree(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "labels").mkdir(exist_ok=True)


def _single_threaded() -> None:
    """Worker processes share the cores: OpenCV's own thread pool would only oversubscribe them.

    Workers are spawned, not forked: forking a parent whose OpenCV, BLAS or numba threads hold locks can
    deadlock the child."""
    cv2.setNumThreads(1)


def _results(jobs: list, workers: int) -> Iterator[tuple[dict, list[dict]]]:
    if workers <= 1:
        yield from map(_generate_one, jobs)
        return
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=get_context("spawn"), initializer=_single_threaded
    ) as pool:
        yield from pool.map(_generate_one, jobs, chunksize=1)


def write_dataset(
    out_dir: str | Path,
    cfg: SimConfig,
    *,
    n_images: int,
    seed: int = 0,
    workers: int = 1,
    overwrite: bool = False,
    on_image: Callable[[], None] | None = None,
) -> dict:
    """Simulate ``n_images`` images and write them as a dataset; returns the manifest.

    The bytes written depend only on (cfg, seed, n_images), never on ``workers``.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    out_dir = Path(out_dir)
    prepare_output_dir(out_dir, overwrite)
    jobs = [(cfg, seed, i, str(out_dir)) for i in range(n_images)]
    images, annotations, n_hidden = [], [], 0
    for index, (image, anns) in enumerate(_results(jobs, workers)):
        image["id"] = index + 1
        for ann in anns:
            ann["id"] = len(annotations) + 1
            ann["image_id"] = image["id"]
            annotations.append(ann)
        for ann in image["hidden_particles"]:
            ann["image_id"] = image["id"]
        n_hidden += len(image["hidden_particles"])
        images.append(image)
        if on_image is not None:
            on_image()
    coco = {
        "info": {"description": "semsynth synthetic SEM dataset", "format_version": FORMAT_VERSION},
        "licenses": [],
        "categories": [CATEGORY],
        "images": images,
        "annotations": annotations,
    }
    atomic_write_json(out_dir / "annotations.json", coco, compact=True)
    manifest = {
        "generator": "semsynth",
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "n_images": n_images,
        "config": config_to_dict(cfg),
        "config_hash": config_hash(cfg),
        "packages": package_versions(),
        "counts": {"images": len(images), "annotations": len(annotations), "hidden_particles": n_hidden},
    }
    atomic_write_json(out_dir / "manifest.json", manifest)
    return manifest
