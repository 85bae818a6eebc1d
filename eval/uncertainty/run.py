"""``cli.py uncertainty``: train K models under each source of variation, evaluate each on the same test images,
and decompose the spread of their measurement (``eval.uncertainty.budget``).

    plan: a training-set draws x r seeds (crossed; every run its own seed, spawned from one SeedSequence)
      draw i: a bootstrap resample of the real training images (by image), or a fresh training set simulated
              from a config (--train-config)                                   -> training-set sampling
      seed j: the model's initialisation and data order                        -> retraining
    each unit (one trained model, kill-safe: OUT/units/dI_sJ.json written atomically, skipped when present)
      evaluates on the test images as they are and on n noise re-draws (Gaussian noise at each image's measured
      substrate noise added; each model its own draws)                          -> input noise
    then B bootstrap resamples of the test images (by image, each model its own) of its nominal result
                                                                                -> test sampling

Per image and condition a unit keeps the predicted sizes (ECD, nm) of the counted predictions and the match
counts, so every resample's D50 / D10 / D90 / F1 is recomputed without running the model again.

Families: ``unet`` (eval.segment.unet.train_unet on the drawn images) and ``toy`` (no training: a measurement
with known variance components, for tests of the whole orchestration).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from eval.uncertainty.budget import TRAIN, bootstrap_image_indices, images_needed_to_halve, uncertainty_budget

MEASURANDS = ("D50_nm", "D10_nm", "D90_nm", "dg_nm", "sigma_g", "F1")
FAMILIES = ("unet", "toy")


@dataclass(frozen=True, slots=True)
class UncertaintyPlan:
    family: str
    train_dir: str | None  # real training images (dataset folder), resampled by image; None for the toy
    test_dir: str | None
    train_config: str | None = None  # or: a simulator config; each draw simulates a fresh training set
    train_images: int = 15  # images per simulated training set
    draws: int = 4  # training-set draws (bootstrap resamples of the training images)
    seeds: int = 2  # seeds per draw
    noise_draws: int = 3
    test_boot: int = 50
    steps: int = 200  # U-Net training steps
    crop_px: int = 128
    base_channels: int = 8
    seed: int = 0
    toy_sigmas: tuple[float, float, float, float] = (3.0, 2.0, 1.0, 1.5)  # train, seed, noise, per-image

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"model family must be one of {FAMILIES}, got {self.family!r}")
        if self.draws < 2 or self.seeds < 2:
            raise ValueError(f"need at least 2 training draws and 2 seeds each, got {self.draws} x {self.seeds}")
        if self.noise_draws < 2 or self.test_boot < 2:
            raise ValueError(f"need at least 2 noise re-draws and 2 test bootstraps, got {self.noise_draws}, "
                             f"{self.test_boot}")


def _unit_id(i: int, j: int) -> str:
    return f"d{i:02d}_s{j:02d}"


def unit_seeds(plan: UncertaintyPlan) -> dict[str, dict[str, int]]:
    """Per unit: the seed of its training-set draw (shared by the draw's seeds) and its own model seed."""
    root = np.random.SeedSequence(plan.seed)
    draw_ss = root.spawn(plan.draws)
    out = {}
    for i, ss in enumerate(draw_ss):
        select_seed = int(ss.generate_state(1)[0])
        for j, child in enumerate(ss.spawn(plan.seeds)):
            out[_unit_id(i, j)] = {"draw": i, "seed_index": j, "select_seed": select_seed,
                                   "model_seed": int(child.generate_state(1)[0] % (2**31))}
    return out


def _noise_seed(unit: dict, k: int) -> int:
    """Noise re-draw k of one model: every model gets its own draws, so the pooled within-model variance has
    M (n - 1) independent degrees of freedom (shared draws would make the models' rows copies of one another)."""
    return int(np.random.SeedSequence([unit["model_seed"], 7919, k]).generate_state(1)[0])


def _hash_normal(*key) -> float:
    """A standard normal value determined by ``key`` (the toy's hidden effects)."""
    digest = hashlib.sha256(json.dumps(key).encode()).digest()
    return float(np.random.default_rng(int.from_bytes(digest[:8], "little")).standard_normal())


# ------------------------------------------------------------------------------------------------ one unit


def _toy_unit(plan: UncertaintyPlan, unit: dict, n_test: int = 12) -> dict:
    """A measurement mu + a(draw) + b(draw, seed) + c(noise draw) + e(image), e fixed per test image; the
    measurand over a set of images is their mean (so test sampling has a known bootstrap variance)."""
    s_train, s_seed, s_noise, s_img = plan.toy_sigmas
    a = s_train * _hash_normal("draw", plan.seed, unit["select_seed"])
    b = s_seed * _hash_normal("seed", plan.seed, unit["model_seed"])
    e = [s_img * _hash_normal("image", plan.seed, k) for k in range(n_test)]

    def condition(c: float) -> list[dict]:
        return [{"value": 200.0 + a + b + c + e[k], "ecd_nm": [], "tp": 0, "fp": 0, "fn": 0} for k in range(n_test)]

    return {"nominal": condition(0.0),
            "noise": [condition(s_noise * _hash_normal("noise", plan.seed, unit["model_seed"], k))
                      for k in range(plan.noise_draws)]}


def _subset_dataset(src: Path, indices: Sequence[int], out: Path) -> Path:
    """A dataset of the images ``indices`` of ``src`` (repeats allowed: a bootstrap resample), pixels and labels
    symlinked under new names, ids renumbered."""
    src = Path(src)
    coco = json.loads((src / "annotations.json").read_text())
    images = coco["images"]
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    tmp = out.with_name(out.name + ".tmp")
    for sub in ("images", "labels"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    new_images, new_anns = [], []
    for n, idx in enumerate(indices):
        info = dict(images[idx])
        name = f"{n:03d}_{Path(info['file_name']).name}"
        link = tmp / "images" / name
        if not link.exists():
            link.symlink_to((src / "images" / Path(info["file_name"]).name).resolve())
        new = {**info, "id": n + 1, "file_name": name}
        if info.get("label_file"):
            label_name = f"labels/{n:03d}_{Path(info['label_file']).name}"
            if not (tmp / label_name).exists():
                (tmp / label_name).symlink_to((src / info["label_file"]).resolve())
            new["label_file"] = label_name
        new_images.append(new)
        for a in by_image.get(info["id"], []):
            new_anns.append({**a, "id": len(new_anns) + 1, "image_id": n + 1})
    (tmp / "annotations.json").write_text(json.dumps({**coco, "images": new_images, "annotations": new_anns}))
    manifest = json.loads((src / "manifest.json").read_text()) if (src / "manifest.json").exists() else {}
    (tmp / "manifest.json").write_text(json.dumps({**manifest, "n_images": len(new_images), "subset_of": str(src)}))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.replace(out)
    return out


def _evaluate_images(model, items, noise_seed: int | None) -> list[dict]:
    """Per image: predicted ECDs of the counted predictions and match counts; with ``noise_seed``, Gaussian noise
    at the image's measured substrate noise added first."""
    from eval.factors import substrate_noise_std
    from eval.metrics.matching import ImageSample, match_image

    out = []
    for k, item in enumerate(items):
        image = item.image
        if noise_seed is not None:
            rng = np.random.default_rng([noise_seed, k])
            sigma = substrate_noise_std(image, item.true_ids)
            image = np.clip(image + rng.normal(0.0, sigma, image.shape).astype(np.float32), 0.0, 1.0)
        px = float(item.info["pixel_size_nm"])
        pred = model(image, px, item.info)
        m = match_image(ImageSample(item.true_ids, pred.ids, px, pred.scores, item.ignore_ids))
        out.append({"ecd_nm": [round(float(v), 3) for v in m.pred_ecd_nm], "tp": m.tp, "fp": m.fp, "fn": m.fn})
    return out


def _unet_unit(plan: UncertaintyPlan, unit: dict, work: Path) -> dict:
    from eval.evaluate import labelled_images
    from eval.segment.registry import load_model
    from eval.segment.unet import UNetConfig, train_unet
    from simulator.io.reader import read_dataset

    uid = _unit_id(unit["draw"], unit["seed_index"])
    if plan.train_config:  # a fresh simulated training set per draw (the draw's seeds share it: same seed)
        from simulator.config import load_config
        from simulator.io.writer import write_dataset

        data = work / f"train_{uid}"
        write_dataset(data, load_config(plan.train_config), n_images=plan.train_images,
                      seed=unit["select_seed"] % (2**31), workers=1, overwrite=True)
        pick = np.arange(plan.train_images)
    else:
        n_train = len(read_dataset(plan.train_dir, labels=False).infos)
        pick = np.sort(np.random.default_rng(unit["select_seed"]).integers(0, n_train, n_train))
        data = _subset_dataset(Path(plan.train_dir), pick.tolist(), work / f"train_{uid}")  # per unit: no races
    ckpt = work / f"{uid}.pt"
    train_unet([data], ckpt, steps=plan.steps, crop_px=plan.crop_px, batch_size=4, seed=unit["model_seed"],
               device="auto", overwrite=True, checkpoint_every=max(plan.steps, 1),
               model=UNetConfig(base_channels=plan.base_channels, depth=3, max_channels=64, head_channels=8))
    model = load_model(f"unet:{ckpt}")
    items = list(labelled_images(plan.test_dir))
    result = {"nominal": _evaluate_images(model, items, None),
              "noise": [_evaluate_images(model, items, _noise_seed(unit, k)) for k in range(plan.noise_draws)],
              "train_images": pick.tolist()}
    ckpt.unlink(missing_ok=True)  # the measurements are kept, the weights are not (K models x MBs)
    return result


def run_unit(args: tuple) -> str:
    """Train and evaluate one unit; write OUT/units/ID.json atomically. Returns the unit id."""
    plan_dict, unit_id, unit, out = args
    plan = UncertaintyPlan(**{**plan_dict, "toy_sigmas": tuple(plan_dict["toy_sigmas"])})
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    path = Path(out) / "units" / f"{unit_id}.json"
    if path.exists():
        return unit_id
    work = Path(out) / "work"
    work.mkdir(parents=True, exist_ok=True)
    result = _toy_unit(plan, unit) if plan.family == "toy" else _unet_unit(plan, unit, work)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"unit": unit_id, **unit, **result}))
    tmp.replace(path)
    return unit_id


# ------------------------------------------------------------------------------------------------ measurands


def measure(images: Sequence[dict], family: str) -> dict[str, float]:
    """The measurands over a set of per-image results (pooled ECDs for D10/D50/D90, summed counts for F1)."""
    if family == "toy":
        return {"D50_nm": float(np.mean([im["value"] for im in images])), "D10_nm": math.nan, "D90_nm": math.nan,
                "dg_nm": math.nan, "sigma_g": math.nan, "F1": math.nan}
    ecd = np.concatenate([np.asarray(im["ecd_nm"], float) for im in images]) if images else np.zeros(0)
    tp, fp, fn = (sum(im[k] for im in images) for k in ("tp", "fp", "fn"))
    d10, d50, d90 = np.percentile(ecd, [10, 50, 90]) if ecd.size else (math.nan,) * 3
    log_ecd = np.log(ecd[ecd > 0])
    dg, sg = (float(np.exp(log_ecd.mean())), float(np.exp(log_ecd.std()))) if log_ecd.size > 1 else (math.nan,) * 2
    return {"D50_nm": float(d50), "D10_nm": float(d10), "D90_nm": float(d90), "dg_nm": dg, "sigma_g": sg,
            "F1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan}


def tables(plan: UncertaintyPlan, units: dict[str, dict]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per measurand: (training table a x r, noise table M x n, test table M x B). Every condition and resample is
    measured once, for all measurands together."""
    order = [_unit_id(i, j) for i in range(plan.draws) for j in range(plan.seeds)]
    nominal = {u: measure(units[u]["nominal"], plan.family) for u in order}
    noise = {u: [measure(cond, plan.family) for cond in units[u]["noise"]] for u in order}
    n_test = len(units[order[0]]["nominal"])
    test = {}
    for u in order:  # each model its own resamples (shared ones would make the rows copies: df overstated)
        boots = bootstrap_image_indices(n_test, plan.test_boot, np.random.default_rng([units[u]["model_seed"], 104729]))
        test[u] = [measure([units[u]["nominal"][k] for k in b], plan.family) for b in boots]
    return {name: (np.array([[nominal[_unit_id(i, j)][name] for j in range(plan.seeds)] for i in range(plan.draws)]),
                   np.array([[m[name] for m in noise[u]] for u in order]),
                   np.array([[m[name] for m in test[u]] for u in order]))
            for name in nominal[order[0]]}


def run(plan: UncertaintyPlan, out: Path, *, workers: int = 1,
        on_unit: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) every unit, then write uncertainty.json, budget.md and budget.png into ``out``."""
    out = Path(out)
    (out / "units").mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(json.dumps(asdict(plan), indent=1))
    seeds = unit_seeds(plan)
    todo = [(asdict(plan), uid, unit, str(out)) for uid, unit in seeds.items()
            if not (out / "units" / f"{uid}.json").exists()]
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(workers) as pool:
            for uid in pool.map(run_unit, todo):
                if on_unit:
                    on_unit(uid)
    else:
        for args in todo:
            run_unit(args)
            if on_unit:
                on_unit(args[1])
    units = {uid: json.loads((out / "units" / f"{uid}.json").read_text()) for uid in seeds}
    measurands = ("D50_nm",) if plan.family == "toy" else MEASURANDS
    budgets, models = {}, []
    all_tables = tables(plan, units)
    for name in measurands:
        training, noise, test = all_tables[name]
        if not np.all(np.isfinite(training)):
            continue
        budget = uncertainty_budget(training, noise, test, measurand=name)
        budgets[name] = {**budget.as_dict(), "tables": {"training": training.tolist(), "noise": noise.tolist(),
                                                         "test": test.tolist()}}
        if name == "D50_nm":
            train_comp = budget.component(TRAIN)
            n_train = len(units[next(iter(units))].get("train_images", [])) or None
            budgets[name]["images_to_halve_training_component"] = (
                images_needed_to_halve(train_comp, n_train) if n_train and train_comp.u > 0 else None)
    for uid in seeds:
        models.append({"unit": uid, **{k: units[uid][k] for k in ("draw", "seed_index", "model_seed")},
                       "nominal": measure(units[uid]["nominal"], plan.family)})
    result = {"plan": asdict(plan), "budgets": budgets, "models": models}
    tmp = out / "uncertainty.json.tmp"
    tmp.write_text(json.dumps(result, indent=1, default=float))
    tmp.replace(out / "uncertainty.json")
    _report(result, units, plan, out)
    return result


def _report(result: dict, units: dict, plan: UncertaintyPlan, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [f"# Uncertainty budget ({plan.family}, {plan.draws} training draws x {plan.seeds} seeds, "
             f"{plan.noise_draws} noise re-draws, {plan.test_boot} test bootstraps)", ""]
    for name, b in result["budgets"].items():
        lines += [f"## {name}: mean {b['mean']:.4g}, u_c {b['u_c']:.3g}, U (k = 2) {b['U']:.3g}", "",
                  "| component | u | 95 % interval | df | method |", "|---|---|---|---|---|"]
        lines += [f"| {c['name']} | {c['u']:.3g} | {c['u_low']:.3g}-{c['u_high']:.3g} | {c['df']:.3g} | "
                  f"{c['method']} |" for c in b["components"]]
        lines.append("")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    if "D50_nm" in result["budgets"]:
        comps = result["budgets"]["D50_nm"]["components"]
        u = [c["u"] for c in comps]
        err = [[c["u"] - c["u_low"] for c in comps], [c["u_high"] - c["u"] for c in comps]]
        axes[0].barh([c["name"] for c in comps], u, xerr=err, color="tab:blue", alpha=0.7)
        axes[0].set_xlabel("standard uncertainty of D50 (nm), 95 % interval")
    if plan.family != "toy":
        for uid, unit in units.items():
            ecd = np.sort(np.concatenate([np.asarray(im["ecd_nm"], float) for im in unit["nominal"]]))
            if ecd.size:
                axes[1].plot(ecd, np.linspace(0, 1, ecd.size), lw=0.8, label=uid)
        axes[1].set_xlabel("predicted ECD (nm)")
        axes[1].set_ylabel("cumulative fraction")
        axes[1].set_title("size distributions of the K models", fontsize=9)
    else:
        axes[1].axis("off")
    fig.tight_layout()
    fig.savefig(out / "budget.png.tmp.png", dpi=90)
    plt.close(fig)
    (out / "budget.png.tmp.png").replace(out / "budget.png")
    lines.append("![budget](budget.png)")
    (out / "budget.md").write_text("\n".join(lines) + "\n")
