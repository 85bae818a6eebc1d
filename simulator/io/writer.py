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
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from simulator.config import SimConfig, config_hash, config_to_dict
from simulator.io.files import _FILE_MODE, atomic_write_json, package_versions, quantize, write_png
from simulator.io.outputs import DATASET, prepare_output_folder, write_marker
from simulator.io.records import CATEGORY, FORMAT_VERSION, image_records
from simulator.pipeline import simulate_image
from simulator.sweep import SweepSpec, expand


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


def prepare_output_dir(out_dir: Path, overwrite: bool, command: str = "simulate") -> None:
    """Create ``out_dir`` for a dataset; a non-empty one is replaced only with ``overwrite`` and only when a
    semsynth command wrote it, and then only the entries a dataset owns are deleted (``simulator.io.outputs``)."""
    prepare_output_folder(out_dir, DATASET, command, overwrite=overwrite)
    for sub in ("images", "labels", "records"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)


def _remove_partial_files(out_dir: Path) -> int:
    """Delete temporary files left by an interrupted run (a rename never happened); returns how many."""
    stray = [p for sub in ("", "images", "labels", "records") for p in (out_dir / sub).glob(".*.tmp")]
    for path in stray:
        path.unlink()
    return len(stray)


def die_with_parent(poll_s: float = 1.0) -> None:
    """Exit this process as soon as the process that started it is gone (even after ``kill -9``, which gives
    the parent no chance to stop its workers): a daemon thread polls the parent's pid, which changes when the
    orphan is re-parented. Portable, and unlike Linux's PR_SET_PDEATHSIG not tied to the thread that spawned us."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _worker_init() -> None:
    """Worker processes share the cores: OpenCV's own thread pool would only oversubscribe them; and they die
    with the main process.

    Workers are spawned, not forked: forking a parent whose OpenCV, BLAS or numba threads hold locks can
    deadlock the child."""
    cv2.setNumThreads(1)
    die_with_parent()


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
        max_workers=workers, mp_context=get_context("spawn"), initializer=_worker_init
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
        write_marker(out_dir, DATASET, "simulate")  # also into a folder written before markers existed
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
