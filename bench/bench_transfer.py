"""Transfer: does a U-Net trained on refined synthetic images segment held-out real images better than one
trained on the unrefined (procedural) images with the same budget? Both are compared with one trained on the
real training images.

Uses the folder written by bench/bench_refiner.py (``--out``): synthetic_train/, run/ (the refiner),
real_train/ and real_heldout/ (the reference set split by image). Steps:

    1. refine synthetic_train -> refined_train (cli refine apply; labels copied unchanged)
    2. train three U-Nets, same steps, seed and crop size: procedural, refined, real
    3. evaluate each on real_heldout (AP50, Dice, PQ, D50 error with 95 % bootstrap intervals over images)

Run: python bench/bench_transfer.py --out /tmp/semsynth-bench-refiner [--steps 600] [--threads 1] [--seed S]
     python bench/bench_transfer.py --out /tmp/semsynth-bench-refiner --summary   # all seeds run so far
"""

from __future__ import annotations

import os
import sys

_THREADS = next((int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--threads=")), None) or (
    int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv else 1)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, str(_THREADS))

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

torch.set_num_threads(_THREADS)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.evaluate import EvaluateConfig, evaluate  # noqa: E402
from eval.segment.registry import load_model  # noqa: E402
from eval.segment.unet import train_unet  # noqa: E402
from refiner.apply import apply  # noqa: E402

KEYS = ("AP50", "AP", "DSC", "PQ", "F1", "D50_rel_err")


def summary(out: Path) -> None:
    """Per-seed AP50 and Dice of the procedural and refined U-Nets (from every transfer*.json in ``out``), their
    means and the paired differences refined - procedural (same seed, same data order)."""
    per_seed = {}
    for path in sorted(out.glob("transfer*.json")):
        blob = json.loads(path.read_text())
        seed = int(blob["args"]["seed"])
        for name, r in blob["results"].items():
            per_seed.setdefault(seed, {})[name] = {k: r[k]["value"] for k in ("AP50", "DSC")}
    seeds = sorted(s for s, r in per_seed.items() if {"procedural", "refined"} <= set(r))
    if not seeds:
        sys.exit(f"{out}: no seed with both a procedural and a refined result (run without --summary first)")
    print("| seed | procedural AP50 / Dice | refined AP50 / Dice | refined - procedural AP50 / Dice |")
    print("|---|---|---|---|")
    diffs = []
    for s in seeds:
        p, r = per_seed[s]["procedural"], per_seed[s]["refined"]
        diffs.append((r["AP50"] - p["AP50"], r["DSC"] - p["DSC"]))
        print(f"| {s} | {p['AP50']:.3f} / {p['DSC']:.3f} | {r['AP50']:.3f} / {r['DSC']:.3f} | "
              f"{diffs[-1][0]:+.3f} / {diffs[-1][1]:+.4f} |")
    mean = {n: {k: sum(per_seed[s][n][k] for s in seeds) / len(seeds) for k in ("AP50", "DSC")}
            for n in ("procedural", "refined")}
    d = [sum(x[i] for x in diffs) / len(diffs) for i in (0, 1)]
    wins = sum(1 for a, b in diffs if a > 0 and b > 0)
    print(f"| mean of {len(seeds)} | {mean['procedural']['AP50']:.3f} / {mean['procedural']['DSC']:.3f} | "
          f"{mean['refined']['AP50']:.3f} / {mean['refined']['DSC']:.3f} | {d[0]:+.3f} / {d[1]:+.4f} |")
    print(f"\nrefined higher in both AP50 and Dice for {wins} of {len(seeds)} seeds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of bench/bench_refiner.py")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--crop-px", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", default="procedural,refined,real", help="which U-Nets to train (comma list)")
    parser.add_argument("--summary", action="store_true", help="only summarise the seeds already run in --out")
    args = parser.parse_args()
    if args.summary:
        summary(args.out)
        return
    wanted = set(args.models.split(","))
    out = args.out
    for name in ("synthetic_train", "run", "real_train", "real_heldout"):
        if name == "run" and "refined" not in wanted:
            continue
        if not (out / name).exists():
            sys.exit(f"{out / name} missing: run bench/bench_refiner.py --out {out} first")
    refined = out / "refined_train"
    if "refined" in wanted and not (refined / "manifest.json").exists():
        start = time.perf_counter()
        apply(out / "run", out / "synthetic_train", refined, overwrite=True, device=args.device)
        print(f"refined the training images in {time.perf_counter() - start:.0f} s", flush=True)
    results = {}
    for name, data in (("procedural", out / "synthetic_train"), ("refined", refined), ("real", out / "real_train")):
        tag = f"{name}_s{args.seed}" if args.seed else name  # seed 0 keeps the plain names
        ckpt = out / f"unet_{tag}.pt"
        if name not in wanted and not ckpt.exists():
            continue
        start = time.perf_counter()
        if name in wanted:
            train_unet([data], ckpt, steps=args.steps, crop_px=args.crop_px, seed=args.seed, device=args.device,
                       overwrite=True)
        train_s = time.perf_counter() - start
        metrics = evaluate(out / "real_heldout", load_model(f"unet:{ckpt}"), out / f"eval_{tag}",
                           EvaluateConfig(n_resamples=500), report=True)["metrics"]
        results[name] = {"train_s": train_s, **{k: metrics[k] for k in KEYS}}
        print(f"{name}: trained {args.steps} steps in {train_s:.0f} s; " + ", ".join(
            f"{k} {metrics[k]['value']:.3f}" for k in KEYS), flush=True)
    print(f"\nU-Net, {args.steps} steps, {args.crop_px} px crops, seed {args.seed}; tested on "
          f"{out / 'real_heldout'} (held-out real images, manual masks); 95 % bootstrap intervals over images\n")
    print("| trained on | " + " | ".join(KEYS) + " |")
    print("|---|" + "---|" * len(KEYS))
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(f"{r[k]['value']:.3f} [{r[k]['ci_low']:.3f}, {r[k]['ci_high']:.3f}]"
                                          for k in KEYS) + " |")
    name = f"transfer_s{args.seed}.json" if args.seed else "transfer.json"
    (out / name).write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                       indent=1, default=float))


if __name__ == "__main__":
    main()
