"""Refiner benchmark: does the learned refiner make synthetic images more realistic without breaking labels?

    1. simulate N training and M test images of a config (default configs/default.toml)
    2. ingest the real reference set split by image: the first 14 for training, the last 6 held out
       (symlinked source folders under OUT: the real images are never copied into the repository)
    3. train the refiner (synthetic train vs real train), timing it
    4. apply it to the synthetic test images
    5. report: label fidelity on the test images (boundary F-score change, frozen-segmenter agreement) and
       realism, C2ST accuracy of procedural vs held-out real and of refined vs held-out real (eval.realism;
       skipped with a message when that module is missing), with the issue's targets.

Run: python bench/bench_refiner.py [--steps 600] [--threads 1] [--out /tmp/semsynth-bench-refiner]
Outputs (all under --out): datasets, the run folder (samples/, fidelity.jsonl, ...), report.md, report.json.
The transfer experiment (a U-Net trained on refined vs unrefined images, tested on real ones) has a hook,
``transfer_experiment``, that runs when eval.segment.unet provides a trainer (--transfer).
"""

from __future__ import annotations

import os
import sys


def _threads_from_argv(default: int = 1) -> int:
    for i, arg in enumerate(sys.argv):
        if arg == "--threads" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return default


# Thread limits must be set before numpy/torch are imported (other work shares the cores).
_THREADS = _threads_from_argv()
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, str(_THREADS))

import argparse
import json
import shutil
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

cv2.setNumThreads(_THREADS)
torch.set_num_threads(_THREADS)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.data.ingest import find_pairs, ingest
from eval.data.reference import DEFAULT_REFERENCE
from refiner.apply import apply
from refiner.data import load_dataset
from refiner.fidelity import FidelityThresholds, default_segmenter, label_fidelity, mean_fidelity
from refiner.nets import GeneratorConfig
from refiner.train import FidelityWarning, RefinerConfig, StepInfo, TrainResult, select_checkpoint, train
from simulator.config import load_config
from simulator.io.writer import write_dataset

TARGET_C2ST_DROP = 0.1
TARGET_C2ST_LEVEL = 0.65


def split_reference(reference: Path, out: Path, n_train: int) -> tuple[Path, Path]:
    """Ingest the first ``n_train`` reference images (sorted by name) and the rest as two datasets; the source
    folders hold symlinks to the original files."""
    pairs = find_pairs(reference)
    if len(pairs) <= n_train:
        raise SystemExit(f"{reference}: {len(pairs)} images, need more than --real-train {n_train}")
    dirs = []
    for name, part in (("real_train", pairs[:n_train]), ("real_heldout", pairs[n_train:])):
        src = out / f"src_{name}"
        shutil.rmtree(src, ignore_errors=True)
        (src / "SEM").mkdir(parents=True)
        (src / "masks").mkdir()
        for image, mask in part:
            (src / "SEM" / image.name).symlink_to(image.resolve())
            if mask is not None:
                (src / "masks" / mask.name).symlink_to(mask.resolve())
        report = ingest(src, out / name, overwrite=True)
        if report.skipped:
            print(f"  {name}: skipped {report.skipped}", file=sys.stderr)
        dirs.append(out / name)
    return dirs[0], dirs[1]


def test_fidelity(test_dir: Path, refined_dir: Path, segmenter, thresholds: FidelityThresholds) -> dict:
    """Label fidelity of every refined test image against its unrefined original's labels."""
    unrefined = load_dataset(test_dir, labels=True)
    refined = load_dataset(refined_dir, labels=False)
    results = [label_fidelity(u.image, r.image, u.labels, u.pixel_size_nm, segmenter, thresholds)
               for u, r in zip(unrefined, refined, strict=True)]
    mean = mean_fidelity(results, thresholds)
    return {"mean": mean.as_dict(), "per_image": [r.as_dict() for r in results]}


def shading_spread(folder: Path) -> dict:
    """Median and quartiles over particles of how unevenly each is lit
    (``eval.calibrate.image_stats.particle_shading_spread``, on images scaled by their own levels as
    ``cli.py realism`` compares them): what the particle shading branch is meant to change."""
    from eval.calibrate.image_stats import particle_shading_spread
    from eval.data.pixels import image_levels, scale_to_levels

    spreads = []
    for item in load_dataset(folder, labels=True):
        low, high = image_levels(item.image)
        spreads.append(particle_shading_spread(scale_to_levels(item.image, low, high - low), item.labels))
    values = np.concatenate(spreads)
    return {"median": float(np.median(values)), "q25": float(np.quantile(values, 0.25)),
            "q75": float(np.quantile(values, 0.75)), "n_particles": int(values.size)}


def realism_scores(procedural: Path, refined: Path, real_heldout: Path, seeds: list[int], steps: int) -> dict | None:
    """C2ST accuracy (one test per seed: the seed sets the image folds and the classifier) and distances of the
    procedural and of the refined test images against the held-out real images."""
    try:
        from eval.realism.c2st import c2st
        from eval.realism.config import RealismConfig
        from eval.realism.data import at_pixel_size, load_image_set, normalized
        from eval.realism.report import distances
    except ImportError as err:
        print(f"realism: eval.realism not available ({err}); C2ST skipped", file=sys.stderr)
        return None
    real = load_image_set(real_heldout)
    out = {}
    for name, folder in (("procedural", procedural), ("refined", refined)):
        t0 = time.perf_counter()
        images = load_image_set(folder)
        real_here = at_pixel_size(real, images.pixel_size_nm)
        runs, runs_normalised = [], []
        for seed in seeds:
            result = c2st(images, real_here, RealismConfig(seed=seed, steps=steps))
            runs.append({"seed": seed, "accuracy": result.accuracy, "ci95": [result.ci_low, result.ci_high]})
            # as `cli.py realism` scores by default: each image scaled by its own intensity percentiles
            norm = c2st(normalized(images), normalized(real_here), RealismConfig(seed=seed, steps=steps))
            runs_normalised.append({"seed": seed, "accuracy": norm.accuracy, "ci95": [norm.ci_low, norm.ci_high],
                                    "by_content": norm.by_content})
            print(f"  C2ST {name} vs held-out real, seed {seed}: raw {result.accuracy:.3f} "
                  f"[{result.ci_low:.3f}, {result.ci_high:.3f}], per-image normalised {norm.accuracy:.3f} "
                  f"[{norm.ci_low:.3f}, {norm.ci_high:.3f}]", file=sys.stderr, flush=True)
        out[name] = {"c2st_accuracy": float(np.mean([r["accuracy"] for r in runs])), "runs": runs,
                     "c2st_accuracy_normalised": float(np.mean([r["accuracy"] for r in runs_normalised])),
                     "normalised_by_content": _mean_by_content([r["by_content"] for r in runs_normalised]),
                     "runs_normalised": runs_normalised,
                     "distances": distances(images, real_here, seed=seeds[0]), "seconds": time.perf_counter() - t0}
    return out


def real_vs_real(real_train: Path, real_heldout: Path, seeds: list[int], steps: int) -> dict:
    """Normalised C2ST of the real training images against the held-out real ones, same seeds and settings: what
    the test scores for two sets of real images of one instrument (with a few images per set, cross-fitting can
    put it below 0.5: a classifier that learns image-specific features misjudges images it has not seen)."""
    from eval.realism.c2st import c2st
    from eval.realism.config import RealismConfig  # present: realism_scores ran
    from eval.realism.data import load_image_set, normalized

    a, b = normalized(load_image_set(real_train)), normalized(load_image_set(real_heldout))
    runs = [c2st(a, b, RealismConfig(seed=seed, steps=steps)).accuracy for seed in seeds]
    print(f"  C2ST real training vs held-out real, normalised: {', '.join(f'{r:.3f}' for r in runs)}",
          file=sys.stderr, flush=True)
    return {"c2st_accuracy_normalised": float(np.mean(runs)), "runs_normalised": runs}


def _mean_by_content(splits: list[dict | None]) -> dict | None:
    """Mean over seeds of the C2ST accuracy of substrate-only crops and of crops holding particles, with the
    share of substrate-only crops in each set (None when a set is unlabelled)."""
    if not splits or any(s is None for s in splits):
        return None
    out = {}
    for kind in ("substrate", "particles"):
        values = [s[kind]["accuracy"] for s in splits if s[kind]["accuracy"] is not None]
        out[kind] = float(np.mean(values)) if values else None
    for side in ("a", "b"):
        sub = sum(s["substrate"][f"n_crops_{side}"] for s in splits)
        out[f"substrate_share_{side}"] = sub / (sub + sum(s["particles"][f"n_crops_{side}"] for s in splits))
    return out


def transfer_experiment(refined_train: Path, procedural_train: Path, real_labelled: Path) -> dict | None:
    """Hook for the transfer experiment: train one segmenter on refined and one on procedural images, test both
    on labelled real images. Runs when eval.segment.unet offers ``train_unet(dataset_dir, out_dir)``; else None."""
    try:
        from eval.segment.unet import train_unet  # noqa: F401
    except ImportError as err:
        print(f"transfer: not available yet ({err})", file=sys.stderr)
        return None
    raise NotImplementedError("transfer experiment: wire eval.segment.unet.train_unet here once its API is settled")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/semsynth-bench-refiner"))
    ap.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "configs" / "default.toml")
    ap.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    ap.add_argument("--n-train", type=int, default=24, help="synthetic training images (+ 2 held out for checks)")
    ap.add_argument("--n-test", type=int, default=8, help="synthetic test images (refined and scored)")
    ap.add_argument("--real-train", type=int, default=14, help="first reference images used for training")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--crop-px", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--checkpoint-every", type=int, default=100)
    ap.add_argument("--sample-every", type=int, default=100)
    ap.add_argument("--c2st-steps", type=int, default=600)
    ap.add_argument("--c2st-seeds", type=int, default=3, help="C2ST repeats (folds and classifier seeds)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--d-view", default="normalised", choices=("normalised", "raw"),
                    help="what the discriminator sees (RefinerConfig.d_view)")
    ap.add_argument("--levels", default="real", choices=("real", "learned", "none"),
                    help="per-image black/white levels of the refined images (GeneratorConfig.levels)")
    ap.add_argument("--no-texture", action="store_true", help="without the substrate texture branch (ablation)")
    ap.add_argument("--no-particle", action="store_true", help="without the particle shading branch (ablation)")
    ap.add_argument("--detail-max", type=float, default=GeneratorConfig().detail_max,
                    help="bound of the log factor on fine detail (GeneratorConfig.detail_max; 0 = off)")
    ap.add_argument("--train-seed", type=int, default=None,
                    help="seed of the refiner's training only (default: --seed; data and C2ST keep --seed)")
    ap.add_argument("--lr-d", type=float, default=RefinerConfig().lr_d,
                    help="discriminator learning rate (RefinerConfig.lr_d)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--reuse", action="store_true", help="keep datasets already in --out (skip simulate/ingest)")
    ap.add_argument("--resume", action="store_true", help="resume the training run in --out/run")
    ap.add_argument("--skip-training", action="store_true",
                    help="score the finished run in --out/run again (its generator selected by the current rule)")
    ap.add_argument("--transfer", action="store_true", help="also run the transfer experiment hook")
    args = ap.parse_args()
    if not (args.reference / "SEM").is_dir():
        raise SystemExit(f"reference images not found at {args.reference} (pass --reference DIR)")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    timings = {}

    t0 = time.perf_counter()
    cfg = load_config(args.config)
    syn_train, syn_test = out / "synthetic_train", out / "synthetic_test"
    if not (args.reuse and (syn_train / "manifest.json").exists() and (syn_test / "manifest.json").exists()):
        print(f"simulating {args.n_train + 2} training + {args.n_test} test images ...", file=sys.stderr)
        write_dataset(syn_train, cfg, n_images=args.n_train + 2, seed=args.seed + 1, overwrite=True)
        write_dataset(syn_test, cfg, n_images=args.n_test, seed=args.seed + 1000, overwrite=True)
    real_train, real_heldout = out / "real_train", out / "real_heldout"
    if not (args.reuse and (real_train / "manifest.json").exists() and (real_heldout / "manifest.json").exists()):
        real_train, real_heldout = split_reference(args.reference, out, args.real_train)
    timings["data_s"] = time.perf_counter() - t0

    seg_name, segmenter = default_segmenter()
    config = RefinerConfig(d_view=args.d_view, lr_d=args.lr_d, generator=GeneratorConfig(levels=args.levels,
                                                                           texture=not args.no_texture,
                                                                           particle=not args.no_particle,
                                                                           detail_max=args.detail_max))
    run = out / "run"
    if run.exists() and not (args.resume or args.skip_training):
        shutil.rmtree(run)
    print(f"training {args.steps} steps ({args.crop_px} px crops, batch {args.batch_size}, {args.threads} "
          f"thread(s), segmenter: {seg_name}) -> {run}", file=sys.stderr)

    def progress(info: StepInfo) -> None:
        if info.step % 25 == 0 or info.step == info.steps:
            loss = info.losses
            print(f"  step {info.step:5d}/{info.steps}  {info.elapsed_s:7.0f} s  D {loss['d_loss']:.3f}  "
                  f"G adv {loss['g_adv']:.3f}  content {loss['content']:.4f}  noise {loss['noise']:.3f}",
                  file=sys.stderr, flush=True)
        if info.evaluation is not None:
            e = info.evaluation
            f = e["fidelity"]
            print(f"  checkpoint {info.step}: boundary F {f['boundary_f_unrefined']:.3f} -> "
                  f"{f['boundary_f_refined']:.3f}, segmenter mIoU {f['segmenter_miou']:.3f}, appearance gap "
                  f"{e['appearance']['gap']:.2f}, {'ok' if e['passed'] else 'FAILS FIDELITY'}",
                  file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    if args.skip_training:  # score the run already in --out/run, selecting its generator by config.select
        selected = select_checkpoint(run, config.select)
        evaluations = [json.loads(line) for line in (run / "fidelity.jsonl").read_text().splitlines() if line]
        steps_done = max(e["step"] for e in evaluations)
        result = TrainResult(str(run), steps_done, selected, evaluations, float("nan"), float("nan"))
        print(f"existing run {run}: {steps_done} steps, selected checkpoint {selected} ({config.select})",
              file=sys.stderr)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("always", FidelityWarning)
            result = train(syn_train, real_train, run, steps=args.steps, crop_px=args.crop_px,
                           batch_size=args.batch_size,
                           seed=args.seed if args.train_seed is None else args.train_seed, device=args.device,
                           resume=args.resume, on_step=progress, sample_every=args.sample_every,
                           checkpoint_every=args.checkpoint_every, config=config, segmenter=segmenter)
    timings["train_s"] = time.perf_counter() - t0 if not args.skip_training else float("nan")
    timings["train_s_per_step"] = result.seconds_per_step
    if result.selected_step is None:
        raise SystemExit("no checkpoint passed the label-fidelity checks; see " + str(run / "fidelity.jsonl"))

    t0 = time.perf_counter()
    refined_test = out / "refined_test"
    apply(run, syn_test, refined_test, overwrite=True, device=args.device)
    timings["apply_s_per_image"] = (time.perf_counter() - t0) / args.n_test

    t0 = time.perf_counter()
    fidelity = test_fidelity(syn_test, refined_test, segmenter, config.fidelity)
    timings["fidelity_s"] = time.perf_counter() - t0
    spread = {name: shading_spread(folder) for name, folder in
              (("procedural", syn_test), ("refined", refined_test), ("real_heldout", real_heldout))}
    t0 = time.perf_counter()
    c2st_seeds = [args.seed + k for k in range(args.c2st_seeds)]
    realism = realism_scores(syn_test, refined_test, real_heldout, c2st_seeds, args.c2st_steps)
    floor = real_vs_real(real_train, real_heldout, c2st_seeds, args.c2st_steps) if realism is not None else None
    timings["realism_s"] = time.perf_counter() - t0
    transfer = transfer_experiment(out / "refined_train", syn_train, real_heldout) if args.transfer else None

    f = fidelity["mean"]
    rows = [
        ("selected checkpoint (step)", f"{result.selected_step}"),
        ("boundary F-score, unrefined test images", f"{f['boundary_f_unrefined']:.3f}"),
        ("boundary F-score, refined test images", f"{f['boundary_f_refined']:.3f}"),
        ("boundary F change (target: within +-0.02)",
         f"{f['boundary_f_change']:+.4f} ({'met' if abs(f['boundary_f_change']) <= 0.02 else 'NOT met'})"),
        (f"frozen segmenter ({seg_name}) mIoU unrefined vs refined (target >= 0.95)",
         f"{f['segmenter_miou']:.4f} ({'met' if f['segmenter_miou'] >= 0.95 else 'NOT met'})"),
        ("  foreground IoU / pixel agreement", f"{f['segmenter_foreground_iou']:.4f} / "
                                               f"{f['segmenter_pixel_agreement']:.4f}"),
    ]
    rows.append(("particle shading spread (10-90 % range of a particle core, levels scaled; median over "
                 "particles): procedural / refined / held-out real",
                 " / ".join(f"{spread[k]['median']:.3f}" for k in ("procedural", "refined", "real_heldout"))))
    if realism is not None:
        a0, a1 = realism["procedural"]["c2st_accuracy"], realism["refined"]["c2st_accuracy"]
        met = (a0 - a1 >= TARGET_C2ST_DROP) or a1 <= TARGET_C2ST_LEVEL
        each = {k: ", ".join(f"{r['accuracy']:.3f}" for r in realism[k]["runs"]) for k in ("procedural", "refined")}
        n = args.c2st_seeds
        rows += [
            (f"C2ST accuracy, procedural vs held-out real (mean of {n} seeds)", f"{a0:.3f} ({each['procedural']})"),
            (f"C2ST accuracy, refined vs held-out real (mean of {n} seeds)", f"{a1:.3f} ({each['refined']})"),
            (f"C2ST drop (target >= {TARGET_C2ST_DROP} or refined <= {TARGET_C2ST_LEVEL})",
             f"{a0 - a1:+.3f} ({'met' if met else 'NOT met'})"),
        ]
        b0, b1 = (realism[k]["c2st_accuracy_normalised"] for k in ("procedural", "refined"))
        met_n = (b0 - b1 >= TARGET_C2ST_DROP) or b1 <= TARGET_C2ST_LEVEL
        rows += [
            (f"C2ST per-image normalised (cli.py realism default), procedural / refined (mean of {n} seeds)",
             f"{b0:.3f} / {b1:.3f}: drop {b0 - b1:+.3f} ({'met' if met_n else 'NOT met'})"),
        ]
        if floor is not None:
            rows.append((f"  for scale: real training vs held-out real images, normalised (mean of {n} seeds)",
                         f"{floor['c2st_accuracy_normalised']:.3f} "
                         f"({', '.join(f'{r:.3f}' for r in floor['runs_normalised'])})"))
        split = {k: realism[k]["normalised_by_content"] for k in ("procedural", "refined")}
        if all(v is not None for v in split.values()):
            fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
            rows += [
                ("  by crop content: substrate-only crops, procedural / refined",
                 f"{fmt(split['procedural']['substrate'])} / {fmt(split['refined']['substrate'])}"),
                ("  by crop content: crops holding particles, procedural / refined",
                 f"{fmt(split['procedural']['particles'])} / {fmt(split['refined']['particles'])}"),
                ("  share of substrate-only test crops: synthetic / held-out real",
                 f"{split['procedural']['substrate_share_a']:.2f} / {split['procedural']['substrate_share_b']:.2f}"),
            ]
        for key in ("intensity_w1", "gradient_w1_per_nm", "spectrum_rms_log10"):
            rows.append((f"{key}: procedural / refined vs real",
                         f"{realism['procedural']['distances'][key]:.4g} / {realism['refined']['distances'][key]:.4g}"))
    else:
        rows.append(("C2ST", "skipped (eval.realism missing)"))
    rows += [
        ("training time (s), per step", "not trained in this call (--skip-training)" if args.skip_training
         else f"{timings['train_s']:.0f}, {timings['train_s_per_step']:.2f}"),
        ("apply (s per 1024 x 768 image)", f"{timings['apply_s_per_image']:.2f}"),
        ("threads, device", f"{args.threads}, {args.device}"),
    ]
    table = "| quantity | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    (out / "report.md").write_text(table)
    (out / "report.json").write_text(json.dumps({
        "args": {k: str(v) for k, v in vars(args).items()}, "segmenter": seg_name, "timings": timings,
        "selected_step": result.selected_step, "checkpoints": [
            {"step": e["step"], "passed": e["passed"], "selected": e["selected"], "fidelity": e["fidelity"],
             "appearance": e["appearance"]} for e in result.evaluations],
        "test_fidelity": fidelity, "shading_spread": spread, "realism": realism, "real_vs_real": floor,
        "transfer": transfer,
    }, indent=1))
    print(table)
    print(f"report: {out / 'report.md'}, samples: {run / 'samples'}")


if __name__ == "__main__":
    main()
