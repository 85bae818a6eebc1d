"""Operating domain on the reference set: no false alarm on held-out real images, shifted simulated images caught.

1. Real: the 20 reference images (read from ../shared, ingested with their class masks) split by image into
   halves, both ways and for two splits (first/last ten in sorted-name order, even/odd): `domain fit` on one
   half, `domain check` on the other. Every held-out real image should be inside (no false alarm).
2. Simulated: from the domain of all 20 images, `domain sample` draws configs (base: --base) in distribution
   and shifted along blur (x6), dose (SNR x0.25, current x1/16), pixel size (x2) and crowding (coverage x20, clipped
   at 0.6: the reference images range over 0.04-0.32, so a smaller factor leaves some draws inside);
   one image each is simulated and checked against the domain and the ranges of a robustness run (--ranges:
   the output folder of `cli.py robustness`). Expected: inside when drawn unshifted and, per validated key,
   the drawn factor's equivalent level lies inside the range (the check itself sees only the image).

    python cli.py robustness configs/sweeps/robustness.toml --model watershed --out /tmp/rob --tau 0.3 --alpha 0.4
    python bench/bench_domain.py --out /tmp/domain --ranges /tmp/rob
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_validity import DEFAULT_REFERENCE, ingest_subset  # noqa: E402

SHIFTS = {"blur x6": {"blur_sigma_nm": 6.0}, "dose x1/16": {"snr": 0.25}, "pixel size x2": {"pixel_size_nm": 2.0},
          "crowding x20": {"coverage": 20.0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    parser.add_argument("--ranges", type=Path, default=None, help="robustness output folder")
    parser.add_argument("--base", type=Path, default=ROOT / "configs" / "variants" / "fit-base.toml")
    parser.add_argument("--n-in", type=int, default=20)
    parser.add_argument("--n-shift", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.reference / "classes").is_dir():
        sys.exit(f"{args.reference}: no classes/ folder (the reference set with class masks is needed); skipped")
    from eval.domain.check import range_status
    from eval.domain.model import DomainModel, factor_value
    from eval.domain.run import base_snr, check_rows, factor_rows, fit_file, robustness_inputs, sample_configs
    from eval.factors import dataset_factors, open_dataset
    from simulator.config import load_config
    from simulator.io.writer import write_dataset

    start = time.perf_counter()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(p.stem for p in (args.reference / "SEM").glob("*.tif"))
    real_dir = out / "real"
    if not (real_dir / "manifest.json").exists():
        ingest_subset(args.reference, names, real_dir)
    rows, files = factor_rows(real_dir)
    source = {f: n for f, n in zip(files, names, strict=True)}  # ingest keeps sorted order

    # 1. held-out real halves
    splits = {"first/last ten": (list(range(10)), list(range(10, 20))),
              "even/odd": (list(range(0, 20, 2)), list(range(1, 20, 2)))}
    real_results = []
    for split, (a, b) in splits.items():
        for train, test in ((a, b), (b, a)):
            model = DomainModel.from_dict(fit_file([rows[i] for i in train], [files[i] for i in train],
                                                   real_dir, n_boot=0)["model"])
            for r in check_rows(model, [rows[i] for i in test], [files[i] for i in test]):
                real_results.append({"split": split, "image": source[r["image"]], "verdict": r["verdict"],
                                     "p_value": r["typicality"]["p_value"], "reasons": r["reasons"]})
    alarms = [r for r in real_results if r["verdict"] != "inside"]
    print(f"real held-out images: {len(real_results) - len(alarms)} of {len(real_results)} inside "
          f"(4 fits of 10 images); min p = {min(r['p_value'] for r in real_results):.3g}", flush=True)
    for r in alarms:
        print(f"  false alarm: {r['image']} ({r['split']}): {'; '.join(r['reasons'])}")

    # 2. simulated draws in distribution and shifted, checked against the domain of all 20 and the ranges
    full = fit_file(rows, files, real_dir, n_boot=0)
    model = DomainModel.from_dict(full["model"])
    (out / "domain.json").write_text(json.dumps(full, indent=1))
    ranges, maps = robustness_inputs(args.ranges) if args.ranges else ([], {})
    base = load_config(args.base)
    snr = base_snr(base, args.seed)
    sets = {"in distribution": ({}, args.n_in), **{k: (v, args.n_shift) for k, v in SHIFTS.items()}}
    sim_results = []
    for k, (label, (shift, n)) in enumerate(sets.items()):
        pairs = sample_configs(model, base, n, seed=args.seed + 100 + k, shift=shift, snr_at_base=snr)
        for j, (drawn, cfg) in enumerate(pairs):
            d = out / "sim" / f"{k}_{j:02d}"
            if not (d / "manifest.json").exists():
                write_dataset(d, cfg, n_images=1, seed=args.seed + 1000 * k + j, workers=1, overwrite=True)
            measured = dataset_factors(open_dataset(d))["images"][0]
            row = {key: (float("nan") if v is None else v) for key, v in measured.items() if key != "file_name"}
            result = check_rows(model, [row], [f"{label} {j}"], ranges, maps)[0]
            # truth from the drawn factors (the check sees only the image): inside = drawn from the domain
            # unshifted and, per validated key, the drawn factor's equivalent level inside its range
            expected_inside = not shift and all(
                range_status(r, maps[r.key].level_of(factor_value(drawn, maps[r.key].factor))) == "inside"
                for r in ranges if r.key in maps and np.isfinite(factor_value(drawn, maps[r.key].factor)))
            sim_results.append({"set": label, "drawn": drawn, "verdict": result["verdict"],
                                "expected": "inside" if expected_inside else "not inside",
                                "reasons": result["reasons"], "correct": (result["verdict"] == "inside")
                                == expected_inside})
        got = [r for r in sim_results if r["set"] == label]
        print(f"{label:>16}: {sum(r['correct'] for r in got)} of {len(got)} correct; verdicts "
              + ", ".join(f"{v} {sum(r['verdict'] == v for r in got)}" for v in ("inside", "atypical", "untested",
                                                                                    "outside")), flush=True)
    correct = float(np.mean([r["correct"] for r in sim_results]))
    print(f"simulated: {correct:.1%} classified correctly ({len(sim_results)} images); "
          f"{time.perf_counter() - start:.0f} s")
    for r in sim_results:
        if not r["correct"]:
            print(f"  wrong: {r['set']}: {r['verdict']}: {'; '.join(r['reasons'])}")
    (out / "bench_domain.json").write_text(json.dumps({"real": real_results, "simulated": sim_results,
                                                       "ranges": str(args.ranges)}, indent=1, default=float))


if __name__ == "__main__":
    main()
