"""Recovery of the influence-factor estimators (eval/factors.py) on simulated images of known truth.

Around the nominal point of configs/sweeps/robustness.toml (384 x 288 px, 7.344 nm/px), one factor at a time:
probe.sigma_nm, detector.probe_current_pA and image.pixel_size_nm over the sweep's levels (the pixel sweep
at the nominal 3.2 nm probe); field.primaries_per_um2 over 2-16 and aggregate.primaries_median over 1-7 (the
sweep holds them at 8 and 7), to spread coverage and touching fraction. Each scene is rendered once
(geometry, shading); charging, probe blur and detector are re-run per level with the pipeline's own stages, and
once without noise for the true noise.

Truths: blur = the probe sigma; noise = std of (noisy - noise-free) detector output on the substrate (> 3 px
from any particle); equivalent counts = (noise-free substrate mean / that std)^2; coverage and touching
fraction = from the true label map vs the geometry (a particle touches when another visible primary of its
own aggregate is in the image). Estimates are from the written (quantised) image, with and without labels.

    python bench/bench_factors.py [--images 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval import factors as F  # noqa: E402
from simulator.config import config_from_dict  # noqa: E402
from simulator.detector import detect  # noqa: E402
from simulator.instrument.charging import charge  # noqa: E402
from simulator.instrument.probe import probe_blur, probe_sigma_nm  # noqa: E402
from simulator.io.files import quantize  # noqa: E402
from simulator.pipeline import simulate_image, stage_rngs  # noqa: E402

NOMINAL = {"image": {"width_px": 384, "height_px": 288}, "field": {"primaries_per_um2": 8.0}}
SWEEPS = {
    "probe.sigma_nm": [2.0, 10.0, 20.0],
    "detector.probe_current_pA": [5.0, 20.0, 500.0],
    "image.pixel_size_nm": [4.0, 12.0, 18.0],
    "field.primaries_per_um2": [2.0, 8.0, 16.0],
    "aggregate.primaries_median": [1.0, 2.0, 7.0],
}
TARGETS = {"blur_sigma_nm": 0.15, "substrate_noise_std": 0.10, "equivalent_counts": 0.20,
           "coverage": 0.10, "touching_fraction": 0.10}


def _cfg(factor: str | None = None, level: float | None = None):
    data = {k: dict(v) for k, v in NOMINAL.items()}
    if factor:
        section, key = factor.split(".")
        data.setdefault(section, {})[key] = level
    return config_from_dict(data)


def _truth_and_estimates(cfg, seed: int, index: int) -> list[tuple[str, float, float, float]]:
    """(factor, truth, estimate from the image alone, estimate with labels) for one image."""
    sim = simulate_image(cfg, seed, index)
    px = cfg.image.pixel_size_nm
    signal = probe_blur(charge(sim.ideal, sim.render, sim.scene, cfg.charging, px), cfg.probe, px)
    noisy = detect(signal, cfg.detector, cfg.scan.dwell_time_us, stage_rngs(seed, index)["detector"])
    clean = detect(signal, dataclasses.replace(cfg.detector, noise=False), cfg.scan.dwell_time_us, None)
    image = quantize(noisy, cfg.image.bit_depth).astype(np.float32) / ((1 << cfg.image.bit_depth) - 1)
    labels = sim.render.instance_id
    substrate = cv2.distanceTransform((labels == 0).astype(np.uint8), cv2.DIST_L2, 5) > 3
    true_noise = float((noisy - clean)[substrate].std())
    true_counts = (float(clean[substrate].mean()) / true_noise) ** 2
    aggregate = sim.scene.primaries.aggregate_id
    ids = np.unique(labels[labels > 0])
    agg_of = aggregate[ids - 1]
    _, inverse, counts = np.unique(agg_of, return_inverse=True, return_counts=True)
    shared = counts[inverse] > 1
    true_touch = float(shared.mean()) if ids.size else float("nan")
    alone, with_labels = F.image_factors(image, px), F.image_factors(image, px, labels)
    return [
        ("blur_sigma_nm", probe_sigma_nm(cfg.probe)[0], alone.blur_sigma_nm, with_labels.blur_sigma_nm),
        ("substrate_noise_std", true_noise, alone.substrate_noise_std, with_labels.substrate_noise_std),
        ("equivalent_counts", true_counts, alone.equivalent_counts, with_labels.equivalent_counts),
        ("coverage", float((labels > 0).mean()), alone.coverage, with_labels.coverage),
        ("touching_fraction", true_touch, float("nan"), with_labels.touching_fraction),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3, help="images per level")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shown = {"probe.sigma_nm": ("blur_sigma_nm",),
             "detector.probe_current_pA": ("substrate_noise_std", "equivalent_counts"),
             "image.pixel_size_nm": ("blur_sigma_nm", "substrate_noise_std"),
             "field.primaries_per_um2": ("coverage", "touching_fraction"),
             "aggregate.primaries_median": ("touching_fraction", "coverage")}
    print("| swept factor | level | estimated factor | truth | from image: est, bias %, spread % | "
          "with labels: est, bias %, spread % | within target (labels / image) |")
    print("|---|---|---|---|---|---|---|")
    for factor, levels in SWEEPS.items():
        for level in levels:
            cfg = _cfg(factor, level)
            rows = [_truth_and_estimates(cfg, args.seed, i) for i in range(args.images)]
            for name in shown[factor]:
                vals = np.array([[t, a, b] for row in rows for (n, t, a, b) in row if n == name], float)
                truth = vals[:, 0]
                cells, ok = [], []
                for col in (1, 2):
                    rel = vals[:, col] / truth - 1.0
                    if not np.isfinite(rel).all():
                        cells.append("n/a")
                        ok.append("n/a")
                        continue
                    bias, spread = 100 * rel.mean(), 100 * rel.std(ddof=1)
                    cells.append(f"{vals[:, col].mean():.4g}, {bias:+.1f}, {spread:.1f}")
                    good = abs(bias) <= 100 * TARGETS[name] and spread <= 100 * TARGETS[name]
                    ok.append("yes" if good else "no")
                print(f"| {factor} | {level:g} | {name} | {truth.mean():.4g} | {cells[0]} | {cells[1]} | "
                      f"{ok[1]} / {ok[0]} |", flush=True)


if __name__ == "__main__":
    main()
