"""Realism of every saved checkpoint of a refiner run: does training make the images harder to tell from real?

For the unrefined (procedural) images and for each RUN/generators/step_N.pt of a `bench/bench_refiner.py` output
folder, the per-image normalised C2ST (the `cli.py realism` default) of

    validation  the last --n-val synthetic *training* images, refined, vs the real *training* images: a
                signal that may be used to choose a checkpoint (no held-out image takes part);
    test        the synthetic test images, refined, vs the held-out real images: the issue's figure, shown
                for diagnosis only (choosing a checkpoint by it would leak the test set).

Each row: mean balanced accuracy over the C2ST seeds, and by crop content (bare substrate / holding particles).
Writes OUT/checkpoints.json and OUT/checkpoints.png. Needs the folder a bench_refiner run left behind:

    python bench/bench_refiner.py --out /tmp/semsynth-bench-refiner --steps 1000
    python bench/bench_refiner_checkpoints.py --out /tmp/semsynth-bench-refiner [--seeds 3] [--c2st-steps 300]
        [--threads 1]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# First: bench_refiner applies --threads (OMP/BLAS/numba limits, torch and OpenCV threads) as it is imported,
# before numpy and torch are.
from bench.bench_refiner import _mean_by_content  # noqa: E402, I001

import argparse  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402

from eval.realism.data import ImageSet, load_image_set, normalized  # noqa: E402
from eval.realism.config import RealismConfig
from eval.realism.c2st import c2st
from refiner.data import condition_channels, load_dataset  # noqa: E402
from refiner.nets import image_noise, refine_array  # noqa: E402
from refiner.train import load_generator, quantized  # noqa: E402


def refined_set(generator, images, name: str, pixel_size_nm: float) -> ImageSet:
    """Normalised ImageSet of ``images`` (ImageRecord with labels) refined by ``generator`` (None = as they are),
    quantised as `refine apply` writes them, with their particle masks."""
    out = []
    for index, item in enumerate(images):
        x = item.image
        if generator is not None:
            x = refine_array(generator, x, condition_channels(item.labels), image_noise(x.shape, 0, index))
        out.append(quantized(x, item.bit_depth))
    names = tuple(f"{name}-{i}" for i in range(len(out)))
    return normalized(ImageSet(name, tuple(out), names, pixel_size_nm, tuple(i.labels > 0 for i in images)))


def score(a: ImageSet, b: ImageSet, seeds: int, steps: int) -> dict:
    runs = [c2st(a, b, RealismConfig(seed=s, steps=steps)) for s in range(seeds)]
    by_content = _mean_by_content([r.by_content for r in runs])  # both sets have masks here
    return {"c2st": float(np.mean([r.accuracy for r in runs])), "per_seed": [r.accuracy for r in runs],
            "substrate": by_content["substrate"], "particles": by_content["particles"]}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows[1:]]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for key, colour, label in (("validation", "tab:blue", "validation: synthetic train vs real train"),
                               ("test", "tab:red", "test: synthetic test vs held-out real")):
        ax.plot(steps, [r[key]["c2st"] for r in rows[1:]], "o-", color=colour, label=f"refined, {label}")
        ax.axhline(rows[0][key]["c2st"], color=colour, ls="--", lw=1, label="procedural (step 0)")
    ax.axhline(0.5, color="grey", lw=0.8)
    ax.set_xlabel("refiner training step")
    ax.set_ylabel("normalised C2ST (0.5 = chance)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/semsynth-bench-refiner"),
                    help="a bench_refiner.py output folder")
    ap.add_argument("--n-val", type=int, default=8, help="last synthetic training images used for validation")
    ap.add_argument("--seeds", type=int, default=3, help="C2ST repeats (folds and classifier seeds)")
    ap.add_argument("--c2st-steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1, help="torch/OpenCV/BLAS threads (applied on import)")
    args = ap.parse_args()
    need = ["synthetic_train", "synthetic_test", "real_train", "real_heldout", "run/generators"]
    missing = [n for n in need if not (args.out / n).is_dir()]
    if missing:
        sys.exit(f"{args.out}: missing {missing}; run bench/bench_refiner.py --out {args.out} first")
    checkpoints = sorted((args.out / "run" / "generators").glob("step_*.pt"))
    if not checkpoints:
        sys.exit(f"{args.out / 'run' / 'generators'}: no step_*.pt checkpoints")
    val = load_dataset(args.out / "synthetic_train", labels=True)[-args.n_val:]
    test = load_dataset(args.out / "synthetic_test", labels=True)
    px = test[0].pixel_size_nm
    real_train = normalized(load_image_set(args.out / "real_train"))
    real_heldout = normalized(load_image_set(args.out / "real_heldout"))
    rows = []
    print("| step | validation C2ST (substrate / particles) | test C2ST (substrate / particles) |")
    print("|---|---|---|")
    for path in [None, *checkpoints]:
        gen = None if path is None else load_generator(path)[0]
        step = 0 if path is None else int(path.stem.split("_")[-1])
        row = {"step": step,
               "validation": score(refined_set(gen, val, "val", px), real_train, args.seeds, args.c2st_steps),
               "test": score(refined_set(gen, test, "test", px), real_heldout, args.seeds, args.c2st_steps)}
        rows.append(row)
        cells = [f"{row[k]['c2st']:.3f} ({row[k]['substrate']:.3f} / {row[k]['particles']:.3f})"
                 for k in ("validation", "test")]
        print(f"| {step if step else 'procedural'} | {cells[0]} | {cells[1]} |", flush=True)
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    tmp = args.out / "checkpoints.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(args.out / "checkpoints.json")
    plot(rows, args.out / "checkpoints.png")
    print(f"wrote {args.out / 'checkpoints.json'} and {args.out / 'checkpoints.png'}")


if __name__ == "__main__":
    main()
