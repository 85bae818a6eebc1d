"""Bench validity: does a model fail on synthetic images the way it fails on real ones?

The 20 reference images are split by image into 4 folds of 5 test images (fold k tests images 5k..5k+4 in
sorted-name order and trains on the other 15). Per fold and simulator config:

    1. the fold's real training and test images are ingested with their class masks (fully visible particles
       are the measured class; the other classes and border particles are ignore regions);
    2. the config's class thresholds are fitted to the annotators' classes of the fold's *training* images
       (class shares and fragment size against the config's synthetic training images); the fold's synthetic
       test images are simulated with them;
    3. three models: a U-Net trained on the fold's real training images (one per seed), a U-Net trained on
       the config's synthetic training images (one per seed, shared by the folds) and watershed;
    4. every model is evaluated on the fold's real test images and on its synthetic test images (measured
       class only); the normalised C2ST of the synthetic against the real test images (one per C2ST seed).

Nothing is chosen on a fold's test images (a parameter is chosen per fold on its training images by
bench/bench_select.py, which shares this bench's --out folder and fitted configs).
The table gives, per config, model and metric, the mean over folds
and seeds of the real value, the synthetic value and their difference (with its SD over folds x seeds), the
issue's tolerance and the verdict; then whether the models rank the same, and the C2ST.

    python bench/bench_validity.py --out /tmp/validity --steps 2000 --seeds 0,1 --jobs 12 --device cuda
    python bench/bench_validity.py --out /tmp/validity --summary           # the table of a finished run
CPU (2 cores): --steps 1500 --crop-px 128 --batch-size 4 --seeds 0 (a U-Net at about 12 steps/s).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")  # each job is single-threaded; --jobs sets the parallelism
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import argparse
import json
import shutil
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval.validate.compare import DEFAULT_TOLERANCES  # noqa: E402
from simulator.io.reader import read_coco, read_dataset  # noqa: E402

METRICS = ("AP50", "F1", "precision", "recall", "split_rate", "merge_rate", "D50_rel_err")
TOLERANCE = DEFAULT_TOLERANCES  # issue 20's, as validate uses them; others 0.05
N_FOLDS, FOLD_SIZE = 4, 5
SLUG = {"U-Net (real-trained)": "unet_real", "U-Net (synthetic-trained)": "unet_syn", "watershed": "watershed"}
DEFAULT_REFERENCE = ROOT.parent / "shared" / "data" / "bam-tio2-sem"


# ------------------------------------------------------------------------------------------------ data
def fold_names(names: list[str], fold: int) -> tuple[list[str], list[str]]:
    """(training, test) image names of fold ``fold``: test = sorted names 5k..5k+4, training = the rest."""
    names = sorted(names)
    test = names[fold * FOLD_SIZE:(fold + 1) * FOLD_SIZE]
    return [n for n in names if n not in test], test


def ingest_subset(reference: Path, names: list[str], out: Path) -> Path:
    """Ingest the named reference images (with masks and class masks) through a folder of symlinks."""
    from eval.data.ingest import ingest

    src = out.parent / f"src_{out.name}"
    shutil.rmtree(src, ignore_errors=True)
    for sub, pattern in (("SEM", "{}.tif"), ("masks", "{}_m.tif"), ("classes", "{}_cm.tif")):
        (src / sub).mkdir(parents=True)
        for name in names:
            target = reference / sub / pattern.format(name)
            if target.exists():
                (src / sub / target.name).symlink_to(target.resolve())
    report = ingest(src, out, overwrite=True)
    if report.skipped or len(report.written) != len(names):
        raise SystemExit(f"{out}: ingest skipped {report.skipped}")
    return out


def subset_dataset(src: Path, sources: list[str], out: Path) -> Path:
    """A dataset of the images of ``src`` (ingested) whose source file stem is in ``sources``: symlinked
    pixels and labels, annotations filtered (ids unchanged). Used where the reference folder is not at hand."""
    coco = read_coco(src)
    images = [im for im in coco["images"] if Path(im["source"]).stem in sources]
    if len(images) != len(sources):
        raise SystemExit(f"{src}: found {len(images)} of the images {sources}")
    keep = {im["id"] for im in images}
    shutil.rmtree(out, ignore_errors=True)
    for sub in ("images", "labels"):
        (out / sub).mkdir(parents=True)
    for im in images:
        (out / "images" / im["file_name"]).symlink_to((src / "images" / im["file_name"]).resolve())
        (out / im["label_file"]).symlink_to((src / im["label_file"]).resolve())
    subset = {**coco, "images": images, "annotations": [a for a in coco["annotations"] if a["image_id"] in keep]}
    (out / "annotations.json").write_text(json.dumps(subset))
    manifest = json.loads((src / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "n_images": len(images), "subset_of": str(src)}))
    return out


def class_targets(real_dir: Path, pixel_size_nm: float) -> tuple[dict[str, float], float]:
    """Class shares among classified real particles and the median visible area of real fragments (nm^2)."""
    annotations = [a for anns in read_dataset(real_dir, labels=False).annotations.values() for a in anns]
    classes = [a.get("particle_class") for a in annotations]
    known = [c for c in classes if c]
    shares = {c: known.count(c) / len(known) for c in ("full", "fragment", "under")}
    frag = [a["area"] for a in annotations if a.get("particle_class") == "fragment"]
    return shares, float(np.median(frag)) * pixel_size_nm**2


def fitted_classes(cfg, syn_train: Path, real_train: Path):
    """``cfg`` with class thresholds fitted to the real training images' annotators (via the synthetic
    training set's occlusion and visible areas)."""
    from simulator.classes import fit_thresholds

    px = cfg.image.pixel_size_nm
    anns = [a for per_image in read_dataset(syn_train, labels=False).annotations.values() for a in per_image]
    occ = np.array([a["occluded_fraction"] for a in anns])
    area = np.array([a["area"] for a in anns]) * px**2
    shares, frag_area = class_targets(real_train, px)
    return replace(cfg, classes=fit_thresholds(occ, area, shares, frag_area))


def simulate(cfg, out: Path, n: int, seed: int, workers: int) -> Path:
    from simulator.io.writer import write_dataset

    if not (out / "manifest.json").exists():
        write_dataset(out, cfg, n_images=n, seed=seed, workers=workers, overwrite=True)
    return out


def fitted_config(base, real_train: Path, out_toml: Path, n_sim: int, rounds: int):
    """``base`` calibrated to the real training images by ``cli.py fit``'s rounds (written to ``out_toml``)."""
    from eval.calibrate.fit import dataset_samples, fit, measure
    from simulator.config import config_to_toml, load_config

    if not out_toml.exists():
        real = measure(dataset_samples(real_train), base.shading.et_azimuth_deg)
        pixel_nm = float(np.median([p for p in read_dataset(real_train, labels=False).pixel_sizes_nm() if p]))
        cfg, _ = fit(real, base, n_sim=n_sim, rounds=rounds, seed=0, pixel_size_nm=pixel_nm)
        out_toml.write_text(config_to_toml(cfg, header=f"fitted to {real_train} by bench_validity"))
    return load_config(out_toml)


def syn_checkpoint(out: Path, syn_train: Path, seed: int) -> Path:
    """The synthetic-trained U-Net of a synthetic training set (``syn_NAME[_fK]_train``) and seed."""
    return out / f"unet_{syn_train.name.removesuffix('_train')}_s{seed}.pt"


# ------------------------------------------------------------------------------------------------ jobs
def run(cmd: list[str], log: Path) -> None:
    """A CLI call in its own process (its own CUDA context), output to ``log``; raises on failure."""
    with log.open("w") as fh:
        done = subprocess.run([sys.executable, str(ROOT / "cli.py"), *cmd], stdout=fh, stderr=subprocess.STDOUT,
                              cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {done.returncode}); see {log}")


def train_job(args: tuple) -> Path:
    data, ckpt, steps, seed, device, crop_px, batch_size = args
    if not ckpt.exists():
        cmd = ["segment", "train", "--out", str(ckpt), "--steps", str(steps), "--seed", str(seed),
               "--device", device, "--crop-px", str(crop_px), "--batch-size", str(batch_size), "--overwrite"]
        for d in data:
            cmd += ["--dataset", str(d)]
        run(cmd, ckpt.with_suffix(".log"))
    return ckpt


def evaluate_job(args: tuple) -> dict:
    dataset, spec, out = args
    if not (out / "metrics.json").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        run(["evaluate", "--dataset", str(dataset), "--model", spec, "--out", str(out)],
            out.parent / f"{out.name}.log")
    blob = json.loads((out / "metrics.json").read_text())
    return {k: blob["metrics"][k]["value"] for k in METRICS}


def c2st_job(args: tuple) -> dict:
    syn, real, seed, steps = args
    import torch

    torch.set_num_threads(1)
    from eval.realism.c2st import c2st
    from eval.realism.config import RealismConfig
    from eval.realism.data import at_pixel_size, load_image_set, normalized

    a = load_image_set(syn)
    b = at_pixel_size(load_image_set(real), a.pixel_size_nm)
    result = c2st(normalized(a), normalized(b), RealismConfig(seed=seed, steps=steps))
    content = result.by_content or {}
    return {"accuracy": result.accuracy,
            "particles": (content.get("particles") or {}).get("accuracy"),
            "substrate": (content.get("substrate") or {}).get("accuracy")}


# ------------------------------------------------------------------------------------------------ table
def summarise(results: dict) -> str:
    """Markdown tables: per config and model, real / synthetic / difference (mean over folds x seeds)."""
    lines = []
    for config, per_model in results["metrics"].items():
        lines += [f"\n### {config}\n", "| model | metric | real | synthetic | difference (SD) | tolerance | verdict |",
                  "|---|---|---|---|---|---|---|"]
        f1 = {}
        for model, runs in per_model.items():
            for metric in METRICS:
                real = np.array([r["real"][metric] for r in runs], float)
                syn = np.array([r["synthetic"][metric] for r in runs], float)
                diff = syn - real
                tol = TOLERANCE.get(metric, 0.05)
                ok = abs(np.nanmean(diff)) <= tol
                lines.append(f"| {model} | {metric} | {np.nanmean(real):.3f} | {np.nanmean(syn):.3f} | "
                             f"{np.nanmean(diff):+.3f} ({np.nanstd(diff, ddof=1) if len(diff) > 1 else 0:.3f}) "
                             f"| {tol:.2f} | {'agrees' if ok else 'DISAGREES'} |")
            f1[model] = (np.nanmean([r["real"]["F1"] for r in runs]), np.nanmean([r["synthetic"]["F1"] for r in runs]))
        rank_real = sorted(f1, key=lambda m: -f1[m][0])
        rank_syn = sorted(f1, key=lambda m: -f1[m][1])
        lines.append(f"\nRanking by F1: real {' > '.join(rank_real)}; synthetic {' > '.join(rank_syn)} "
                     f"({'same' if rank_real == rank_syn else 'DIFFERENT'}).")
        c2 = results.get("c2st", {}).get(config)
        if c2:
            acc = [r["accuracy"] for r in c2]
            part = [r["particles"] for r in c2 if r["particles"] is not None]
            sub = [r["substrate"] for r in c2 if r["substrate"] is not None]
            lines.append(f"C2ST (normalised, fold test images vs synthetic, {len(acc)} runs): {np.mean(acc):.3f} "
                         f"(SD {np.std(acc, ddof=1) if len(acc) > 1 else 0:.3f}); particle crops "
                         f"{np.mean(part) if part else float('nan'):.3f}; substrate crops "
                         f"{np.mean(sub) if sub else float('nan'):.3f}.")
    return "\n".join(lines)


def selection(metrics: dict, train_ws: dict, configs: dict, folds: list[int]) -> dict:
    """Per fold, each config's watershed disagreement with the fold's real *training* images (mean of
    |synthetic - real| / tolerance over the metrics) and the config with the least: chosen without test images."""
    out = {}
    for k in folds:
        scores = {}
        for n in configs:
            syn = metrics[n]["watershed"][k, 0]["synthetic"]
            scores[n] = float(np.nanmean([abs(syn[m] - train_ws[k][m]) / TOLERANCE.get(m, 0.05) for m in METRICS]))
        out[str(k)] = {"scores": scores, "chosen": min(scores, key=scores.get)}
    return out


def plot(results: dict, out_png: Path) -> Path:
    """One panel per model: each metric's real value and each config's synthetic value (mean over folds x seeds,
    bars at +-1 SD), the tolerance band around the real value shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = [c for c in results["metrics"] if c != "selected"]
    models = list(results["metrics"][configs[0]])
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.2), squeeze=False)
    x = np.arange(len(METRICS))
    width = 0.8 / (len(configs) + 1)
    for ax, model in zip(axes[0], models, strict=True):
        # the real value of a synthetic-trained model depends on the config it was trained on: first config's
        real = np.array([[r["real"][m] for r in results["metrics"][configs[0]][model]] for m in METRICS], float)
        tol = np.array([TOLERANCE.get(m, 0.05) for m in METRICS])
        mean = np.nanmean(real, 1)
        ax.bar(x - 0.4 + width / 2, mean, width, yerr=np.nanstd(real, 1), color="0.3", label="real")
        ax.bar(x - 0.4 + width / 2, 2 * tol, width * (len(configs) + 1), bottom=mean - tol, color="0.85",
               zorder=0, label="real +- tolerance")
        for i, config in enumerate(configs, start=1):
            syn = np.array([[r["synthetic"][m] for r in results["metrics"][config][model]] for m in METRICS], float)
            ax.bar(x - 0.4 + width / 2 + i * width, np.nanmean(syn, 1), width, yerr=np.nanstd(syn, 1),
                   label=f"{config} synthetic")
        ax.set_xticks(x, [m.replace("_rel_err", " err").replace("_rate", "") for m in METRICS], rotation=30)
        ax.axhline(0, color="k", lw=0.5)
        note = f"\n(real bars: the U-Net trained on {configs[0]})" if "synthetic" in model and len(configs) > 1 else ""
        ax.set_title(model + note, fontsize=10)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Bench validity: real vs synthetic test images (mean over folds x seeds, bars +-1 SD)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    parser.add_argument("--real-dataset", type=Path, default=None,
                        help="the reference images already ingested with classes (instead of --reference)")
    parser.add_argument("--config", action="append", default=None,
                        help="NAME=TOML simulator config to validate (repeat; default: default=configs/default.toml)")
    parser.add_argument("--fit", action="append", default=None,
                        help="NAME=TOML base config fitted per fold on the fold's real training images (cli.py fit's "
                             "calibration: sizes, levels, noise, lighting, crevices), then validated (repeat)")
    parser.add_argument("--fit-n-sim", type=int, default=15, help="simulated images per calibration round")
    parser.add_argument("--fit-rounds", type=int, default=4)
    parser.add_argument("--folds", default="0,1,2,3")
    parser.add_argument("--seeds", default="0,1", help="U-Net training seeds")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--crop-px", type=int, default=256, help="U-Net training crops (128 for a CPU run)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n-test", type=int, default=20, help="synthetic test images per fold")
    parser.add_argument("--n-train", type=int, default=40, help="synthetic training images per config")
    parser.add_argument("--c2st-seeds", default="0,1,2")
    parser.add_argument("--c2st-steps", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--watershed-only", action="store_true", help="no U-Nets (a CPU-sized check)")
    parser.add_argument("--summary", action="store_true", help="print the table of a finished run and stop")
    args = parser.parse_args()
    out = args.out
    if args.summary:
        results = json.loads((out / "validity.json").read_text())
        print(summarise(results))
        print(f"plot: {plot(results, out / 'validity.png')}")
        return
    if args.real_dataset is None and not (args.reference / "classes").is_dir():
        sys.exit(f"{args.reference}: no classes/ folder (the reference set with class masks is needed); skipped")
    from simulator.config import load_config

    fits = dict(c.split("=", 1) for c in (args.fit or []))
    configs = dict(c.split("=", 1) for c in (args.config or ([] if fits else ["default=configs/default.toml"])))
    folds = [int(f) for f in args.folds.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    c2st_seeds = [int(s) for s in args.c2st_seeds.split(",")] if args.c2st_seeds else []
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.real_dataset is not None:
        names = sorted(Path(info["source"]).stem for info in read_coco(args.real_dataset)["images"])
    else:
        names = sorted(p.stem for p in (args.reference / "SEM").glob("*.tif"))
    if len(names) != N_FOLDS * FOLD_SIZE:
        sys.exit(f"{args.reference}: {len(names)} images (expected {N_FOLDS * FOLD_SIZE} for 4 folds of 5)")

    # 1. data: real folds, synthetic training sets, synthetic test sets with fold-fitted class thresholds
    real = {}
    for k in folds:
        train, test = fold_names(names, k)
        for part, subset in (("train", train), ("test", test)):
            d = out / f"real_f{k}_{part}"
            if (d / "manifest.json").exists():
                real[k, part] = d
            elif args.real_dataset is not None:
                real[k, part] = subset_dataset(args.real_dataset, subset, d)
            else:
                real[k, part] = ingest_subset(args.reference, subset, d)
    configs = {**configs, **fits}
    syn_train, syn_test = {}, {}
    for name, path in configs.items():
        base = load_config(ROOT / path if not Path(path).is_absolute() else path)
        for k in folds:
            if name in fits:  # its own config per fold, fitted on the fold's training images only
                cfg = fitted_config(base, real[k, "train"], out / f"fit_{name}_f{k}.toml", args.fit_n_sim,
                                    args.fit_rounds)
                syn_train[name, k] = simulate(cfg, out / f"syn_{name}_f{k}_train", args.n_train, 1, args.jobs)
            else:
                cfg = base
                syn_train[name, k] = simulate(cfg, out / f"syn_{name}_train", args.n_train, 1, args.jobs)
            cfg_k = fitted_classes(cfg, syn_train[name, k], real[k, "train"])
            syn_test[name, k] = simulate(cfg_k, out / f"syn_{name}_f{k}_test", args.n_test, 1000 + k, args.jobs)
    print(f"data ready in {time.perf_counter() - start:.0f} s", flush=True)

    # 2. models
    unet = (args.crop_px, args.batch_size)
    jobs = [([real[k, "train"]], out / f"unet_real_f{k}_s{s}.pt", args.steps, s, args.device, *unet)
            for k in folds for s in seeds]
    jobs += [([syn_train[n, k]], syn_checkpoint(out, syn_train[n, k], s), args.steps, s, args.device, *unet)
             for n in configs for k in (folds if n in fits else folds[:1]) for s in seeds]
    if args.watershed_only:
        jobs = []
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(train_job, jobs))
    print(f"models trained in {time.perf_counter() - start:.0f} s", flush=True)

    # 3. evaluation: every model on the fold's real and synthetic test images
    plan = []  # (config, model name, fold, seed, side, dataset, spec)
    for n in configs:
        for k in folds:
            for s in [] if args.watershed_only else seeds:
                for model, spec in (("U-Net (real-trained)", f"unet:{out / f'unet_real_f{k}_s{s}.pt'}"),
                                    ("U-Net (synthetic-trained)", f"unet:{syn_checkpoint(out, syn_train[n, k], s)}")):
                    for side, data in (("real", real[k, "test"]), ("synthetic", syn_test[n, k])):
                        plan.append((n, model, k, s, side, data, spec))
            for side, data in (("real", real[k, "test"]), ("synthetic", syn_test[n, k])):
                plan.append((n, "watershed", k, 0, side, data, "watershed"))
    evals = [(data, spec, out / "eval" / f"{n}_{SLUG[model]}_f{k}_s{s}_{side}")
             for n, model, k, s, side, data, spec in plan]
    # selection data, training images only: watershed (untrained, so unbiased there) on each fold's real
    # training images; a config's selection score is its watershed disagreement against them
    evals += [(real[k, "train"], "watershed", out / "eval" / f"watershed_f{k}_realtrain") for k in folds]
    with ThreadPoolExecutor(args.jobs) as pool:
        values = list(pool.map(evaluate_job, evals))
    train_ws = dict(zip(folds, values[len(plan):], strict=True))
    values = values[:len(plan)]
    metrics: dict = {}
    for (n, model, k, s, side, _, _), v in zip(plan, values, strict=True):
        runs = metrics.setdefault(n, {}).setdefault(model, {})
        runs.setdefault((k, s), {})[side] = v
    results = {"metrics": {n: {m: [{"fold": k, "seed": s, **r} for (k, s), r in runs.items()]
                               for m, runs in per.items()} for n, per in metrics.items()}}
    results["selection"] = selection(metrics, train_ws, configs, folds)
    results["fitted"] = {n: {str(k): str(out / f"fit_{n}_f{k}.toml") for k in folds} for n in fits}
    if len(configs) > 1:  # the config chosen per fold on its training images, scored on its test images
        chosen = {k: results["selection"][str(k)]["chosen"] for k in folds}
        models = metrics[next(iter(configs))]
        results["metrics"]["selected"] = {
            m: [{"fold": k, "seed": s, "config": chosen[k], **metrics[chosen[k]][m][k, s]}
                for (k, s) in models[m] if (k, s) in metrics[chosen[k]][m]]
            for m in models}
    print(f"evaluated in {time.perf_counter() - start:.0f} s", flush=True)
    (out / "validity.json").write_text(json.dumps(results, indent=1, default=float))  # in case C2ST is cut short

    # 4. realism of each config's synthetic test images against the fold's real test images
    if c2st_seeds:
        c2_jobs = [(syn_test[n, k], real[k, "test"], s, args.c2st_steps) for n in configs for k in folds
                   for s in c2st_seeds]
        with ProcessPoolExecutor(args.jobs) as pool:
            c2 = list(pool.map(c2st_job, c2_jobs))
        results["c2st"] = {}
        for (syn, _, s, _), r in zip(c2_jobs, c2, strict=True):
            n = next(n for n in configs if syn.name.startswith(f"syn_{n}_f"))
            results["c2st"].setdefault(n, []).append({"fold": int(syn.name.split("_f")[-1][0]), "seed": s, **r})
    results["args"] = {k: str(v) for k, v in vars(args).items()}
    results["wall_s"] = time.perf_counter() - start
    (out / "validity.json").write_text(json.dumps(results, indent=1, default=float))
    print(summarise(results))
    print(f"plot: {plot(results, out / 'validity.png')}")
    print(f"\nwall time {results['wall_s']:.0f} s; written {out / 'validity.json'}")


if __name__ == "__main__":
    main()
