"""Applying a trained refiner to a dataset: new pixels, the same labels.

    apply(RUN, INPUT, OUT):
        OUT/images/<same names>   refined images, same size and bit depth
        OUT/annotations.json      copied byte for byte, as are OUT/labels/*, OUT/records/* and OUT/run.json
        OUT/manifest.json         the refiner (run folder, config, checkpoint SHA-256, step, its fidelity), the
                                  input's manifest, and the input's counts (so ``cli.py check OUT`` passes)
The whole output is built in a temporary sibling folder and renamed into place at the end (simulator.io.outputs),
so a failed run leaves no half-written dataset; everything is checked (images, label maps, sizes, the output
folder) before the first image is refined. Each image is refined with its own noise stream (root ``seed``,
image index), so the output does not depend on the order or the device.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from eval.training import resolve_device
from refiner.data import condition_channels
from refiner.nets import image_noise, refine_array
from refiner.train import load_generator, sha256_file
from simulator.io.errors import InputNotFoundError, UserError
from simulator.io.files import atomic_write_json, package_versions, quantize, write_png
from simulator.io.outputs import DATASET, check_output_folder, staged_output
from simulator.io.reader import read_dataset, read_manifest

_COPIED_FILES = ("annotations.json", "run.json")
_COPIED_DIRS = ("labels", "records")


def _atomic_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    try:
        with open(src, "rb") as fin, open(fd, "wb", closefd=True) as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        shutil.copymode(src, tmp)
        Path(tmp).replace(dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_inputs(dataset, min_image_px: int, *, conditioned: bool) -> None:
    """Every image (and, for a conditioned refiner, label map) readable, of its record's size and at least the
    generator's minimum size: checked before any image is refined (``UserError`` naming the file)."""
    for k in dataset.indices:
        info = dataset.infos[k]
        path = dataset.folder / "images" / info["file_name"]
        if conditioned and not info.get("label_file"):
            raise UserError(path, "has no label map, but this refiner is conditioned on labels",
                            "a dataset simulated with output.label_maps = true")
    dataset.checked(need_pixel_size=False)
    for position, k in enumerate(dataset.indices):
        info = dataset.infos[k]
        height, width = info.get("height"), info.get("width")
        if height is None or width is None:
            height, width = dataset[position].image.shape
        if min(height, width) < min_image_px:
            raise UserError(dataset.folder / "images" / info["file_name"], f"is {width} x {height} px, smaller than "
                            "the refiner's receptive field allows", f"images of at least {min_image_px} x "
                            f"{min_image_px} px")


def apply(
    run_dir: str | Path,
    input_dir: str | Path,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    device: str = "auto",
    checkpoint: str | Path | None = None,
    seed: int = 0,
    on_image: Callable[[str], None] | None = None,
) -> dict:
    """Refine every image of the dataset ``input_dir`` with the refiner trained in ``run_dir`` into ``out_dir``;
    returns the manifest written.

    checkpoint: None = RUN/generator.pt (the selected, fidelity-checked generator), or a path (e.g.
    RUN/generators/step_001000.pt) to use another one.
    """
    run_dir, input_dir, out_dir = Path(run_dir), Path(input_dir), Path(out_dir)
    if checkpoint is None:
        ckpt = run_dir / "generator.pt"
        if not ckpt.exists():
            raise InputNotFoundError(
                ckpt, "missing: either training has not reached a checkpoint or no checkpoint passed the "
                f"label-fidelity checks (see {run_dir / 'fidelity.jsonl'})",
                "a run folder of cli.py refine train holding generator.pt, or --checkpoint PATH to use another")
    else:
        ckpt = Path(checkpoint)
        if not ckpt.exists():
            raise InputNotFoundError(ckpt, "no such checkpoint", "a generator file written by cli.py refine train")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed!r}")
    if out_dir.resolve() == input_dir.resolve():
        raise ValueError(f"out_dir {out_dir} is the input folder; write the refined dataset elsewhere")
    dev = resolve_device(device)
    dataset = read_dataset(input_dir, labels=False)
    gen, meta = load_generator(ckpt, dev)
    dataset = dataclasses.replace(dataset, labels=gen.cfg.condition)
    check_inputs(dataset, gen.cfg.min_image_px, conditioned=gen.cfg.condition)
    check_output_folder(out_dir, DATASET, overwrite=overwrite)

    with staged_output(out_dir, DATASET, "refine apply", overwrite=overwrite) as stage:  # all or nothing
        for name in _COPIED_FILES:
            if (input_dir / name).exists():
                _atomic_copy(input_dir / name, stage / name)
        for sub in _COPIED_DIRS:
            for src in sorted((input_dir / sub).glob("*")) if (input_dir / sub).is_dir() else []:
                if src.is_file() and not src.name.endswith(".tmp"):
                    _atomic_copy(src, stage / sub / src.name)
        for index, record in enumerate(dataset):
            image = record.image
            cond = condition_channels(record.labels) if gen.cfg.condition else None
            refined = refine_array(gen, image, cond, image_noise(image.shape, seed, index), device=dev)
            target = stage / "images" / record.file_name
            target.parent.mkdir(parents=True, exist_ok=True)
            write_png(target, quantize(refined, record.bit_depth))
            if on_image is not None:
                on_image(record.file_name)
        manifest = _manifest(run_dir, ckpt, meta, input_dir, seed, len(dataset))
        atomic_write_json(stage / "manifest.json", manifest)
    return manifest


def _manifest(run_dir: Path, ckpt: Path, meta: dict, input_dir: Path, seed: int, n_images: int) -> dict:
    source_manifest = read_manifest(input_dir)
    return {
        "generator": "semsynth refine apply",
        "format_version": (source_manifest or {}).get("format_version", 1),
        "refiner": {
            "run_dir": str(run_dir.resolve()),
            "checkpoint": str(ckpt.resolve()),
            "checkpoint_sha256": sha256_file(ckpt),
            "step": meta.get("step"),
            "config": meta.get("config"),
            "fidelity": meta.get("fidelity"),
            "appearance": meta.get("appearance"),
        },
        "noise_seed": seed,
        "source": str(input_dir.resolve()),
        "source_manifest": source_manifest,
        "n_images": n_images,
        "counts": (source_manifest or {}).get("counts"),
        "packages": {**package_versions(), "torch": _torch_version()},
    }


def _torch_version() -> str:
    import torch

    return torch.__version__
