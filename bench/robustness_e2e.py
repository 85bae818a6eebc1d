"""End-to-end robustness run: the watershed baseline and a briefly trained U-Net over the five factors of
configs/sweeps/robustness.toml, both reports checked in headless Chromium and screenshotted.

Steps (each through cli.py, timed): simulate a U-Net training set (default config) -> `segment train` ->
`robustness --model watershed` (simulates the sweep) -> `robustness --model unet:...` (same sweep images) ->
open both report.html files in Chromium (bench/screenshot_report.py). Run:

    python bench/robustness_e2e.py [--out out/e2e] [--train-images 16] [--steps 150]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(step: str, args: list[str], timings: dict[str, float]) -> None:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], check=True, cwd=ROOT)
    timings[step] = time.perf_counter() - start
    print(f"--- {step}: {timings[step]:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "e2e")
    parser.add_argument("--sweep", type=Path, default=ROOT / "configs" / "sweeps" / "robustness.toml")
    parser.add_argument("--train-images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    out = args.out.resolve()
    timings: dict[str, float] = {}
    total = time.perf_counter()
    run("simulate U-Net training set", ["simulate", str(ROOT / "configs" / "default.toml"), "--n",
                                        str(args.train_images), "--seed", "1000", "--out", str(out / "train"),
                                        "--workers", str(args.workers), "--overwrite", "--no-preview"], timings)
    run("segment train", ["segment", "train", "--dataset", str(out / "train"), "--out", str(out / "unet.pt"),
                          "--steps", str(args.steps), "--overwrite"], timings)
    sweep_data = out / "sweep"
    for name, spec in (("watershed", "watershed"), ("unet", f"unet:{out / 'unet.pt'}")):
        run(f"robustness {name}", ["robustness", str(args.sweep), "--model", spec, "--out", str(out / name),
                                   "--dataset", str(sweep_data), "--workers", str(args.workers)], timings)
    elapsed = time.perf_counter() - total
    print(f"total {elapsed / 60:.1f} min; " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    from bench.screenshot_report import check_report, find_chromium

    if find_chromium() is None:
        print("no Chromium: reports not opened (apt-get install chromium; pip install playwright)")
        return
    for name in ("watershed", "unet"):
        problems = check_report(out / name / "report.html", out / name / "report.png")
        print(f"{out / name / 'report.html'}: {'opens without errors' if not problems else problems}; "
              f"screenshot {out / name / 'report.png'}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
