"""Benchmark ``simulator.geometry.aggregate.build_aggregate`` against PyFracVAL, side by side in one run.

Run: ``python bench/bench_aggregate.py [--repeats 30] [--sweep-max 512] [--seed 0]``

For Df = 1.8, kf = 1.3 and log-normal radii (geometric mean 50 nm, geometric std 1.2) it prints the time per
aggregate at N = 32 and 64 for ours and for PyFracVAL (same radii, runs interleaved), PyFracVAL's success
count, the speed-up, and then ours' success rate (valid: no excess overlap, connected) for every N from 1 to
``--sweep-max``, one aggregate each. PyFracVAL is timed on its algorithm alone (shuffle, PCA sub-clusters,
CCA), as in ``pyfracval.main_runner.run_simulation`` without its logging and file output; a failed attempt
counts with its full time.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import pdist, squareform

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from simulator.geometry.aggregate import build_aggregate  # noqa: E402

DF, KF, GEOMETRIC_MEAN_NM, GEOMETRIC_STD, OVERLAP = 1.8, 1.3, 50.0, 1.2, 0.0


def lognormal_radii(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return GEOMETRIC_MEAN_NM * np.exp(np.log(GEOMETRIC_STD) * rng.standard_normal(n))


def ours(radii: np.ndarray, seed: int) -> np.ndarray:
    return build_aggregate(
        radii, fractal_dimension=DF, fractal_prefactor=KF, overlap=OVERLAP, rng=np.random.default_rng(seed)
    )


def pyfracval_once(radii: np.ndarray, seed: int) -> bool:
    """One PyFracVAL aggregate (its PCA + CCA) from these radii; True on success."""
    from pyfracval import utils
    from pyfracval.cca_agg import CCAggregator
    from pyfracval.pca_subclusters import Subclusterer

    np.random.seed(seed)  # noqa: NPY002 - PyFracVAL draws from the legacy global state
    try:
        shuffled = utils.shuffle_array(radii.copy())
        sub = Subclusterer(shuffled, DF, KF, tol_ov=1e-6, n_subcl_percentage=0.1)
        if not sub.run_subclustering():
            return False
        _, failed, coords_radii, i_orden, _ = sub.get_results()
        if failed or coords_radii is None:
            return False
        cca = CCAggregator(
            coords_radii[:, :3], coords_radii[:, 3], i_orden, radii.size, DF, KF, tol_ov=1e-6, ext_case=0
        )
        return cca.run_cca() is not None and not cca.not_able_cca
    except Exception:  # noqa: BLE001 - any crash is a failed attempt
        return False


def is_valid(centres: np.ndarray, radii: np.ndarray) -> bool:
    """No pair closer than its necking distance (1e-6 slack), contact graph connected, finite."""
    if centres.shape != (radii.size, 3) or not np.isfinite(centres).all():
        return False
    if radii.size == 1:
        return True
    dist = squareform(pdist(centres))
    stuck = (radii[:, None] + radii[None, :]) * (1.0 - OVERLAP)
    off = ~np.eye(radii.size, dtype=bool)
    if ((dist - stuck) / (radii[:, None] + radii[None, :]))[off].min() < -1e-6:
        return False
    return connected_components((dist <= stuck * (1.0 + 1e-6)) & off, directed=False)[0] == 1


def time_side_by_side(n: int, repeats: int, seed0: int) -> dict[str, np.ndarray | int]:
    t_ours, t_ref, ok_ref, ok_ours = [], [], 0, 0
    for seed in range(seed0, seed0 + repeats):
        radii = lognormal_radii(seed, n)
        start = time.perf_counter()
        centres = ours(radii, seed)
        t_ours.append(time.perf_counter() - start)
        ok_ours += is_valid(centres, radii)
        start = time.perf_counter()
        ok_ref += pyfracval_once(radii, seed)
        t_ref.append(time.perf_counter() - start)
    return {"ours": np.array(t_ours) * 1e3, "ref": np.array(t_ref) * 1e3, "ok_ref": ok_ref, "ok_ours": ok_ours}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="aggregates per N for the timing (default 30)")
    parser.add_argument("--sweep-max", type=int, default=512, help="largest N of the success sweep (default 512)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # PyFracVAL logs every step

    pyfracval_once(lognormal_radii(10**6, 32), 10**6)  # numba JIT warm-up, not timed
    ours(lognormal_radii(10**6, 32), 10**6)

    print(
        f"Df={DF}, kf={KF}, log-normal radii (geometric mean {GEOMETRIC_MEAN_NM:g} nm, geometric std "
        f"{GEOMETRIC_STD}), overlap {OVERLAP}, {args.repeats} aggregates per N, same radii for both"
    )
    print(
        f"{'N':>4} | {'ours ms mean/median':>20} | {'pyfracval ms mean/median':>25} | {'pyfracval ok':>12} |"
        f" {'ours ok':>7} | {'speed-up mean/median':>20}"
    )
    for n in (32, 64):
        r = time_side_by_side(n, args.repeats, args.seed)
        o, f = r["ours"], r["ref"]
        print(
            f"{n:>4} | {o.mean():>9.2f} / {np.median(o):>8.2f} | {f.mean():>12.1f} / {np.median(f):>10.1f} |"
            f" {r['ok_ref']:>5}/{args.repeats:<6} | {r['ok_ours']:>3}/{args.repeats:<3} |"
            f" {f.mean() / o.mean():>8.1f}x / {np.median(f) / np.median(o):>7.1f}x"
        )

    valid, times = 0, []
    sweep_start = time.perf_counter()
    for n in range(1, args.sweep_max + 1):
        radii = lognormal_radii(args.seed + n, n)
        start = time.perf_counter()
        centres = ours(radii, args.seed + n)
        times.append(time.perf_counter() - start)
        valid += is_valid(centres, radii)
    total = time.perf_counter() - sweep_start
    slowest = int(np.argmax(times)) + 1
    print(
        f"sweep N=1..{args.sweep_max} (one aggregate each): {valid}/{args.sweep_max} valid "
        f"({100.0 * valid / args.sweep_max:.1f} %), generation {sum(times):.2f} s "
        f"(slowest N={slowest}: {1e3 * max(times):.1f} ms, N={args.sweep_max}: {1e3 * times[-1]:.1f} ms), "
        f"{total:.2f} s with validation"
    )


if __name__ == "__main__":
    main()
