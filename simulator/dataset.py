"""Dataset writer: the only simulator I/O. Layout and fields are documented in docs/dataset-format.md.

    DIR/images/000000.png     8- or 16-bit grayscale image
    DIR/labels/000000.png     16-bit visible instance ids (0 = substrate; value = annotation "instance_id")
    DIR/records/000000.json   the image's COCO records (written last, after its PNGs: the unit of resumption)
    DIR/run.json              the plan (config, sweep, seed, image count, hash), written first
    DIR/annotations.json      COCO instances (visible masks as RLE, plus amodal masks and true sizes),
                              streamed from the records once all images exist
    DIR/manifest.json         resolved config, its hash, seed, package versions, counts (written last)

Every file is written to a temporary name in the same folder and renamed, so a reader never sees half a file;
after a crash, ``resume=True`` deletes leftover temporary files and makes only the images without a record.
Memory does not grow with the number of images: records are merged one at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
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
from simulator.sweep import SweepSpec, expand

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


def read_png(path: Path) -> tuple[np.ndarray, int]:
    """(H, W) float32 in [0, 1] and the bit depth (8 or 16) of a grayscale PNG."""
    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise FileNotFoundError(f"{path}: missing or not a readable image")
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: expected an 8- or 16-bit grayscale image, got {pixels.dtype} {pixels.shape}")
    bits = 8 if pixels.dtype == np.uint8 else 16
    return pixels.astype(np.float32) / float((1 << bits) - 1), bits


def write_png(path: Path, array: np.ndarray, *, labels: bool = False) -> None:
    """Encode (see ``encode_png``) and write atomically."""
    atomic_write_bytes(path, encode_png(array, labels=labels))


def encode_png(array: np.ndarray, *, labels: bool = False) -> bytes:
    """Lossless PNG, tuned for speed: no row filters (they cost half the encoding time and do not shrink noisy
    images); Huffman-only deflate for images (noise has no long matches), run-length deflate for label maps."""
    strategy = cv2.IMWRITE_PNG_STRATEGY_RLE if labels else cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, strategy,
              cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
    ok, buf = cv2.imencode(".png", array, params)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


@dataclass(frozen=True, slots=True)
class Job:
    """One image to make: image ``index`` of the dataset draws from random stream ``stream`` (the replicate)."""

    cfg: SimConfig
    seed: int
    index: int
    stream: int
    out_dir: str
    sweep_point: dict | None = None


def record_path(out_dir: Path, index: int) -> Path:
    return out_dir / "records" / f"{index:06d}.json"


def generate_one(job: Job) -> int:
    """Simulate one image and write its files; its record is written last, so a record means a whole image."""
    cfg = job.cfg
    sim = simulate_image(cfg, job.seed, job.stream)
    stem = f"{job.index:06d}"
    root = Path(job.out_dir)
    write_png(root / "images" / f"{stem}.png", quantize(sim.image, cfg.image.bit_depth))
    if cfg.output.label_maps:
        if sim.render.n_instances > np.iinfo(np.uint16).max:
            raise ValueError(f"{sim.render.n_instances} primaries do not fit a 16-bit label map")
        write_png(root / "labels" / f"{stem}.png", sim.render.instance_id.astype(np.uint16), labels=True)
    image, annotations = image_records(sim, cfg, stem)
    image["image_index"] = job.index
    image["stream"] = job.stream
    if job.sweep_point is not None:
        image["sweep_point"] = job.sweep_point
    atomic_write_json(record_path(root, job.index), {"image": image, "annotations": annotations}, compact=True)
    return job.index


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
            raise FileExistsError(
                f"{out_dir} is not empty; pass --overwrite to replace the dataset in it, or --resume to finish it"
            )
        if not (out_dir / "manifest.json").exists() and not (out_dir / "run.json").exists():
            raise FileExistsError(
                f"{out_dir} is not empty and holds no semsynth dataset (no manifest.json or run.json); "
                "refusing to delete it: choose another folder or empty it yourself"
            )
        shutil.rmtree(out_dir)
    for sub in ("images", "labels", "records"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)


def _remove_partial_files(out_dir: Path) -> int:
    """Delete temporary files left by an interrupted run (a rename never happened); returns how many."""
    stray = [p for sub in ("", "images", "labels", "records") for p in (out_dir / sub).glob(".*.tmp")]
    for path in stray:
        path.unlink()
    return len(stray)


def _single_threaded() -> None:
    """Worker processes share the cores: OpenCV's own thread pool would only oversubscribe them.

    Workers are spawned, not forked: forking a parent whose OpenCV, BLAS or numba threads hold locks can
    deadlock the child."""
    cv2.setNumThreads(1)


def _run_jobs(jobs: list[Job], workers: int, executor: str, scheduler: str | None) -> Iterator[int]:
    """Run the jobs and yield each finished image index (in completion order: the files decide the bytes)."""
    if executor == "dask":
        from distributed import Client, as_completed

        with Client(scheduler) as client:
            futures = client.map(generate_one, jobs, pure=False)
            for future in as_completed(futures):
                yield future.result()
        return
    if workers <= 1:
        yield from map(generate_one, jobs)
        return
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=get_context("spawn"), initializer=_single_threaded
    ) as pool:
        yield from pool.map(generate_one, jobs, chunksize=1)


def merge_records(out_dir: Path, n_images: int) -> dict[str, int]:
    """Stream every record into annotations.json (one record in memory at a time); ids follow image order.

    One pass: image entries go to annotations.json's temporary file, annotation entries to a second temporary
    file that is appended at the end.
    """
    counts = {"images": n_images, "annotations": 0, "hidden_particles": 0}
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".annotations.json.", suffix=".tmp")
    fd_anns, tmp_anns = tempfile.mkstemp(dir=out_dir, prefix=".annotations-list.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh, os.fdopen(fd_anns, "w+", encoding="utf-8") as anns:
            info = {"description": "semsynth synthetic SEM dataset", "format_version": FORMAT_VERSION}
            fh.write('{"info":' + json.dumps(info, separators=(",", ":")))
            fh.write(',"licenses":[],"categories":' + json.dumps([CATEGORY], separators=(",", ":")))
            fh.write(',"images":[')
            for index in range(n_images):
                record = json.loads(record_path(out_dir, index).read_text())
                image = record["image"]
                image["id"] = index + 1
                for hidden in image.get("hidden_particles", []):
                    hidden["image_id"] = image["id"]
                counts["hidden_particles"] += len(image.get("hidden_particles", []))
                fh.write(("," if index else "") + json.dumps(image, separators=(",", ":")))
                for ann in record["annotations"]:
                    ann["id"] = counts["annotations"] + 1
                    ann["image_id"] = image["id"]
                    anns.write(("," if counts["annotations"] else "") + json.dumps(ann, separators=(",", ":")))
                    counts["annotations"] += 1
            fh.write('],"annotations":[')
            anns.seek(0)
            shutil.copyfileobj(anns, fh)
            fh.write("]}\n")
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, out_dir / "annotations.json")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        Path(tmp_anns).unlink(missing_ok=True)
    return counts


def _plan(cfg: SimConfig, seed: int, n_images: int, sweep: SweepSpec | None) -> dict:
    """What a run will produce: resuming is allowed only into a folder with the same plan."""
    plan = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "n_images": n_images,
        "config": config_to_dict(cfg),
        "sweep": None if sweep is None else asdict(sweep),
    }
    plan["plan_hash"] = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
    return plan


def plan_jobs(
    cfg: SimConfig, seed: int, out_dir: Path, n_images: int | None, sweep: SweepSpec | None
) -> tuple[list[Job], int]:
    """All jobs of a run: n plain images, or every (point, replicate) of a sweep (point-major order)."""
    if sweep is None:
        if n_images is None or n_images < 1:
            raise ValueError(f"n_images must be >= 1, got {n_images!r}")
        return [Job(cfg, seed, i, i, str(out_dir)) for i in range(n_images)], n_images
    points = expand(sweep, cfg)
    total = len(points) * sweep.images_per_point
    if n_images is not None and n_images != total:
        raise ValueError(
            f"the sweep has {len(points)} points x {sweep.images_per_point} images = {total} images; "
            f"--n {n_images} disagrees (leave --n out for sweeps)"
        )
    jobs = [
        Job(point.config, seed, point.id * sweep.images_per_point + r, r, str(out_dir), point.record(r))
        for point in points
        for r in range(sweep.images_per_point)
    ]
    return jobs, total


def write_dataset(
    out_dir: str | Path,
    cfg: SimConfig,
    *,
    n_images: int | None = None,
    seed: int = 0,
    workers: int = 1,
    overwrite: bool = False,
    resume: bool = False,
    sweep: SweepSpec | None = None,
    executor: str = "local",
    scheduler: str | None = None,
    on_image: Callable[[], None] | None = None,
) -> dict:
    """Simulate a dataset (``n_images`` images of ``cfg``, or every point of ``sweep``); returns the manifest.

    The bytes written depend only on (cfg, sweep, seed, n_images), never on ``workers`` or the executor; an
    interrupted run finished with ``resume=True`` is byte-identical to an uninterrupted one.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    if executor not in ("local", "dask"):
        raise ValueError(f"executor must be 'local' or 'dask', got {executor!r}")
    if executor == "dask" and not scheduler:
        raise ValueError("executor 'dask' needs a scheduler address (e.g. tcp://10.0.0.5:8786)")
    out_dir = Path(out_dir)
    jobs, n_images = plan_jobs(cfg, seed, out_dir, n_images, sweep)
    plan = _plan(cfg, seed, n_images, sweep)
    if resume and (out_dir / "run.json").exists():
        previous = json.loads((out_dir / "run.json").read_text())
        if previous.get("plan_hash") != plan["plan_hash"]:
            raise ValueError(
                f"{out_dir / 'run.json'}: the folder holds a different run (config, sweep, seed or image count "
                "differ); resume it with the same arguments, or pass --overwrite"
            )
        _remove_partial_files(out_dir)
        done = {p.stem for p in (out_dir / "records").glob("*.json")}
        jobs = [job for job in jobs if f"{job.index:06d}" not in done]
        for _ in range(n_images - len(jobs)):
            if on_image is not None:
                on_image()
    else:
        prepare_output_dir(out_dir, overwrite)
        atomic_write_json(out_dir / "run.json", plan)
    for _ in _run_jobs(jobs, workers, executor, scheduler):
        if on_image is not None:
            on_image()
    counts = merge_records(out_dir, n_images)
    manifest = {
        "generator": "semsynth",
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "n_images": n_images,
        "config": config_to_dict(cfg),
        "config_hash": config_hash(cfg),
        "sweep": plan["sweep"],
        "plan_hash": plan["plan_hash"],
        "packages": package_versions(),
        "counts": counts,
    }
    atomic_write_json(out_dir / "manifest.json", manifest)
    return manifest
