"""Choose one simulator parameter per fold by realism on the fold's real *training* images only.

The bench-validity protocol (bench/bench_validity.py) scores a config on each fold's 5 real test images; a
parameter that the test scores were used to choose would make those scores optimistic. This bench makes the
choice where it may be made: per fold k (test images 5k..5k+4 in sorted-name order, training = the other 15),

    1. the base config is calibrated by ``cli.py fit``'s rounds on the fold's real training images (the same
       fitted config, and the same file, that ``bench_validity.py --fit NAME=BASE`` uses with the same --out);
    2. for each candidate value of ``--param`` the fitted config with that value simulates ``--n-sim`` images
       (seed 2000 + k: neither bench_validity's synthetic training seed 1 nor its test seeds 1000 + k);
    3. the normalised C2ST of those images against the fold's 15 real training images, overall and by crop
       content (particles, substrate), one run per C2ST seed;
    4. the fold's choice: the value with the lowest mean ``--score`` accuracy (ties: the first listed).

A value chosen by every fold can then be fixed in the base config without looking at any test image.

    python bench/bench_select.py --out /tmp/validity --fit fitted=configs/variants/smooth.toml \\
        --param shading.residue_arc_variation --values 0,0.7,1.2 --score substrate --jobs 2
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_validity import (  # noqa: E402
    DEFAULT_REFERENCE,
    FOLD_SIZE,
    N_FOLDS,
    c2st_job,
    fitted_config,
    fold_names,
    ingest_subset,
    simulate,
)

SCORES = ("overall", "particles", "substrate")


def with_value(cfg, key: str, value: float | None):
    """``cfg`` with ``section.name`` set to ``value`` (cast to the field's type); None: ``cfg`` as fitted."""
    section, name = key.split(".", 1)
    if value is None:
        getattr(getattr(cfg, section), name)  # the key must exist
        return cfg
    leaf = getattr(cfg, section)
    return replace(cfg, **{section: replace(leaf, **{name: type(getattr(leaf, name))(value)})})


def label(value: float | None) -> str:
    return "fitted" if value is None else f"{value:g}"


def choose(scores: dict[float, list[float]]) -> float:
    """The candidate with the lowest mean score (the first listed on a tie)."""
    return min(scores, key=lambda v: float(np.mean(scores[v])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder (share it with bench_validity.py)")
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    parser.add_argument("--fit", required=True, help="NAME=TOML base config, fitted per fold")
    parser.add_argument("--param", required=True, help="section.name of the parameter to choose")
    parser.add_argument("--values", required=True,
                        help="comma-separated candidate values; 'fitted' keeps the fold's fitted value")
    parser.add_argument("--score", choices=SCORES, default="overall", help="C2ST accuracy to minimise")
    parser.add_argument("--folds", default="0,1,2,3")
    parser.add_argument("--n-sim", type=int, default=15)
    parser.add_argument("--fit-n-sim", type=int, default=15)
    parser.add_argument("--fit-rounds", type=int, default=4)
    parser.add_argument("--c2st-seeds", default="0")
    parser.add_argument("--c2st-steps", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    if not (args.reference / "classes").is_dir():
        sys.exit(f"{args.reference}: no classes/ folder (the reference set with class masks is needed); skipped")
    from simulator.config import load_config

    name, base_path = args.fit.split("=", 1)
    base = load_config(Path(base_path) if Path(base_path).is_absolute() else ROOT / base_path)
    values = [None if v == "fitted" else float(v) for v in args.values.split(",")]
    with_value(base, args.param, values[0])  # an unknown key fails here, before any work
    folds = [int(f) for f in args.folds.split(",")]
    c2st_seeds = [int(s) for s in args.c2st_seeds.split(",")]
    names = sorted(p.stem for p in (args.reference / "SEM").glob("*.tif"))
    if len(names) != N_FOLDS * FOLD_SIZE:
        sys.exit(f"{args.reference}: {len(names)} images (expected {N_FOLDS * FOLD_SIZE} for 4 folds of 5)")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    jobs, keys = [], []
    slug = args.param.replace(".", "-")
    for k in folds:
        train, _ = fold_names(names, k)
        real_dir = out / f"real_f{k}_train"
        if not (real_dir / "manifest.json").exists():
            ingest_subset(args.reference, train, real_dir)
        fitted = fitted_config(base, real_dir, out / f"fit_{name}_f{k}.toml", args.fit_n_sim, args.fit_rounds)
        for v in values:
            syn = simulate(with_value(fitted, args.param, v), out / f"select_{name}_{slug}_{label(v)}_f{k}", args.n_sim,
                           2000 + k, args.jobs)
            for s in c2st_seeds:
                jobs.append((syn, real_dir, s, args.c2st_steps))
                keys.append((k, v, s))
        print(f"fold {k} simulated ({time.perf_counter() - start:.0f} s)", flush=True)
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(c2st_job, jobs))
    table: dict = {}
    for (k, v, _), r in zip(keys, results, strict=True):
        cell = table.setdefault(k, {}).setdefault(v, {s: [] for s in SCORES})
        cell["overall"].append(r["accuracy"])
        for s in ("particles", "substrate"):
            if r[s] is not None:
                cell[s].append(r[s])
    chosen = {k: choose({v: cells[args.score] for v, cells in table[k].items()}) for k in folds}
    print(f"\n{args.param}: C2ST against each fold's real training images (mean over {len(c2st_seeds)} seed(s)); "
          f"chosen by {args.score}")
    print(f"{'fold':>4} {'value':>7} " + " ".join(f"{s:>9}" for s in SCORES) + "  chosen")
    for k in folds:
        for v in values:
            cell = table[k][v]
            cols = " ".join(f"{np.mean(cell[s]):9.3f}" if cell[s] else f"{'-':>9}" for s in SCORES)
            print(f"{k:>4} {label(v):>7} {cols}  {'<-' if chosen[k] == v else ''}")
    print(f"chosen per fold: {chosen}; {time.perf_counter() - start:.0f} s")
    blob = {"param": args.param, "score": args.score, "base": base_path, "values": values,
            "table": {str(k): {label(v): cells for v, cells in t.items()} for k, t in table.items()},
            "chosen": {str(k): v for k, v in chosen.items()}}
    tmp = out / f"select_{slug}.json.tmp"
    tmp.write_text(json.dumps(blob, indent=1))
    tmp.replace(out / f"select_{slug}.json")


if __name__ == "__main__":
    main()
