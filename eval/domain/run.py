"""``cli.py domain fit|check|sample``: inputs checked first, then the work, outputs written atomically."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np

from eval.domain.check import LevelMap, Range, check_image, level_maps, load_ranges
from eval.domain.model import DEFAULT_FACTORS, DomainModel, bootstrap_p_values, fit_domain, sample, typicality
from simulator.io.errors import UserError


def factor_rows(source: Path, on_image: Callable[[int], None] | None = None) -> tuple[list[dict], list[str]]:
    """Per-image factor rows and image names from a factors JSON (``cli.py factors``) or a dataset folder."""
    from eval.factors import dataset_factors, open_dataset

    source = Path(source)
    if source.is_file():
        try:
            blob = json.loads(source.read_text())
            images = blob["images"]
        except (ValueError, KeyError, TypeError):
            raise UserError(source, "is not a factors file", "the JSON that `cli.py factors DIR --out F` writes, "
                            "or a dataset folder") from None
    elif source.is_dir():
        images = dataset_factors(open_dataset(source), on_image=on_image)["images"]
    else:
        raise UserError(source, "does not exist", "a dataset folder or a factors JSON")
    if not images:
        raise UserError(source, "lists no images", "at least one image")
    rows = [{k: (float("nan") if v is None else v) for k, v in im.items() if k != "file_name"} for im in images]
    return rows, [im["file_name"] for im in images]


def load_domain(path: Path) -> DomainModel:
    try:
        return DomainModel.from_dict(json.loads(Path(path).read_text())["model"])
    except FileNotFoundError:
        raise UserError(path, "does not exist", "a domain file written by `cli.py domain fit`") from None
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(path, f"is not a domain file ({err})", "the JSON that `cli.py domain fit` writes") from None


def fit_file(rows: list[dict], names: list[str], source: Path, *, n_boot: int = 200, seed: int = 0) -> dict:
    """The domain file's content: the model, per training image its leave-one-out typicality (how a held-out
    image of the same kind scores) and the bootstrap spread of that score."""
    try:
        model = fit_domain(rows, DEFAULT_FACTORS, images=names)
    except ValueError as err:
        raise UserError(source, str(err), "tens of images with masks, factors that vary") from None
    loo = []
    for i, name in enumerate(names):
        others = [r for j, r in enumerate(rows) if j != i]
        try:
            p = typicality(fit_domain(others, DEFAULT_FACTORS), rows[i]).p_value
        except ValueError:
            p = float("nan")
        loo.append({"image": name, "p_value_left_out": p})
    rng = np.random.default_rng(seed)
    median_row = {n: float(np.median([r[n] for r in rows])) for n in model.names}
    median_row.update(model.fixed)
    boot = bootstrap_p_values(rows, median_row, n_boot=n_boot, rng=rng)
    return {"source": str(source), "n_images": len(rows), "model": model.as_dict(), "leave_one_out": loo,
            "bootstrap": {"n": int(boot.size), "median_image_p_value": [float(np.percentile(boot, 2.5)),
                                                                       float(np.percentile(boot, 97.5))]
                          if boot.size else None}}


def robustness_inputs(run_dir: Path, on_image: Callable[[int], None] | None = None
                      ) -> tuple[list[Range], dict[str, LevelMap]]:
    """Operating ranges of a robustness run folder and the level maps measured on its own images."""
    from eval.factors import dataset_factors, open_dataset

    run_dir = Path(run_dir)
    for needed in ("robustness.json", "per_image.csv", "dataset"):
        if not (run_dir / needed).exists():
            raise UserError(run_dir / needed, "is missing", "the output folder of `cli.py robustness` (with its "
                            "dataset/)")
    try:
        ranges = load_ranges(run_dir / "robustness.json")
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(run_dir / "robustness.json", str(err), "a one-at-a-time robustness run") from None
    measured = dataset_factors(open_dataset(run_dir / "dataset"), on_image=on_image)["images"]
    factors_of = {im["file_name"]: im for im in measured}
    return ranges, level_maps(run_dir / "per_image.csv", factors_of, ranges)


def check_rows(model: DomainModel, rows: list[dict], names: list[str], ranges=(), maps=None, *,
               alpha: float = 1e-3) -> list[dict]:
    return [check_image(name, row, model, ranges, maps, alpha=alpha) for name, row in zip(names, rows, strict=True)]


def base_snr(cfg, seed: int = 0) -> float:
    """The SNR of one image of ``cfg`` (what ``sample_configs`` scales the probe current from)."""
    from eval.factors import image_factors
    from simulator.pipeline import simulate_image

    probe = simulate_image(cfg, seed, 0)
    return image_factors(probe.image, cfg.image.pixel_size_nm, probe.render.instance_id).snr


def sample_configs(model: DomainModel, base, n: int, *, seed: int = 0, shift: Mapping[str, float] | None = None,
                   snr_at_base: float | None = None) -> list[tuple[dict, object]]:
    """``n`` (factor row, simulator config) pairs drawn from the domain: pixel size, probe blur, coverage and
    (with ``snr_at_base``, the SNR of the base config's images) the probe current set from the drawn factors;
    everything else as in ``base``."""
    out = []
    for row in sample(model, n, seed, shift=shift):
        cfg = base
        if "pixel_size_nm" in row:
            cfg = replace(cfg, image=replace(cfg.image, pixel_size_nm=float(row["pixel_size_nm"])))
        if "blur_sigma_nm" in row:
            cfg = replace(cfg, probe=replace(cfg.probe, sigma_nm=float(row["blur_sigma_nm"])))
        if "coverage" in row:
            # the drawn coverage is this image's: no image-to-image density spread on top of it
            cfg = replace(cfg, field=replace(cfg.field, coverage=float(np.clip(row["coverage"], 0.005, 0.6)),
                                             primaries_per_um2=0.0, density_spread=0.0))
        if "snr" in row and snr_at_base:
            # SNR grows as the square root of the dose
            current = base.detector.probe_current_pA * (row["snr"] / snr_at_base) ** 2
            cfg = replace(cfg, detector=replace(cfg.detector, probe_current_pA=float(current)))
        out.append((row, cfg))
    return out
