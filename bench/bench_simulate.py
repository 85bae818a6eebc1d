"""End-to-end simulation benchmark for a config (default: configs/default.toml).

Prints images per second per core (geometry + render + shading + records + PNG writes, one worker), the time
split per stage, the throughput with more workers, and peak memory. Run: python bench/bench_simulate.py
"""

from __future__ import annotations

import os

# One thread per process: the figures are per core, and worker processes must not oversubscribe the cores.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

cv2.setNumThreads(1)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator.config import load_config
from simulator.io.files import encode_png, quantize
from simulator.io.records import image_records
from simulator.io.writer import write_dataset
from simulator.pipeline import simulate_image


def stage_split(cfg, n: int) -> dict[str, float]:
    """Mean ms per image of each stage, measured in one process."""
    totals: dict[str, float] = {}
    for i in range(n):
        sim = simulate_image(cfg, 1, i, timings=totals)
        t = time.perf_counter()
        image_records(sim, cfg, "x")
        totals["annotations (RLE)"] = totals.get("annotations (RLE)", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        encode_png(quantize(sim.image, cfg.image.bit_depth))
        encode_png(sim.render.instance_id.astype(np.uint16), labels=True)
        totals["PNG encode"] = totals.get("PNG encode", 0.0) + time.perf_counter() - t
    return {k: 1000 * v / n for k, v in totals.items()}


def end_to_end(cfg, n: int, workers: int) -> float:
    """Images per second writing a whole dataset (files, annotations.json, manifest) to a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_dataset(Path(tmp) / "ds", cfg, n_images=n, seed=2, workers=workers)
        return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", nargs="?", default=str(Path(__file__).resolve().parents[1] / "configs/default.toml"))
    parser.add_argument("--n", type=int, default=40, help="images per measurement")
    parser.add_argument("--workers", type=int, default=2, help="also measure with this many workers")
    args = parser.parse_args()
    cfg = load_config(args.config)

    stage_split(cfg, 2)  # warm-up: loads the compiled ray solver, builds the texture tile
    split = stage_split(cfg, args.n)
    one = end_to_end(cfg, args.n, 1)
    # More images for the pool: its start-up (spawned workers import and load compiled code) is amortised.
    many = end_to_end(cfg, 3 * args.n, args.workers) if args.workers > 1 else one
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"config: {args.config}  ({cfg.image.width_px} x {cfg.image.height_px} px, {args.n} images)")
    print(f"{'stage':<22}{'ms/image':>10}")
    for name, ms in split.items():
        print(f"{name:<22}{ms:>10.1f}")
    print(f"{'sum of stages':<22}{sum(split.values()):>10.1f}")
    print(f"end-to-end, 1 worker:   {one:6.2f} images/s per core")
    if args.workers > 1:
        eff = many / (one * args.workers)
        print(f"end-to-end, {args.workers} workers:  {many:6.2f} images/s  ({many / args.workers:.2f} per core, "
              f"scaling efficiency {eff:.0%}, {3 * args.n} images incl. pool start-up)")
    print(f"peak RSS (main process): {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
