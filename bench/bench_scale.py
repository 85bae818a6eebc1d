"""Dataset generation at scale: peak memory for 1,000 vs 10,000 images, and throughput with 1 and 2 workers.

Each measurement runs in a fresh process (so peak RSS is its own), writing small images (128 x 96 px, about
10 primaries each) to a temporary folder. Run: python bench/bench_scale.py [--sizes 1000 10000]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"image": {"width_px": 128, "height_px": 96}, "field": {"primaries_per_um2": 15.0}}

_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
import cv2
cv2.setNumThreads(1)
from simulator.config import config_from_dict
from simulator.io.writer import write_dataset
cfg = config_from_dict(json.loads({cfg!r}))
t0 = time.perf_counter()
write_dataset({out!r}, cfg, n_images={n}, seed=0, workers={workers})
elapsed = time.perf_counter() - t0
rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({{"seconds": elapsed, "rss_mb": rss_self, "worker_rss_mb": rss_children}}))
"""


def measure(n: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        code = _CHILD.format(root=str(ROOT), cfg=json.dumps(SMALL), out=str(Path(tmp) / "ds"), n=n, workers=workers)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--throughput-n", type=int, default=600)
    args = parser.parse_args()
    print(f"small images: {SMALL}")
    print(f"{'images':>8} {'workers':>8} {'images/s':>10} {'peak RSS main (MB)':>20}")
    for n in args.sizes:
        r = measure(n, 1)
        print(f"{n:>8} {1:>8} {n / r['seconds']:>10.1f} {r['rss_mb']:>20.0f}")
    one = measure(args.throughput_n, 1)
    two = measure(args.throughput_n, 2)
    rate1, rate2 = args.throughput_n / one["seconds"], args.throughput_n / two["seconds"]
    print(f"throughput ({args.throughput_n} images): 1 worker {rate1:.1f} images/s, 2 workers {rate2:.1f} images/s "
          f"(scaling efficiency {rate2 / (2 * rate1):.0%}; worker peak RSS {two['worker_rss_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
