"""Validation of the realism score on the reference set, and the scores of the simulator against it.

1. Null: three random splits of the 20 real images into disjoint halves (C2ST should be near 0.5, <= 0.6).
2. Degraded copies of the real images: Gaussian blur (sigma 2 px) and added noise (SD 0.05): >= 0.9.
3. Real vs the default simulator, and real vs the config fitted to the real set (``cli.py fit``).

Prints one table row per comparison (C2ST with its 95 % interval, KID, distances) and the time taken.
Needs ../shared/data/bam-tio2-sem. Run:

    python bench/bench_realism.py [--fitted out/fitted.toml] [--n-sim 20] [--steps 300] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.data.reference import DEFAULT_REFERENCE  # noqa: E402
from eval.realism.config import RealismConfig
from eval.realism.data import ImageSet  # noqa: E402
from eval.realism.report import realism

ROOT = Path(__file__).resolve().parents[1]


def simulated_set(config: Path, n: int, seed: int) -> ImageSet:
    from simulator.config import load_config
    from simulator.pipeline import as_written, simulate_image

    cfg = load_config(config)
    images = []
    for i in range(n):
        sim = simulate_image(cfg, seed, i)
        images.append(as_written(sim, cfg)[: cfg.image.height_px])
    return ImageSet(config.stem, tuple(images), tuple(f"{config.stem}-{i}" for i in range(n)), cfg.image.pixel_size_nm)


def subset(s: ImageSet, idx, name: str) -> ImageSet:
    return ImageSet(name, tuple(s.images[i] for i in idx), tuple(s.names[i] for i in idx), s.pixel_size_nm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    parser.add_argument("--fitted", type=Path, default=None, help="config written by cli.py fit")
    parser.add_argument("--n-sim", type=int, default=20)
    parser.add_argument("--steps", type=int, default=RealismConfig().steps)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)")
    parser.add_argument("--skip-validation", action="store_true")
    args = parser.parse_args()
    if not args.reference.is_dir():
        sys.exit(f"skipped: reference images not found at {args.reference}")
    torch.set_num_threads(args.threads)
    from eval.realism.data import load_image_set

    real = load_image_set(args.reference)
    cfg = RealismConfig(steps=args.steps)
    comparisons = []
    if not args.skip_validation:
        for split in (1, 2, 3):
            idx = np.random.default_rng(split).permutation(len(real.images))
            half = len(idx) // 2
            comparisons.append((f"real half vs half (split {split})", subset(real, idx[:half], "half A"),
                                subset(real, idx[half:], "half B")))
        blurred = ImageSet("blurred", tuple(cv2.GaussianBlur(im, (0, 0), 2.0) for im in real.images), real.names,
                           real.pixel_size_nm)
        rng = np.random.default_rng(0)
        noisy = ImageSet("noisy", tuple(np.clip(im + rng.normal(0, 0.05, im.shape), 0, 1).astype(np.float32)
                                        for im in real.images), real.names, real.pixel_size_nm)
        comparisons += [("real vs blurred copy (2 px)", real, blurred), ("real vs noisy copy (SD 0.05)", real, noisy)]
    comparisons.append(("real vs default simulator", real, simulated_set(ROOT / "configs" / "default.toml",
                                                                          args.n_sim, 1)))
    if args.fitted is not None:
        comparisons.append(("real vs fitted simulator", real, simulated_set(args.fitted, args.n_sim, 1)))
    print(f"C2ST: {cfg.steps} steps x 2 folds, {cfg.crop_px} px crops, batch {cfg.batch_size}, "
          f"normalize={cfg.normalize}; torch threads {args.threads}")
    print("| comparison | C2ST accuracy [95 % CI] | KID | intensity W1 | gradient W1 (1/nm) | spectrum RMS log10 | s |")
    print("|---|---|---|---|---|---|---|")
    for name, a, b in comparisons:
        start = time.perf_counter()
        r = realism(a, b, cfg)
        d = r.distances
        print(f"| {name} | {r.c2st.accuracy:.3f} [{r.c2st.ci_low:.3f}, {r.c2st.ci_high:.3f}] | {r.kid:.3f} | "
              f"{d['intensity_w1']:.4f} | {d['gradient_w1_per_nm']:.2e} | {d['spectrum_rms_log10']:.3f} | "
              f"{time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
