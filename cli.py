"""semsynth command line: parse, load config, call the library, write outputs."""

from __future__ import annotations

import json
from pathlib import Path

import click
import typer


class _App(typer.Typer):
    """A Typer whose commands turn bad input into one line and exit code 2 (``_guarded``)."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)
        return lambda fn: register(_guarded(fn))


def _guarded(fn):
    """Run a command: a ``UserError`` (bad input) prints ``error: <file>: <what> (expected <what>)`` and exits 2;
    any other exception is a bug: one line, the traceback in a log file, exit 1."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from simulator.io.errors import UserError, log_internal_error

        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.exceptions.ClickException):
            raise
        except UserError as err:
            _fail(str(err))
        except Exception as err:  # a bug, not bad input: keep the traceback, show one line
            log = log_internal_error(err)
            typer.secho(f"error: internal error {type(err).__name__}: {err} (a bug; traceback in {log})",
                        fg=typer.colors.RED, err=True)
            raise typer.Exit(code=1) from None

    return wrapper


app = _App(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,  # help texts show [sweep] and similar literally
    pretty_exceptions_enable=False,
    help="Synthetic SEM images of aggregated TiO2 particles with exact instance labels.",
)


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        typer.echo(f"semsynth {metadata.version('semsynth')}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Synthetic SEM images of aggregated TiO2 particles with exact instance labels."""


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command()
def simulate(
    config: Path = typer.Argument(
        ..., help="TOML config (docs/parameters.md), e.g. configs/default.toml; a [sweep] section makes a sweep."
    ),
    out: Path = typer.Option(..., "--out", help="Output dataset folder (must be empty or absent)."),
    n: int = typer.Option(None, "--n", min=1, help="Number of images (default 8; sweeps: points x images_per_point)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Root seed; image i uses SeedSequence(seed).spawn(n)[i]."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes; output bytes do not depend on it."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing semsynth dataset in --out."),
    resume: bool = typer.Option(False, "--resume", help="Finish an interrupted run in --out (same arguments)."),
    executor: str = typer.Option("local", "--executor", help="local (processes) or dask (a distributed cluster)."),
    scheduler: str = typer.Option(None, "--scheduler", help="Dask scheduler address, e.g. tcp://10.0.0.5:8786."),
    preview: bool = typer.Option(True, "--preview/--no-preview", help="Also write OUT/preview.png."),
) -> None:
    """Simulate images and write them as a COCO dataset (images/, labels/, annotations.json, manifest.json)."""
    from tqdm import tqdm

    from simulator.config import ConfigError
    from simulator.io.outputs import DATASET, check_output_folder
    from simulator.io.writer import write_dataset
    from simulator.sweep import expand, load_run_config

    try:
        cfg, sweep = load_run_config(config)
    except ConfigError as err:
        _fail(str(err))
    if sweep is None and n is None:
        n = 8
    if not resume:
        check_output_folder(out, DATASET, overwrite=overwrite)  # before any work: a refusal costs nothing
    try:
        total = n if sweep is None else len(expand(sweep, cfg)) * sweep.images_per_point
        with tqdm(total=total, unit="img", desc="simulate") as bar:
            manifest = write_dataset(
                out, cfg, n_images=n, seed=seed, workers=workers, overwrite=overwrite, resume=resume,
                sweep=sweep, executor=executor, scheduler=scheduler, on_image=bar.update,
            )
    except (FileExistsError, ValueError, RuntimeError, ConfigError) as err:
        _fail(str(err))
    counts = manifest["counts"]
    typer.echo(f"wrote {counts['images']} images, {counts['annotations']} visible particles to {out}/")
    typer.echo(f"  annotations: {out / 'annotations.json'}")
    if preview:
        from simulator.io.files import atomic_write_bytes, encode_png
        from simulator.preview import dataset_preview

        atomic_write_bytes(out / "preview.png", encode_png(dataset_preview(out)))
        typer.echo(f"  preview:     {out / 'preview.png'}")


@app.command()
def check(dataset: Path = typer.Argument(..., help="Dataset folder written by simulate.")) -> None:
    """Validate a dataset: files, PNG integrity, COCO schema, mask and image sizes, ids. Exit 1 on problems."""
    from simulator.io.check import check_dataset

    problems = check_dataset(dataset)
    if problems:
        typer.secho(f"{dataset}: {len(problems)} problem(s)", fg=typer.colors.RED, err=True)
        for problem in problems:
            typer.echo(f"  - {problem}", err=True)
        raise typer.Exit(code=1)
    typer.echo(f"{dataset}: OK")


@app.command()
def ingest(
    src: Path = typer.Argument(..., help="Folder of real SEM images (SEM/<id>.tif + masks/<id>_m.tif, or flat)."),
    out: Path = typer.Option(..., "--out", help="Output dataset folder (must be empty or absent)."),
    pixel_size_nm: float = typer.Option(
        None, "--pixel-size-nm", min=1e-6, help="Pixel size for images whose metadata has none."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing dataset in --out."),
    classes: Path = typer.Option(None, "--classes", help="Folder of class masks <id>_cm.tif (RGB: green = fully "
                                 "visible, red = fragment, blue = under others); default: SRC/classes if present."),
) -> None:
    """Convert real SEM images (TIFF/PNG, optional masks and class masks) into the dataset layout of simulate."""
    from eval.data.ingest import ingest as run_ingest
    from simulator.classes import ClassMaskError

    try:
        report = run_ingest(src, out, pixel_size_nm=pixel_size_nm, overwrite=overwrite, classes=classes)
    except (FileNotFoundError, FileExistsError, ClassMaskError) as err:
        _fail(str(err))
    for name, reason in report.skipped:
        typer.secho(f"skipped {name}: {reason}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"wrote {len(report.written)} images to {out}/ ({len(report.skipped)} skipped)")


@app.command()
def fit(
    real: Path = typer.Argument(..., help="Real dataset with masks, as written by `cli.py ingest`."),
    out: Path = typer.Option(..., "--out", help="Fitted config to write (TOML); the report goes beside it."),
    base: Path = typer.Option(None, "--base", help="Config to start from (default: the built-in defaults)."),
    n_sim: int = typer.Option(20, "--n-sim", min=1, help="Simulated images per calibration round (about as "
                              "many as real ones: density and residue vary from image to image)."),
    rounds: int = typer.Option(4, "--rounds", min=1, help="Calibration rounds."),
    seed: int = typer.Option(0, "--seed", min=0),
) -> None:
    """Estimate simulator parameters from real images and masks; writes OUT, OUT.md (table) and OUT_ecd.png."""
    import numpy as np

    from eval.calibrate.fit import dataset_samples, ecd_plot, measure, report_table, simulated_samples
    from eval.calibrate.fit import fit as run_fit
    from simulator.config import ConfigError, SimConfig, config_to_toml, load_config
    from simulator.io.errors import probe_writable
    from simulator.io.files import atomic_write_bytes
    from simulator.io.reader import read_dataset

    probe_writable(out, folder=False)  # before the calibration rounds
    try:
        base_cfg = load_config(base) if base else SimConfig()
        real_stats = measure(dataset_samples(real), base_cfg.shading.et_azimuth_deg)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    pixel_sizes = [pixel_nm for pixel_nm in read_dataset(real, labels=False).pixel_sizes_nm() if pixel_nm is not None]
    typer.echo(f"real: {real_stats.n_images} labelled images, median ECD {real_stats.median_ecd_nm:.1f} nm, "
               f"coverage {real_stats.image['coverage']:.3f}")

    def progress(round_, sim):
        typer.echo(f"round {round_}: median ECD {sim.median_ecd_nm:.1f} nm, coverage {sim.image['coverage']:.3f}, "
                   f"substrate {sim.image['substrate_mean']:.3f}, noise {sim.image['substrate_noise_std']:.4f}")

    cfg, history = run_fit(real_stats, base_cfg, n_sim=n_sim, rounds=rounds, seed=seed,
                           pixel_size_nm=float(np.median(pixel_sizes)) if pixel_sizes else None, on_round=progress)
    # fresh images, not the ones fitted to, with the image-to-image spreads on: three times as many, since the
    # median coverage of a few images scatters by about 20 %
    fitted_stats = measure(simulated_samples(cfg, 3 * n_sim, seed + 1, measured_class=real_stats.measured_class),
                           cfg.shading.et_azimuth_deg)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, config_to_toml(cfg, header=f"fitted by `cli.py fit {real}` ({rounds} rounds)").encode())
    table = report_table(real_stats, fitted_stats)
    atomic_write_bytes(out.with_suffix(".md"), table.encode())
    atomic_write_bytes(out.with_suffix(".json"), json.dumps(
        {"real": real_stats.summary(), "fitted": fitted_stats.summary(), "history": history}, indent=1).encode())
    ecd_plot(real_stats, fitted_stats, str(out.with_name(out.stem + "_ecd.png")))
    typer.echo(table)
    typer.echo(f"config: {out}\nreport: {out.with_suffix('.md')}, {out.with_name(out.stem + '_ecd.png')}")


_REFERENCE_HELP = "Real images (SEM/<id>.tif + masks/<id>_m.tif); default ../shared/data/bam-tio2-sem."


@app.command()
def preview(
    config: Path = typer.Argument(..., help="TOML config to preview, e.g. configs/default.toml."),
    out: Path = typer.Option(..., "--out", help="Contact sheet PNG to write."),
    reference: Path = typer.Option(None, "--reference", help=_REFERENCE_HELP),
    n: int = typer.Option(3, "--n", min=1, help="Rows of the sheet (synthetic and real side by side)."),
    n_stats: int = typer.Option(8, "--n-stats", min=1, help="Synthetic images measured for the statistics table."),
    seed: int = typer.Option(0, "--seed", min=0),
    synthetic_only: bool = typer.Option(
        False, "--synthetic-only", help="Sheet without real crops (for sharing: the reference set is CC BY-NC-ND)."
    ),
) -> None:
    """Contact sheet of synthetic images next to real ones at the same scale, plus a statistics table
    (OUT.md) and the power spectra (OUT_spectrum.png) of real vs synthetic."""
    from eval.calibrate.compare import compare, criteria_met, markdown_table, preview_tiles, simulate, spectrum_plot
    from eval.data.reference import DEFAULT_REFERENCE, load_reference
    from simulator.config import ConfigError, load_config
    from simulator.io.files import atomic_write_bytes, encode_png
    from simulator.preview import contact_sheet

    try:
        cfg = load_config(config)
    except ConfigError as err:
        _fail(str(err))
    folder = reference or DEFAULT_REFERENCE
    try:
        real = load_reference(folder)
    except FileNotFoundError as err:
        _fail(f"{err} (pass --reference DIR)")
    sims = simulate(cfg, max(n, n_stats), seed)
    tiles = preview_tiles(cfg, [] if synthetic_only else real, sims[:n])
    atomic_write_bytes(out, encode_png(contact_sheet(tiles, columns=1 if synthetic_only else 2)))
    result = compare(cfg, real, sims[:n_stats])
    table = markdown_table(result)
    table_path = out.with_suffix(".md")
    atomic_write_bytes(table_path, table.encode())
    spectrum_png = out.with_name(out.stem + "_spectrum.png")
    spectrum_plot(result, str(spectrum_png))
    typer.echo(table)
    typer.echo(f"sheet: {out}\ntable: {table_path}\nspectra: {spectrum_png}")
    typer.echo("statistics within 20 % of the reference: " + ("yes" if criteria_met(result) else "NO"))


def _progress(desc: str, total: int, unit: str = "img"):
    """A tqdm bar; returns (bar, per-item callback)."""
    from tqdm import tqdm

    bar = tqdm(total=total or None, unit=unit, desc=desc)
    return bar, bar.update


def _load_model(spec: str):
    from eval.segment.registry import load_model

    try:
        return load_model(spec)
    except (ValueError, FileNotFoundError, ImportError, AttributeError, TypeError) as err:
        _fail(str(err))


@app.command()
def evaluate(
    dataset: Path = typer.Option(..., "--dataset", help="Labelled dataset (simulate or ingest output)."),
    model: str = typer.Option(..., "--model", help="watershed[:k=v,...] | unet:PATH | predictions:FILE.json | "
                                                   "python:module:callable"),
    out: Path = typer.Option(..., "--out", help="Folder for metrics.json, per_image.csv and report.html."),
    max_occluded_fraction: float = typer.Option(0.5, "--max-occluded-fraction", min=0.0, max=1.0,
                                                help="True particles hidden beyond this are ignore regions."),
    resamples: int = typer.Option(200, "--resamples", min=1, help="Bootstrap resamples over images."),
    limit: int = typer.Option(None, "--limit", min=1, help="Evaluate the first N images only."),
    seed: int = typer.Option(0, "--seed", min=0, help="Bootstrap seed."),
) -> None:
    """Run a segmentation model on a labelled dataset; metrics with 95 % intervals (bootstrap over images)."""
    from eval.evaluate import EvaluateConfig
    from eval.evaluate import evaluate as run_evaluate
    from simulator.io.reader import read_dataset

    cfg = EvaluateConfig(max_occluded_fraction=max_occluded_fraction, n_resamples=resamples, seed=seed,
                         limit=limit)
    seg = _load_model(model)
    try:
        n_images = len(read_dataset(dataset, labels=False).labelled())
        bar, tick = _progress("segment", min(n_images, limit or n_images))
        with bar:
            result = run_evaluate(dataset, seg, out, cfg, on_image=tick)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    m = result["metrics"]
    for key in ("AP", "AP50", "PQ", "DSC", "F1", "D50_rel_err"):
        typer.echo(f"{key:>12}: {m[key]['value']:.4f}  [{m[key]['ci_low']:.4f}, {m[key]['ci_high']:.4f}]")
    typer.echo(f"wrote {out / 'metrics.json'}, {out / 'per_image.csv'}, {out / 'report.html'}")


@app.command()
def factors(
    dataset: Path = typer.Argument(..., help="Dataset folder (simulate, ingest or refine output); raw SEM images "
                                   "need `cli.py ingest` first."),
    out: Path = typer.Option(..., "--out", help="JSON file to write: per-image factors and their summary."),
) -> None:
    """Per-image influence factors (noise, probe blur, levels, coverage, crowding, sizes) and their summary."""
    from eval.factors import dataset_factors, open_dataset
    from simulator.io.errors import UserError
    from simulator.io.files import atomic_write_json

    if out.is_dir():
        raise UserError(out, "is a folder", "a JSON file to write, e.g. factors.json")
    images = open_dataset(dataset)
    bar, tick = _progress("factors", len(images))
    with bar:
        result = dataset_factors(images, on_image=tick)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    for name in ("blur_sigma_nm", "substrate_noise_std", "snr", "coverage", "touching_fraction", "d50_nm"):
        row = result["summary"].get(name, {})
        if row.get("n"):
            typer.echo(f"{name:>20}: median {row['median']:.4g}  IQR {row['iqr']:.3g}  ({row['n']} images)")
    typer.echo(f"wrote {out}")


@app.command()
def robustness(
    sweep: Path = typer.Argument(..., help="Sweep config (TOML with [sweep]), e.g. configs/sweeps/robustness.toml."),
    model: str = typer.Option(..., "--model", help="Model spec, as for evaluate."),
    out: Path = typer.Option(..., "--out", help="Output folder; OUT/dataset holds the simulated sweep (reused)."),
    dataset: Path = typer.Option(None, "--dataset", help="Sweep dataset folder to use or create (default "
                                 "OUT/dataset); share it to test several models on the same images."),
    measurand: str = typer.Option("D50_rel_err", "--measurand", help="Per-image error tested against tau "
                                  "(|error| <= tau passes): D50_rel_err, the relative error of the median "
                                  "particle size; scores such as F1 are not errors."),
    tau: float = typer.Option(0.1, "--tau", min=1e-9, help="An image passes when |measurand| <= tau."),
    alpha: float = typer.Option(0.2, "--alpha", min=1e-6, max=0.999999, help="Levels need P(pass) >= 1 - alpha."),
    confidence: float = typer.Option(0.95, "--confidence", min=0.5, max=0.999999,
                                     help="Clopper-Pearson confidence."),
    metric: str = typer.Option("F1", "--metric", help="Higher-is-better metric of the mPC/rPC table."),
    workers: int = typer.Option(1, "--workers", min=1, help="Simulation worker processes."),
    seed: int = typer.Option(0, "--seed", min=0, help="Dataset seed."),
    validation: Path = typer.Option(None, "--validation", help="validation.json of cli.py validate: recorded in "
                                    "the result (what the bench was validated against, verdicts per metric)."),
) -> None:
    """Simulate a sweep, run a model, and state its operating range with Clopper-Pearson bounds."""
    from eval.robustness.rows import RangeCriterion
    from eval.robustness.run import RobustnessConfig
    from eval.robustness.run import robustness as run_robustness
    from simulator.config import ConfigError

    try:
        cfg = RobustnessConfig(criterion=RangeCriterion(measurand=measurand, tau=tau, alpha=alpha,
                                                        confidence=confidence),
                               robustness_metric=metric, seed=seed, workers=workers)
    except ValueError as err:
        _fail(str(err))
    record = None
    if validation is not None:
        from eval.validate.validate import validation_record
        from simulator.sweep import load_run_config

        try:
            record = validation_record(validation, model_spec=model, sweep_config=load_run_config(sweep)[0])
        except (ValueError, ConfigError) as err:
            _fail(str(err))
    seg = _load_model(model)
    bars = []

    def on_stage(name: str, total: int):
        for bar in bars:
            bar.close()
        bar, tick = _progress(name, total)
        bars.append(bar)
        return tick

    try:
        result = run_robustness(sweep, seg, out, cfg, dataset_dir=dataset, on_stage=on_stage, validation=record)
    except (FileNotFoundError, ValueError, ConfigError) as err:
        _fail(str(err))
    finally:
        for bar in bars:
            bar.close()
    for r in result["statistics"].get("ranges", {}).values():
        typer.echo(r["statement"])
    if record is None:
        typer.echo("bench not validated on real images (see cli.py validate, --validation)")
    else:
        typer.echo(f"bench validated against {record['real_dataset']}: agrees on {len(record['verdict']['agrees'])} "
                   f"of {len(record['metrics'])} metrics"
                   + (f", disagrees on {', '.join(record['verdict']['disagrees'])}" if record["verdict"]["disagrees"]
                      else ""))
    typer.echo(f"wrote {out / 'robustness.json'}, {out / 'per_image.csv'}, {out / 'report.html'}")


@app.command()
def validate(
    real: Path = typer.Option(..., "--real", help="Real labelled test images (cli.py ingest with masks)."),
    model: str = typer.Option(..., "--model", help="Model spec, as for evaluate."),
    out: Path = typer.Option(..., "--out", help="Folder for validation.json, validation.html (holds crops of the "
                             "real images: keep it out of the repository) and OUT/synthetic."),
    config: Path = typer.Option(None, "--config", help="Simulator config to simulate the synthetic side from."),
    n: int = typer.Option(20, "--n", min=1, help="Synthetic images to simulate (with --config)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Simulation seed (with --config)."),
    synthetic: Path = typer.Option(None, "--synthetic", help="A simulated dataset instead of --config."),
    measured_class: str = typer.Option("full", "--measured-class", help="Particle class counted: full, fragment, "
                                       "under; the others are ignore regions."),
    n_resamples: int = typer.Option(1000, "--n-resamples", min=1, help="Bootstrap resamples (by image)."),
    tolerance: list[str] = typer.Option([], "--tolerance", help="NAME=VALUE, e.g. F1=0.05 (repeatable)."),
    sweep: Path = typer.Option(None, "--sweep", help="One-factor-at-a-time sweep (e.g. configs/sweeps/robustness."
                               "toml): its post-hoc factors are compared level by level."),
) -> None:
    """Does the bench predict real failures? A model's errors on real and synthetic images, with verdicts."""
    from eval.validate.compare import parse_tolerances
    from eval.validate.report import text_table
    from eval.validate.validate import InputError, ValidateConfig, check_inputs
    from eval.validate.validate import validate as run_validate

    try:
        cfg = ValidateConfig(measured_class=measured_class, n_resamples=n_resamples,
                             tolerances=parse_tolerances(tolerance))
        inputs = check_inputs(real, out, config=config, n=n, seed=seed, synthetic=synthetic, sweep=sweep)
    except ValueError as err:
        _fail(str(err))
    if out.resolve().is_relative_to(Path(__file__).resolve().parent):
        typer.secho(f"warning: {out} is inside the repository; validation.html holds crops of the real images: "
                    "never commit it", fg=typer.colors.YELLOW, err=True)
    seg = _load_model(model)
    if sweep is not None and seg.describe().get("kind") == "predictions":
        _fail(f"{sweep}: a predictions: model cannot segment images degraded along a sweep (expected a model that "
              "runs on images: watershed, unet:PATH or python:...)")
    bars = []

    def on_stage(name: str, total: int):
        for bar in bars:
            bar.close()
        bar, tick = _progress(name, total, "resample" if name.startswith("bootstrap") else "img")
        bars.append(bar)
        return tick

    try:
        result = run_validate(inputs, seg, cfg, on_stage=on_stage)
    except (FileNotFoundError, InputError, ValueError) as err:
        _fail(str(err))
    finally:
        for bar in bars:
            bar.close()
    typer.echo(text_table(result))
    typer.echo(f"wrote {out / 'validation.json'}, {out / 'validation.html'}")


@app.command()
def realism(
    a: Path = typer.Argument(..., help="First image set: a dataset folder or a folder of SEM images."),
    b: Path = typer.Argument(..., help="Second image set (resampled to A's pixel size)."),
    out: Path = typer.Option(..., "--out", help="Folder for realism.json, realism.html and realism.png."),
    pixel_size_nm: float = typer.Option(None, "--pixel-size-nm", min=1e-6,
                                        help="Pixel size for images without metadata."),
    steps: int = typer.Option(None, "--steps", min=1, help="C2ST training steps per fold."),
    crop_px: int = typer.Option(None, "--crop-px", min=16, help="Crop size (multiple of 8)."),
    ae_steps: int = typer.Option(None, "--ae-steps", min=1, help="Training steps of the KID feature network."),
    normalize: str = typer.Option("image", "--normalize", help="image: C2ST and KID on images scaled by their own "
                                  "1-99 percentiles (brightness/contrast are operator settings); none: raw."),
    seed: int = typer.Option(0, "--seed", min=0),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
) -> None:
    """How distinguishable two image sets are: C2ST accuracy with a 95 % interval, KID, distances."""
    import dataclasses

    from eval.realism.config import RealismConfig
    from eval.realism.data import load_image_set
    from eval.realism.report import html_summary, summary_plot
    from eval.realism.report import realism as run_realism
    from simulator.io.errors import check_device
    from simulator.io.files import atomic_write_bytes
    from simulator.io.outputs import REALISM, check_output_folder, staged_output

    check_device(device, allowed=("cpu", "cuda"))
    check_output_folder(out, REALISM, overwrite=True)  # before training: replaces only an earlier realism output
    try:
        overrides = {k: v for k, v in (("steps", steps), ("crop_px", crop_px), ("ae_steps", ae_steps)) if v is not None}
        cfg = dataclasses.replace(RealismConfig(), seed=seed, device=device, normalize=normalize, **overrides)
        set_a = load_image_set(a, pixel_size_nm=pixel_size_nm)
        set_b = load_image_set(b, pixel_size_nm=pixel_size_nm)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    typer.echo(f"A: {len(set_a.images)} images at {set_a.pixel_size_nm:.3f} nm/px; "
               f"B: {len(set_b.images)} images at {set_b.pixel_size_nm:.3f} nm/px")
    from tqdm import tqdm

    with tqdm(total=2 * cfg.steps, desc="C2ST", unit="step") as bar:
        try:
            report = run_realism(set_a, set_b, cfg, on_step=lambda step, loss: (bar.update(),
                                                                                bar.set_postfix(loss=f"{loss:.3f}")))
        except ValueError as err:
            _fail(str(err))
    with staged_output(out, REALISM, "realism", overwrite=True) as stage:
        atomic_write_bytes(stage / "realism.json", (json.dumps(report.to_json(), indent=1) + "\n").encode())
        summary_plot(set_a, set_b, report, stage / "realism.png")
        atomic_write_bytes(stage / "realism.html", html_summary(report, stage / "realism.png").encode())
    r = report.c2st
    typer.echo(f"C2ST accuracy {r.accuracy:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}] (0.5 = indistinguishable); "
               f"KID {report.kid:.4g} +- {report.kid_sd:.2g}")
    if r.by_content is not None:  # both sets labelled: which crops give a set away
        typer.echo("  by crop content: " + "; ".join(
            f"{name} {v['accuracy']:.3f} ({v['n_crops_a']} + {v['n_crops_b']} crops)" if v["accuracy"] is not None
            else f"{name}: none in one set" for name, v in r.by_content.items()))
    typer.echo(f"wrote {out / 'realism.json'}, {out / 'realism.html'}")


@app.command()
def uncertainty(
    test: Path = typer.Option(None, "--test", help="Labelled test images (dataset folder; ingested real images)."),
    train: Path = typer.Option(None, "--train", help="Labelled training images (dataset folder), resampled by image."),
    train_config: Path = typer.Option(None, "--train-config", help="Or: a simulator config; each draw simulates a "
                                      "fresh training set of --train-images images."),
    train_images: int = typer.Option(15, "--train-images", min=2, help="Images per simulated training set."),
    model_family: str = typer.Option("unet", "--model-family", help="unet, or toy (a constructed measurement with "
                                     "known variance components, to check the decomposition)."),
    k: int = typer.Option(4, "--k", min=2, help="Training-set draws (bootstrap resamples of --train)."),
    seeds: int = typer.Option(2, "--seeds", min=2, help="Training seeds per draw."),
    noise: int = typer.Option(3, "--noise", min=2, help="Noise re-draws of the test images per model."),
    boot: int = typer.Option(50, "--boot", min=2, help="Bootstrap resamples of the test images per model."),
    steps: int = typer.Option(200, "--steps", min=1, help="U-Net training steps per model."),
    budget_cpu: bool = typer.Option(False, "--budget-cpu", help="Small U-Net (8 base channels, depth 3), 128 px "
                                    "crops: a budget that fits 2 CPU cores."),
    workers: int = typer.Option(1, "--workers", min=1),
    seed: int = typer.Option(0, "--seed", min=0),
    out: Path = typer.Option(..., "--out", help="Output folder (resumed when it holds units of the same plan)."),
) -> None:
    """Uncertainty budget of a model's size measurement: training-set sampling, retraining, input noise, test
    sampling (random-effects decomposition, eval/uncertainty/budget.py)."""
    import json as _json
    from dataclasses import asdict

    from eval.uncertainty.run import FAMILIES, UncertaintyPlan, run
    from simulator.io.errors import UserError

    if model_family not in FAMILIES:
        raise UserError(Path(model_family), "is not a model family", f"one of {', '.join(FAMILIES)}")
    if train is not None and train_config is not None:
        raise UserError(train_config, "given with --train", "one source of training sets: --train or --train-config")
    if model_family != "toy" and train_config is not None:
        from simulator.config import load_config

        load_config(train_config)  # a bad config fails here, before any training
    if model_family != "toy":
        sources = (("--test", test),) if train_config is not None else (("--test", test), ("--train", train))
        for name, folder in sources:
            if folder is None:
                raise UserError(Path(name), "is missing", "a labelled dataset folder (cli.py ingest)")
            if not (folder / "annotations.json").is_file():
                raise UserError(folder, "is not a dataset folder (no annotations.json)",
                                "a labelled dataset folder (cli.py ingest)")
        from eval.evaluate import usable_images

        usable_images(test)  # labels present and readable, before any training
        if train is not None and len(usable_images(train)) < 2:
            raise UserError(train, "has fewer than 2 labelled images", "a training set to resample")
    plan = UncertaintyPlan(family=model_family, train_dir=None if train is None else str(train),
                           test_dir=None if test is None else str(test),
                           train_config=None if train_config is None else str(train_config),
                           train_images=train_images, draws=k, seeds=seeds, noise_draws=noise,
                           test_boot=boot, steps=steps, seed=seed,
                           **({"crop_px": 128, "base_channels": 8} if budget_cpu else {"crop_px": 256,
                                                                                      "base_channels": 16}))
    old = out / "plan.json"
    if old.exists() and _json.loads(old.read_text()) != _json.loads(_json.dumps(asdict(plan))):
        raise UserError(old, "holds another plan", "the same options to resume, or another --out")
    bar, tick = _progress("models", k * seeds, unit="model")
    with bar:
        result = run(plan, out, workers=workers, on_unit=lambda uid: tick())
    for name, b in result["budgets"].items():
        parts = ", ".join(f"{c['name']} {c['u']:.3g}" for c in b["components"])
        typer.echo(f"{name}: mean {b['mean']:.4g}, u_c {b['u_c']:.3g}, U(k=2) {b['U']:.3g} ({parts})")
    typer.echo(f"wrote {out}/uncertainty.json, budget.md, budget.png")


segment_app = _App(no_args_is_help=True, rich_markup_mode=None, help="The built-in U-Net instance segmenter.")
app.add_typer(segment_app, name="segment")


@segment_app.command("train")
def segment_train(
    dataset: list[Path] = typer.Option(..., "--dataset", help="Labelled dataset folder(s); repeat to combine."),
    out: Path = typer.Option(..., "--out", help="Checkpoint file to write (use as --model unet:OUT)."),
    steps: int = typer.Option(300, "--steps", min=1, help="Training steps (batches)."),
    crop_px: int = typer.Option(256, "--crop-px", min=32, help="Training crop size (multiple of 32)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    seed: int = typer.Option(0, "--seed", min=0),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in OUT."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing checkpoint."),
) -> None:
    """Train the U-Net (foreground, boundary and distance maps + watershed) on labelled datasets."""
    from tqdm import tqdm

    from eval.segment.unet import train_unet

    with tqdm(total=steps, desc="train", unit="step") as bar:
        def on_step(step, losses):
            bar.n = step
            bar.set_postfix(loss=f"{losses['total']:.3f}")
            bar.refresh()

        try:
            result = train_unet(list(dataset), out, steps=steps, crop_px=crop_px, batch_size=batch_size, seed=seed,
                                device=device, on_step=on_step, resume=resume, overwrite=overwrite)
        except (FileNotFoundError, FileExistsError, ValueError) as err:
            _fail(str(err))
    typer.echo(f"trained {result.step} steps on {result.n_train_images} images ({result.seconds_per_step:.2f} s/step, "
               f"{result.device}); loss {result.losses.get('total', float('nan')):.4f}"
               + (f", held-out {result.val_losses['total']:.4f}" if result.val_losses else ""))
    typer.echo(f"checkpoint: {out} (evaluate with --model unet:{out})")


refine_app = _App(no_args_is_help=True, rich_markup_mode=None,
                  help="The learned sim-to-real refiner (labels never move).")
app.add_typer(refine_app, name="refine")


@refine_app.command("train")
def refine_train(
    synthetic: Path = typer.Option(..., "--synthetic", help="Simulated dataset (with label maps)."),
    real: Path = typer.Option(..., "--real", help="Real images in the dataset layout (cli.py ingest); labels unused."),
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoints, samples, logs, generator.pt."),
    steps: int = typer.Option(2000, "--steps", min=1, help="Training steps (budget)."),
    crop_px: int = typer.Option(256, "--crop-px", min=16),
    batch_size: int = typer.Option(4, "--batch-size", min=1),
    sample_every: int = typer.Option(100, "--sample-every", min=1, help="Steps between sample grids."),
    checkpoint_every: int = typer.Option(250, "--checkpoint-every", min=1,
                                         help="Steps between checkpoints (each checked for label fidelity)."),
    seed: int = typer.Option(0, "--seed", min=0),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out."),
) -> None:
    """Train a refiner that makes synthetic images look like the real ones without moving structures."""
    import warnings

    from tqdm import tqdm

    from refiner.train import FidelityWarning, train

    with tqdm(total=steps, desc="refine", unit="step") as bar:
        def on_step(info):
            bar.n = info.step
            bar.set_postfix(d=f"{info.losses.get('d_loss', float('nan')):.3f}",
                            g=f"{info.losses.get('g_adv', float('nan')):.3f}")
            bar.refresh()
            if info.evaluation is not None:
                e, f = info.evaluation, info.evaluation.get("fidelity", {})
                bar.write(f"step {info.step}: label fidelity {'passed' if e.get('passed') else 'FAILED'} (boundary F "
                          f"{f.get('boundary_f_unrefined', float('nan')):.3f} -> "
                          f"{f.get('boundary_f_refined', float('nan')):.3f}, frozen segmenter mIoU "
                          f"{f.get('segmenter_miou', float('nan')):.3f})")

        with warnings.catch_warnings():
            warnings.simplefilter("always", FidelityWarning)
            try:
                result = train(synthetic, real, out, steps=steps, crop_px=crop_px, batch_size=batch_size, seed=seed,
                               device=device, resume=resume, on_step=on_step, sample_every=sample_every,
                               checkpoint_every=checkpoint_every)
            except (FileNotFoundError, FileExistsError, ValueError) as err:
                _fail(str(err))
    if result.selected_step is None:
        typer.secho("no checkpoint passed the label-fidelity checks: no generator.pt was selected",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1)
    typer.echo(f"{result.steps} steps ({result.seconds_per_step:.2f} s/step); selected generator: step "
               f"{result.selected_step} -> {out / 'generator.pt'}")


@refine_app.command("apply")
def refine_apply(
    run: Path = typer.Argument(..., help="Run folder written by refine train."),
    input: Path = typer.Option(..., "--input", help="Simulated dataset to refine."),
    out: Path = typer.Option(..., "--out", help="Refined dataset (annotations and labels copied unchanged)."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="Another generator than RUN/generator.pt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a dataset that semsynth wrote in --out "
                                   "(only its own files; a folder with anything else is refused)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto (CUDA when available)."),
) -> None:
    """Refine every image of a dataset; annotations.json and labels/ stay byte-identical."""
    from refiner.apply import apply

    try:
        n = sum(1 for _ in (input / "images").glob("*.png"))
        bar, tick = _progress("refine", n)
        with bar:
            manifest = apply(run, input, out, overwrite=overwrite, device=device, checkpoint=checkpoint,
                             on_image=lambda name: tick())
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        _fail(str(err))
    typer.echo(f"refined {(manifest.get('counts') or {}).get('images', n)} images into {out}/")


appearance_app = _App(no_args_is_help=True, rich_markup_mode=None,
                      help="Paired appearance model p(image | labels): render of the labels + learned residual.")
app.add_typer(appearance_app, name="appearance")


@appearance_app.command("train")
def appearance_train(
    real: Path = typer.Option(..., "--real", help="Real images WITH masks in the dataset layout (cli.py ingest)."),
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoints, sample grids, logs, model.pt."),
    family: str = typer.Option("gan", "--family", help="gan (adversarial residual) or vae (conditional VAE)."),
    steps: int = typer.Option(400, "--steps", min=1),
    config: Path = typer.Option(Path("configs/default.toml"), "--config",
                                help="Simulator config whose shading and probe render the labels."),
    checkpoint_every: int = typer.Option(100, "--checkpoint-every", min=1,
                                         help="Steps between checkpoints (each scored by the fidelity gate)."),
    gate_segmenter: str = typer.Option("watershed", "--gate-segmenter",
                                       help="Fidelity-gate segmenter (evaluate spec, e.g. unet:PATH)."),
    seed: int = typer.Option(0, "--seed", min=0),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out."),
) -> None:
    """Learn what the physics render of labelled real images misses (identity at step 0, bounded residual)."""
    from dataclasses import asdict

    from tqdm import tqdm

    from refiner.appearance.data import InputError, load_pairs
    from refiner.appearance.gate import GateConfig
    from refiner.appearance.inputs import render_settings
    from refiner.appearance.train import AppearanceConfig, train

    try:
        cfg = AppearanceConfig(family=family, steps=steps, checkpoint_every=checkpoint_every,
                               gate=GateConfig(segmenter=gate_segmenter))
        settings = render_settings(config)
        pairs = load_pairs(real, settings)
        with tqdm(total=steps, desc=f"appearance {family}", unit="step") as bar:
            def on_step(info):
                bar.n = info.step
                bar.set_postfix({k: f"{v:.3f}" for k, v in info.losses.items() if k in ("d", "adv", "low_l1", "nll")})
                bar.refresh()

            selection = train(pairs, out, cfg, seed=seed, device=device, resume=resume, on_step=on_step,
                              render_settings={"shading": asdict(settings.shading), "probe": asdict(settings.probe)})
    except (InputError, FileNotFoundError, FileExistsError, ValueError) as err:
        _fail(str(err))
    state = "passed" if selection["passed"] else "did NOT pass (least violation chosen)"
    typer.echo(f"selected step {selection['step']}: fidelity gate {state} -> {out / 'model.pt'}")


@appearance_app.command("apply")
def appearance_apply(
    run: Path = typer.Argument(..., help="Run folder written by appearance train."),
    input: Path = typer.Option(..., "--input", help="Labelled (simulated) dataset."),
    out: Path = typer.Option(..., "--out", help="Generated dataset (annotations and labels copied unchanged)."),
    seed: int = typer.Option(0, "--seed", min=0),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Generate an image for every label map of a dataset; annotations.json and labels/ stay byte-identical."""
    from refiner.appearance.apply import apply
    from refiner.appearance.data import InputError

    try:
        n = sum(1 for _ in (input / "images").glob("*.png"))
        bar, tick = _progress("appearance", n)
        with bar:
            manifest = apply(run, input, out, seed=seed, device=device, on_image=lambda name: tick())
    except (InputError, FileNotFoundError, FileExistsError, ValueError) as err:
        _fail(str(err))
    typer.echo(f"generated {manifest['n_images']} images into {out}/")


domain_app = _App(no_args_is_help=True, rich_markup_mode=None,
                  help="Operating domain: the training images in influence-factor space; is a new image inside?")
app.add_typer(domain_app, name="domain")


@domain_app.command("fit")
def domain_fit(
    train: Path = typer.Argument(..., help="The model's training images: a dataset folder (ingested or simulated) "
                                 "or the JSON of `cli.py factors`."),
    out: Path = typer.Option(..., "--out", help="Domain file to write (JSON)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the bootstrap over training images."),
) -> None:
    """Fit the training images' distribution in factor space (Gaussian copula, KDE marginals)."""
    from eval.domain.run import factor_rows, fit_file
    from simulator.io.errors import UserError
    from simulator.io.files import atomic_write_json

    if out.is_dir():
        raise UserError(out, "is a folder", "a JSON file to write, e.g. domain.json")
    bar, tick = _progress("factors", 0)
    with bar:
        rows, names = factor_rows(train, on_image=tick)
    blob = fit_file(rows, names, train, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, blob)
    model = blob["model"]
    typer.echo(f"{blob['n_images']} training images; factors {', '.join(model['names'])}"
               + (f"; fixed {model['fixed']}" if model["fixed"] else ""))
    low = [r["image"] for r in blob["leave_one_out"] if r["p_value_left_out"] < 1e-3]
    typer.echo(f"left-out training images flagged atypical at p < 0.001: {len(low)} of {len(names)}")
    typer.echo(f"wrote {out}")


@domain_app.command("check")
def domain_check(
    domain: Path = typer.Argument(..., help="Domain file written by `cli.py domain fit`."),
    images: Path = typer.Argument(..., help="Images to check: a dataset folder or a factors JSON."),
    out: Path = typer.Option(..., "--out", help="Folder to write: domain_check.json, .md and .png."),
    ranges: Path = typer.Option(None, "--ranges", help="Output folder of `cli.py robustness` (its operating "
                                "ranges and its images, on which the ranges are converted to measured factors)."),
    alpha: float = typer.Option(1e-3, "--alpha", min=1e-9, max=0.5,
                                help="An image is atypical of the training images below this typicality p."),
) -> None:
    """One verdict per image: inside, atypical of the training images, outside a validated range, or untested."""
    from eval.domain.report import markdown, scatter_matrix
    from eval.domain.run import check_rows, factor_rows, load_domain, robustness_inputs
    from simulator.io.files import atomic_write_bytes, atomic_write_json

    model = load_domain(domain)
    rng, maps = [], {}
    if ranges is not None:
        bar, tick = _progress("robustness images", 0)
        with bar:
            rng, maps = robustness_inputs(ranges, on_image=tick)
    bar, tick = _progress("factors", 0)
    with bar:
        rows, names = factor_rows(images, on_image=tick)
    results = check_rows(model, rows, names, rng, maps, alpha=alpha)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "domain_check.json", {"domain": str(domain), "images": str(images),
                                                  "ranges": None if ranges is None else str(ranges),
                                                  "alpha": alpha, "results": results})
    scatter_matrix(model, results, rng, maps, out / "domain_check.png")
    atomic_write_bytes(out / "domain_check.md", markdown(results, model, rng).encode())
    for r in results:
        typer.echo(f"{r['image']}: {r['verdict']}: {'; '.join(r['reasons'])}")
    typer.echo(f"wrote {out}/domain_check.json, .md, .png")


@domain_app.command("sample")
def domain_sample(
    domain: Path = typer.Argument(..., help="Domain file written by `cli.py domain fit`."),
    base: Path = typer.Option(..., "--base", help="Simulator config for everything the factors do not set."),
    n: int = typer.Option(..., "--n", min=1, help="Configs to draw."),
    out: Path = typer.Option(..., "--out", help="Folder to write config_NNN.toml and samples.json into."),
    shift: list[str] = typer.Option([], "--shift", help="FACTOR=MULTIPLIER after drawing, e.g. blur_sigma_nm=3 "
                                    "(a shifted test set); repeat."),
    seed: int = typer.Option(0, "--seed", min=0),
) -> None:
    """Draw simulator configs from the training distribution (or a shifted one): pixel size, probe blur, coverage
    and dose from the drawn factors."""
    from eval.domain.run import base_snr, load_domain, sample_configs
    from simulator.config import config_to_toml, load_config
    from simulator.io.errors import UserError
    from simulator.io.files import atomic_write_bytes, atomic_write_json

    model = load_domain(domain)
    cfg = load_config(base)
    shifts = {}
    for item in shift:
        name, _, value = item.partition("=")
        try:
            shifts[name] = float(value)
        except ValueError:
            raise UserError(Path(item), "is not FACTOR=NUMBER", "e.g. --shift blur_sigma_nm=3") from None
        if name not in model.names and name not in model.fixed:
            raise UserError(Path(item), f"names no factor of the domain ({', '.join(model.names)})",
                            "one of the domain's factors")
    pairs = sample_configs(model, cfg, n, seed=seed, shift=shifts, snr_at_base=base_snr(cfg, seed))
    out.mkdir(parents=True, exist_ok=True)
    for k, (_, c) in enumerate(pairs):
        atomic_write_bytes(out / f"config_{k:03d}.toml",
                           config_to_toml(c, header=f"drawn from {domain} (seed {seed}, draw {k})").encode())
    atomic_write_json(out / "samples.json", {"domain": str(domain), "seed": seed, "shift": shifts,
                                             "factors": [row for row, _ in pairs]})
    typer.echo(f"wrote {n} configs to {out}/ (simulate each with `cli.py simulate CONFIG --n ...`)")


if __name__ == "__main__":
    app()
