"""Apply a trained appearance model to a labelled (simulated) dataset: every image is generated from its label
map; ``annotations.json``, ``labels/`` and ``records/`` are copied byte for byte. The output folder is built
next to ``out`` and renamed into place, so it is either complete or absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from refiner.appearance.data import InputError, pixel_size, read_labels, read_records
from refiner.appearance.inputs import RenderSettings, model_inputs
from refiner.appearance.train import MODEL_FILE, config_from_dict, generate, load_model, resolve_device, to_stored

GENERATOR_NAME = "semsynth appearance apply"
_COPIED = ("annotations.json", "labels", "records")


def settings_from_record(render: dict) -> RenderSettings:
    """The shading and probe configs a run recorded."""
    from simulator.config import ProbeConfig, ShadingConfig

    if not render:
        raise InputError("run: no render settings recorded (expected a run folder written by `appearance train`)")
    return RenderSettings(ShadingConfig(**render["shading"]), ProbeConfig(**render["probe"]))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_out(out: Path, input_dir: Path) -> None:
    if out.resolve() == input_dir.resolve():
        raise InputError(f"{out}: is the input folder (expected another, empty folder)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        manifest = out / "manifest.json"
        try:
            ours = json.loads(manifest.read_text()).get("generator") == GENERATOR_NAME
        except (OSError, json.JSONDecodeError, AttributeError):
            ours = False
        if not ours:
            raise InputError(f"{out}: not empty and not an `appearance apply` output (expected an empty or absent "
                             "folder)")


def apply(run_dir: str | Path, input_dir: str | Path, out_dir: str | Path, *, seed: int = 0, device: str = "cpu",
          on_image: Callable[[str], None] | None = None) -> dict:
    """Generate every image of ``input_dir`` from its labels with the run's selected model; returns the manifest.

    Image i draws its noise and its levels (black/white point of one real training image) from
    ``SeedSequence(seed).spawn(n)[i]``.
    """
    run, src, out = Path(run_dir), Path(input_dir), Path(out_dir)
    model_path = run / MODEL_FILE
    if not model_path.is_file():
        raise InputError(f"{model_path}: missing (expected a run folder written by `appearance train`)")
    records = read_records(src)
    _check_out(out, src)
    dev = resolve_device(device)
    gen, blob = load_model(model_path, dev)
    cfg = config_from_dict(blob["config"])
    settings = settings_from_record(blob["render"])
    levels = [tuple(lv) for lv in blob["levels"]]
    children = np.random.SeedSequence(seed).spawn(len(records))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        (tmp / "images").mkdir()
        for rec, child in zip(records, children, strict=True):
            lab = read_labels(src, rec)
            px = pixel_size(src, rec)
            rng = np.random.default_rng(child)
            noise = torch.Generator().manual_seed(int(rng.integers(2**62)))
            image = generate(gen, cfg.family, cfg.net, model_inputs(lab, px, settings), noise, dev)
            stored = to_stored(image, levels[int(rng.integers(len(levels)))])
            target = tmp / "images" / rec["file_name"]
            target.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(target), np.rint(stored * 255).astype(np.uint8)):
                raise OSError(f"{target}: could not write PNG")
            if on_image is not None:
                on_image(rec["file_name"])
        for name in _COPIED:
            s = src / name
            if s.is_dir():
                shutil.copytree(s, tmp / name)
            elif s.is_file():
                shutil.copy2(s, tmp / name)
        manifest = {"generator": GENERATOR_NAME, "run": str(run.resolve()), "input": str(src.resolve()),
                    "model_sha256": _sha256(model_path), "checkpoint_step": blob["step"], "family": cfg.family,
                    "seed": seed, "n_images": len(records), "torch": torch.__version__}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
