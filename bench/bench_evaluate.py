"""Evaluation overhead: metrics (matching, COCO AP, PSD, bootstrap over images) and report, relative to the
model's own inference time.

Simulates N default images (1024 x 768 px, about 150 particles each), runs a model on them through
``eval.evaluate.evaluate`` and prints the time per stage. Run:

    python bench/bench_evaluate.py [--n 24] [--model watershed] [--resamples 200]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.evaluate import EvaluateConfig, evaluate  # noqa: E402
from eval.segment.registry import load_model  # noqa: E402
from simulator.config import load_config  # noqa: E402
from simulator.io.writer import write_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24, help="images")
    parser.add_argument("--model", default="watershed", help="model spec (as for cli.py evaluate)")
    parser.add_argument("--resamples", type=int, default=200, help="bootstrap resamples")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dataset = Path(tmp) / "data"
        start = time.perf_counter()
        write_dataset(dataset, load_config(ROOT / "configs" / "default.toml"), n_images=args.n, seed=7)
        print(f"simulated {args.n} images in {time.perf_counter() - start:.1f} s")
        model = load_model(args.model)
        start = time.perf_counter()
        result = evaluate(dataset, model, Path(tmp) / "eval", EvaluateConfig(n_resamples=args.resamples))
        total = time.perf_counter() - start
    t = result["timing"]
    overhead = t["metrics_s"] + t["report_s"]
    counts = result["counts"]
    print(f"model {args.model}: {args.n} images, {counts['n_true']} counted true particles, "
          f"{counts['n_pred']} counted predictions")
    print(f"  inference        {t['inference_s_total']:7.2f} s  ({1e3 * t['inference_s_per_image']:.0f} ms/image)")
    print(f"  metrics + CIs    {t['metrics_s']:7.2f} s  ({1e3 * t['metrics_s'] / args.n:.0f} ms/image, "
          f"{args.resamples} bootstrap resamples)")
    print(f"  report.html      {t['report_s']:7.2f} s")
    print(f"  overhead / inference = {overhead / t['inference_s_total']:.2f}; total {total:.1f} s; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
