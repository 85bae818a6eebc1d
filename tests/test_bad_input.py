"""Bad input, table-driven: every kind of wrong input gives one clear line and a known exit code, and leaves the
file system as it was (or with a complete result). The CLI is driven through a subprocess: that is what a user
sees (exit code, stderr).

Each case: (id, setup, command line, expected message fragment, expected exit code, check of the folder after).
The table runs in-process (typer's CliRunner: the same exit codes and stderr); a sample of it also runs in a
subprocess, what a user sees.
Messages of bad input read ``error: <file>: <what> (expected <what>)`` with exit code 2 and never a traceback.
Inputs are tiny (64 x 48 px) and the expensive commands must refuse before any work, so the file runs in seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "cli.py"
TINY_TOML = "[image]\nwidth_px = 64\nheight_px = 48\n"
PIXEL_SIZE_NM = 5.0


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, cwd: Path, timeout: float = 60, in_process: bool = True) -> Result:
    """The CLI's exit code, stdout and stderr: in this process through typer's CliRunner (imports paid once, so
    the table runs in seconds), or in a subprocess, what a user sees (``test_subprocess_agrees``)."""
    env = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    if not in_process:
        proc = subprocess.run([sys.executable, str(CLI), *args], cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **env, "PYTHONPATH": str(ROOT)})
        return Result(proc.returncode, proc.stdout, proc.stderr)
    from typer.testing import CliRunner

    import cli

    previous = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner(env=env).invoke(cli.app, list(args), prog_name="cli.py")
    finally:
        os.chdir(previous)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        stderr = "".join(traceback.format_exception(result.exception))  # what the user would see: a traceback
        return Result(1, result.stdout, result.stderr + stderr)
    return Result(result.exit_code, result.stdout, result.stderr)


# --------------------------------------------------------------------------------------------------- inputs
def disks_mask(height: int = 48, width: int = 64, centres=((14, 16), (30, 44), (20, 40))) -> np.ndarray:
    """(H, W) uint8 binary mask (0/255) of three disjoint disks."""
    yy, xx = np.mgrid[:height, :width]
    mask = np.zeros((height, width), np.uint8)
    for cy, cx in centres:
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = 255
    return mask


def sem_image(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """A noisy grayscale image (never exact black) with brighter particles where the mask is set."""
    rng = np.random.default_rng(seed)
    image = 60 + 100 * (mask > 0) + rng.integers(0, 30, mask.shape)
    return image.astype(np.uint8)


def write_source(src: Path, n: int = 2, *, masks: bool = True) -> Path:
    """A flat source folder for ingest: <id>.png images with masks/<id>_m.png."""
    (src / "masks").mkdir(parents=True, exist_ok=True)
    for k in range(n):
        mask = disks_mask()
        cv2.imwrite(str(src / f"img{k}.png"), sem_image(mask, seed=k))
        if masks:
            cv2.imwrite(str(src / "masks" / f"img{k}_m.png"), mask)
    return src


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A labelled 2-image dataset (64 x 48 px, 5 nm/px) written by the library's ingest: no simulation needed."""
    from eval.data.ingest import ingest

    root = tmp_path_factory.mktemp("bad-input")
    ingest(write_source(root / "src"), root / "ds", pixel_size_nm=PIXEL_SIZE_NM)
    return root / "ds"


@pytest.fixture(scope="module")
def generator_pt(tmp_path_factory) -> Path:
    """An untrained refiner generator file, as refine train writes it (enough for refine apply)."""
    import dataclasses

    import torch

    from refiner.nets import Generator
    from refiner.train import RefinerConfig

    run = tmp_path_factory.mktemp("refine-run")
    cfg = RefinerConfig()
    torch.save({"config": {"refiner": dataclasses.asdict(cfg)}, "generator": Generator(cfg.generator).state_dict(),
                "step": 0}, run / "generator.pt")
    return run


def copy_dataset(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def edit_coco(folder: Path, edit: Callable[[dict], object]) -> None:
    path = folder / "annotations.json"
    coco = json.loads(path.read_text())
    replaced = edit(coco)  # None: edited in place; a str: the file's new text as is; else the new JSON value
    path.write_text(replaced if isinstance(replaced, str) else json.dumps(coco if replaced is None else replaced))


def foreign_folder(path: Path, *, marker_file: str = "manifest.json") -> Path:
    """The issue's reproduction: someone's project with a manifest.json and a source folder."""
    (path / "src").mkdir(parents=True)
    (path / marker_file).write_text('{"name": "app"}')
    (path / "src" / "app.js").write_text("code\n")
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes by relative path (a file: its bytes under "")."""
    if folder.is_file():
        return {"": folder.read_bytes()}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------------- the table
@dataclass
class Case:
    id: str
    setup: Callable[[Path, dict], dict]  # (tmp, fixtures) -> names substituted into args as {name}
    args: list[str]
    fragment: str  # expected in stderr (rc != 0) or stdout (rc == 0); {name} substituted as well
    rc: int
    after: Callable[[Path, dict], None] = lambda tmp, names: None
    max_seconds: float = 60.0
    needs: tuple[str, ...] = ()  # module fixtures: "dataset", "generator_pt"
    fixtures: dict = field(default_factory=dict)


def _unchanged(key: str):
    """After-check: the folder named ``key`` holds exactly the files it held before the command."""
    def check(tmp: Path, names: dict) -> None:
        assert snapshot(Path(names[key])) == names[f"_before_{key}"], f"{names[key]} was changed"
    return check


def _foreign(tmp: Path, names: dict, marker_file: str = "manifest.json", **extra) -> dict:
    out = foreign_folder(tmp / "project", marker_file=marker_file)
    return {"out": str(out), "_before_out": snapshot(out), **extra}


def _absent(key: str):
    def check(tmp: Path, names: dict) -> None:
        assert not Path(names[key]).exists(), f"{names[key]} should not have been created"
        path = Path(names[key])
        siblings = path.parent.iterdir() if path.parent.is_dir() else []
        leftovers = [p.name for p in siblings if p.name.startswith(f".{path.name}")]
        assert not leftovers, f"temporary siblings left behind: {leftovers}"
    return check


def _tiny_toml(tmp: Path, extra: str = "") -> str:
    path = tmp / "tiny.toml"
    path.write_text(TINY_TOML + extra)
    return str(path)


def _plugin(tmp: Path, body: str) -> str:
    path = tmp / "plug.py"
    path.write_text("import numpy as np\n\n" + body)
    return str(path)


def _predictions(tmp: Path, entries) -> str:
    path = tmp / "preds.json"
    path.write_text(json.dumps(entries))
    return str(path)


def _rle_entry(image_id) -> dict:
    import pycocotools.mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(disks_mask()))
    return {"image_id": image_id, "category_id": 1, "score": 0.9,
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}}


def _ds(tmp: Path, fx: dict, edit=None, **extra) -> dict:
    """A private copy of the module dataset, optionally with annotations.json edited."""
    ds = copy_dataset(fx["dataset"], tmp / "ds")
    if edit is not None:
        edit_coco(ds, edit)
    return {"ds": str(ds), "_before_ds": snapshot(ds), **extra}


def _replace_label(tmp: Path, fx: dict, array: np.ndarray) -> dict:
    names = _ds(tmp, fx)
    cv2.imwrite(str(Path(names["ds"]) / "labels" / "000000.png"), array)
    return {**names, "_before_ds": snapshot(Path(names["ds"]))}


def _replace_image(tmp: Path, fx: dict, array: np.ndarray) -> dict:
    names = _ds(tmp, fx)
    cv2.imwrite(str(Path(names["ds"]) / "images" / "000000.png"), array)
    return {**names, "_before_ds": snapshot(Path(names["ds"]))}


def _no_pixel_size(coco: dict) -> None:
    del coco["images"][0]["pixel_size_nm"]


def _soft_mask_source(tmp: Path, fx: dict) -> dict:
    src = write_source(tmp / "src", n=1)
    soft = cv2.GaussianBlur(disks_mask(), (5, 5), 1.5)  # anti-aliased edges: many grey levels
    cv2.imwrite(str(src / "masks" / "img0_m.png"), soft)
    return {"src": str(src), "out": str(tmp / "out")}


def _ambiguous_source(tmp: Path, fx: dict) -> dict:
    src = write_source(tmp / "src", n=1)
    cv2.imwrite(str(src / "masks" / "img0.png"), 255 - disks_mask())  # a second, different mask candidate
    return {"src": str(src), "out": str(tmp / "out")}


def _black_rows_source(tmp: Path, fx: dict) -> dict:
    src = write_source(tmp / "src", n=1)
    image = sem_image(disks_mask())
    image[38:42] = 0  # a dark band inside the image (a crack, a scan glitch): not an info bar
    cv2.imwrite(str(src / "img0.png"), image)
    return {"src": str(src), "out": str(tmp / "out")}


def _height_is(folder_key: str, height: int):
    def check(tmp: Path, names: dict) -> None:
        coco = json.loads((Path(names[folder_key]) / "annotations.json").read_text())
        assert [im["height"] for im in coco["images"]] == [height]
    return check


def _unreadable_source(tmp: Path, fx: dict) -> dict:
    src = tmp / "src"
    src.mkdir()
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return {"src": str(src), "out": str(tmp / "out")}


def _read_only(tmp: Path, fx: dict) -> dict:
    """A folder without write permission; root may write anywhere, so it gets /proc (no new files there)."""
    if os.geteuid() == 0:
        return {"out": "/proc/semsynth-test/ds", "toml": _tiny_toml(tmp)}
    parent = tmp / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    return {"out": str(parent / "ds"), "toml": _tiny_toml(tmp)}


def _is_dataset(key: str):
    def check(tmp: Path, names: dict) -> None:
        from simulator.io.check import check_dataset

        assert check_dataset(names[key]) == []
    return check


def _realism_set(tmp: Path, fx: dict, files: dict[str, bytes]) -> dict:
    folder = tmp / "set"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {"set": str(folder), "ds": str(fx["dataset"]), "out": str(tmp / "realism")}


def _own_dataset_with_extra(tmp: Path, fx: dict) -> dict:
    ds = copy_dataset(fx["dataset"], tmp / "ds")
    (ds / "notes.txt").write_text("my notes\n")
    return {"ds": str(ds), "_before_ds": snapshot(ds), "toml": _tiny_toml(tmp)}


def _legacy_dataset(tmp: Path, fx: dict) -> dict:
    """A dataset written before the output marker existed: every entry is one a dataset owns."""
    ds = copy_dataset(fx["dataset"], tmp / "ds")
    for marker in ds.glob(".semsynth*"):
        marker.unlink()
    return {"ds": str(ds), "toml": _tiny_toml(tmp)}


def _own_validation_with_extra(tmp: Path, fx: dict) -> dict:
    """An earlier validate output (marker, validation.json, synthetic/) plus a file of the user's."""
    from simulator.io.outputs import VALIDATION, write_marker

    out = tmp / "val"
    (out / "synthetic").mkdir(parents=True)
    write_marker(out, VALIDATION, "validate")
    (out / "validation.json").write_text('{"verdict": {"agrees": []}}\n')
    (out / "notes.txt").write_text("my notes\n")
    return {"ds": str(fx["dataset"]), "out": str(out), "_before_out": snapshot(out), "toml": _tiny_toml(tmp)}


def _bad_class_mask_source(tmp: Path, fx: dict) -> dict:
    """A source whose class mask (classes/img0_cm.png) has a colour the BAM colour map does not name."""
    src = write_source(tmp / "src", n=1)
    (src / "classes").mkdir()
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[8:20, 10:22] = (0, 255, 0)  # BGR for cv2: green = fully visible
    rgb[0, 0] = (128, 128, 128)  # grey: no class
    cv2.imwrite(str(src / "classes" / "img0_cm.png"), rgb)
    return {"src": str(src), "out": str(tmp / "real")}


def _file_as_out_parent(tmp: Path, fx: dict, **extra) -> dict:
    (tmp / "file.txt").write_text("x\n")
    return {"out": str(tmp / "file.txt" / "sub"), "toml": _tiny_toml(tmp), **extra}


def _help_has(*fragments: str, absent: tuple[str, ...] = ()):
    def check(tmp: Path, names: dict) -> None:
        out = names["_stdout"]
        for fragment in fragments:
            assert fragment in out, f"{fragment!r} missing from the help:\n{out}"
        for fragment in absent:
            assert fragment not in out, f"{fragment!r} should not be in the help:\n{out}"
    return check


def _options_all_have_help(tmp: Path, names: dict) -> None:
    """Every option row of the help (COLUMNS=200: one line each) says more than its name, type and default."""
    import re

    rows = [line.strip(" │|*") for line in names["_stdout"].splitlines()]
    rows = [row for row in rows if row.startswith("--")]
    bare = [row for row in rows
            if not re.sub(r"--[\w-]+|-\w\b|<[^>]*>|\[[^\]]*\]|[A-Z]+\b|[,/]", "", row).strip()]
    assert rows and not bare, f"options without help text: {bare}"


SIMULATE = ["simulate", "{toml}", "--n", "2", "--out", "{out}", "--no-preview"]
DS_FX = ("dataset",)
CASES = [
    # ---- --overwrite never deletes what is not ours, for every command that writes a folder
    Case("simulate-overwrite-foreign", lambda t, f: _foreign(t, f, toml=_tiny_toml(t)),
         [*SIMULATE, "--overwrite"], "src", 2, _unchanged("out"), max_seconds=20),
    Case("simulate-overwrite-foreign-runjson", lambda t, f: _foreign(t, f, "run.json", toml=_tiny_toml(t)),
         [*SIMULATE, "--overwrite"], "src", 2, _unchanged("out"), max_seconds=20),
    Case("ingest-overwrite-foreign", lambda t, f: _foreign(t, f, src=str(write_source(t / "src"))),
         ["ingest", "{src}", "--out", "{out}", "--pixel-size-nm", "5", "--overwrite"], "src", 2, _unchanged("out")),
    Case("refine-apply-overwrite-foreign",
         lambda t, f: _foreign(t, f, "annotations.json", ds=str(f["dataset"]), run=str(f["generator_pt"])),
         ["refine", "apply", "{run}", "--input", "{ds}", "--out", "{out}", "--overwrite", "--device", "cpu"],
         "src", 2, _unchanged("out"), needs=("dataset", "generator_pt")),
    Case("evaluate-out-foreign",
         lambda t, f: _foreign(t, f, "metrics.json", ds=str(f["dataset"])),
         ["evaluate", "--dataset", "{ds}", "--model", "watershed", "--out", "{out}", "--resamples", "2"],
         "src", 2, _unchanged("out"), needs=DS_FX),
    Case("realism-out-foreign",
         lambda t, f: _foreign(t, f, "realism.json", ds=str(f["dataset"])),
         ["realism", "{ds}", "{ds}", "--out", "{out}", "--steps", "1", "--ae-steps", "1", "--crop-px", "16"],
         "src", 2, _unchanged("out"), max_seconds=20, needs=DS_FX),
    Case("robustness-out-foreign",
         lambda t, f: _foreign(t, f, "robustness.json"),
         ["robustness", str(ROOT / "configs/sweeps/robustness.toml"), "--model", "watershed", "--out", "{out}"],
         "src", 2, _unchanged("out"), max_seconds=20),
    Case("validate-out-foreign",
         lambda t, f: _foreign(t, f, "validation.json", ds=str(f["dataset"]), toml=_tiny_toml(t)),
         ["validate", "--real", "{ds}", "--config", "{toml}", "--n", "2", "--model", "watershed", "--out", "{out}"],
         "src", 2, _unchanged("out"), max_seconds=20, needs=DS_FX),
    Case("validate-own-output-with-foreign-file", _own_validation_with_extra,
         ["validate", "--real", "{ds}", "--config", "{toml}", "--n", "2", "--model", "watershed", "--out", "{out}"],
         "notes.txt", 2, _unchanged("out"), max_seconds=20, needs=DS_FX),
    Case("simulate-overwrite-own-dataset-with-foreign-file", _own_dataset_with_extra,
         ["simulate", "{toml}", "--n", "2", "--out", "{ds}", "--no-preview", "--overwrite"], "notes.txt", 2,
         _unchanged("ds"), needs=DS_FX),
    Case("simulate-overwrite-legacy-dataset", _legacy_dataset,
         ["simulate", "{toml}", "--n", "2", "--out", "{ds}", "--no-preview", "--overwrite"], "wrote 2 images", 0,
         _is_dataset("ds"), needs=DS_FX),
    # ---- valid but sparse or tiny configs: a dataset, not a crash
    Case("simulate-sparse-config",
         lambda t, f: {"toml": _tiny_toml(t, "[field]\nprimaries_per_um2 = 0.05\n"), "out": str(t / "sparse")},
         ["simulate", "{toml}", "--n", "2", "--out", "{out}"], "wrote 2 images", 0, _is_dataset("out")),
    Case("simulate-8x8-image",
         lambda t, f: {"toml": str(_write(t / "t8.toml", "[image]\nwidth_px = 8\nheight_px = 8\n")),
                       "out": str(t / "t8")},
         ["simulate", "{toml}", "--n", "2", "--out", "{out}"], "wrote 2 images", 0, _is_dataset("out")),
    # ---- predictions that match nothing are an error, not a score of 0
    Case("predictions-no-matching-image-id",
         lambda t, f: {"ds": str(f["dataset"]), "preds": _predictions(t, [_rle_entry(77), _rle_entry(78)]),
                       "out": str(t / "ev")},
         ["evaluate", "--dataset", "{ds}", "--model", "predictions:{preds}", "--out", "{out}", "--resamples", "2"],
         "preds.json", 2, _absent("out"), needs=DS_FX),
    Case("predictions-string-image-ids",
         lambda t, f: {"ds": str(f["dataset"]), "preds": _predictions(t, [_rle_entry("1"), _rle_entry("2")]),
                       "out": str(t / "ev")},
         ["evaluate", "--dataset", "{ds}", "--model", "predictions:{preds}", "--out", "{out}", "--resamples", "2"],
         "preds.json", 2, _absent("out"), needs=DS_FX),
    Case("predictions-empty-list",
         lambda t, f: {"ds": str(f["dataset"]), "preds": _predictions(t, []), "out": str(t / "ev")},
         ["evaluate", "--dataset", "{ds}", "--model", "predictions:{preds}", "--out", "{out}", "--resamples", "2"],
         "preds.json", 2, _absent("out"), needs=DS_FX),
    # ---- ingest: silent wrong labels
    Case("ingest-soft-edged-mask", _soft_mask_source,
         ["ingest", "{src}", "--out", "{out}", "--pixel-size-nm", "5"], "img0_m.png", 2, _absent("out")),
    Case("ingest-ambiguous-pair", _ambiguous_source,
         ["ingest", "{src}", "--out", "{out}", "--pixel-size-nm", "5"], "img0", 2, _absent("out")),
    Case("ingest-black-rows-inside-image", _black_rows_source,
         ["ingest", "{src}", "--out", "{out}", "--pixel-size-nm", "5"], "wrote 1 images", 0, _height_is("out", 48)),
    Case("ingest-nothing-written", _unreadable_source,
         ["ingest", "{src}", "--out", "{out}", "--pixel-size-nm", "5"], "broken.png", 2, _absent("out")),
    # ---- configs that are not TOML files
    Case("config-is-a-directory", lambda t, f: {"toml": str(_mkdir(t / "cfgdir")), "out": str(t / "o")},
         SIMULATE, "cfgdir", 2, _absent("out")),
    Case("config-is-binary", lambda t, f: {"toml": str(_write(t / "cfg.toml", b"\x89PNG\x00\xff\xfe")),
                                           "out": str(t / "o")},
         SIMULATE, "cfg.toml", 2, _absent("out")),
    Case("config-file-not-found", lambda t, f: {"toml": str(t / "missing.toml"), "out": str(t / "o")},
         SIMULATE, "missing.toml: config file not found", 2, _absent("out")),
    # ---- other inputs that do not exist or cannot be used
    Case("evaluate-unknown-model-spec", lambda t, f: {"ds": str(f["dataset"]), "out": str(t / "ev")},
         ["evaluate", "--dataset", "{ds}", "--model", "wattershed", "--out", "{out}", "--resamples", "2"],
         "--model: model spec 'wattershed': unknown model kind", 2, _absent("out"), needs=DS_FX),
    Case("refine-apply-run-without-generator",
         lambda t, f: {"ds": str(f["dataset"]), "run": str(_mkdir(t / "run")), "out": str(t / "ref")},
         ["refine", "apply", "{run}", "--input", "{ds}", "--out", "{out}", "--device", "cpu"],
         "{run}/generator.pt: missing", 2, _absent("out"), needs=DS_FX),
    Case("ingest-class-mask-unknown-colour", _bad_class_mask_source,
         ["ingest", "{src}", "--out", "{out}", "--pixel-size-nm", "5"], "{src}/classes/img0_cm.png: 1 pixels have a "
         "colour the class map does not name", 2, _absent("out")),
    # ---- --out that cannot be written
    Case("simulate-out-under-a-file", _file_as_out_parent, SIMULATE, "file.txt", 2),
    Case("evaluate-out-under-a-file", lambda t, f: _file_as_out_parent(t, f, ds=str(f["dataset"])),
         ["evaluate", "--dataset", "{ds}", "--model", "watershed", "--out", "{out}", "--resamples", "2"],
         "file.txt", 2, needs=DS_FX),
    Case("simulate-out-read-only", _read_only, SIMULATE, "{out}", 2, _absent("out")),
    # ---- annotations.json of the wrong shape
    *[Case(f"evaluate-annotations-{name}", lambda t, f, e=edit: _ds(t, f, e, out=str(t / "ev")),
           ["evaluate", "--dataset", "{ds}", "--model", "watershed", "--out", "{out}", "--resamples", "2"],
           "annotations.json", 2, _absent("out"), needs=DS_FX)
      for name, edit in (("null", lambda c: "null"), ("list", lambda c: []),
                         ("images-a-dict", lambda c: c.update(images={"a": 1})),
                         ("no-pixel-size", _no_pixel_size))],
    *[Case(f"check-annotations-{name}", lambda t, f, e=edit: _ds(t, f, e),
           ["check", "{ds}"], "annotations.json", 1, _unchanged("ds"), needs=DS_FX)
      for name, edit in (("null", lambda c: "null"), ("list", lambda c: []),
                         ("images-a-dict", lambda c: c.update(images={"a": 1})),
                         ("no-pixel-size", _no_pixel_size))],
    # ---- plug-in models that misbehave
    Case("plugin-raises",
         lambda t, f: {"ds": str(f["dataset"]), "plug": _plugin(t, "def seg(image, pixel_size_nm):\n"
                                                                  "    raise RuntimeError('boom')\n"),
                       "out": str(t / "ev")},
         ["evaluate", "--dataset", "{ds}", "--model", "python:{plug}:seg", "--out", "{out}", "--resamples", "2"],
         "boom", 2, _absent("out"), needs=DS_FX),
    Case("plugin-returns-wrong-thing",
         lambda t, f: {"ds": str(f["dataset"]), "plug": _plugin(t, "def seg(image, pixel_size_nm):\n"
                                                                  "    return 'a string'\n"),
                       "out": str(t / "ev")},
         ["evaluate", "--dataset", "{ds}", "--model", "python:{plug}:seg", "--out", "{out}", "--resamples", "2"],
         "plug.py", 2, _absent("out"), needs=DS_FX),
    Case("plugin-wrong-signature",
         lambda t, f: {"ds": str(f["dataset"]), "plug": _plugin(t, "def seg():\n    return None\n"),
                       "out": str(t / "ev")},
         ["evaluate", "--dataset", "{ds}", "--model", "python:{plug}:seg", "--out", "{out}", "--resamples", "2"],
         "plug.py", 2, _absent("out"), needs=DS_FX),
    # ---- devices and sizes
    Case("realism-device-cuda-without-gpu",
         lambda t, f: {"ds": str(f["dataset"]), "out": str(t / "r")},
         ["realism", "{ds}", "{ds}", "--out", "{out}", "--device", "cuda:99", "--steps", "1"], "--device: 'cuda:99'", 2,
         _absent("out"), max_seconds=20, needs=DS_FX),
    Case("refine-apply-device-cuda-without-gpu",
         lambda t, f: {"ds": str(f["dataset"]), "run": str(f["generator_pt"]), "out": str(t / "ref")},
         ["refine", "apply", "{run}", "--input", "{ds}", "--out", "{out}", "--device", "cuda:99"],
         "--device: 'cuda:99'", 2, _absent("out"), needs=("dataset", "generator_pt")),
    Case("refine-apply-image-below-receptive-field",
         lambda t, f: _small_image_dataset(t, f),
         ["refine", "apply", "{run}", "--input", "{ds}", "--out", "{out}", "--device", "cpu"], "000000.png", 2,
         _absent("out"), needs=("dataset", "generator_pt")),
    # ---- work before checks
    Case("robustness-unknown-measurand-fails-fast", lambda t, f: {"out": str(t / "rob")},
         ["robustness", str(ROOT / "configs/sweeps/robustness.toml"), "--model", "watershed", "--out", "{out}",
          "--measurand", "F2"], "F2", 2, _absent("out"), max_seconds=20),
    Case("realism-out-is-a-file-fails-fast",
         lambda t, f: {"ds": str(f["dataset"]), "out": str(_write(t / "report.txt", "mine\n")),
                       "_before_out": {"": b"mine\n"}},
         ["realism", "{ds}", "{ds}", "--out", "{out}", "--steps", "200"], "report.txt", 2,
         _unchanged("out"), max_seconds=20, needs=DS_FX),
    # ---- check says OK only for what evaluate accepts
    *[Case(f"{cmd}-{name}", (lambda t, f, a=array, r=replace: r(t, f, a)),
           ["check", "{ds}"] if cmd == "check" else
           ["evaluate", "--dataset", "{ds}", "--model", "watershed", "--out", "{ds}/../ev", "--resamples", "2"],
           fragment, 1 if cmd == "check" else 2, _unchanged("ds"), needs=DS_FX)
      for cmd in ("check", "evaluate")
      for name, replace, array, fragment in (
          ("label-map-wrong-size", _replace_label, np.zeros((24, 32), np.uint16), "labels/000000.png"),
          ("rgb-image", _replace_image, np.full((48, 64, 3), 99, np.uint8), "images/000000.png"))],
    Case("check-no-pixel-size", lambda t, f: _ds(t, f, _no_pixel_size), ["check", "{ds}"], "pixel_size_nm", 1,
         _unchanged("ds"), needs=DS_FX),
    # ---- messages name the file
    Case("realism-corrupt-image", lambda t, f: _realism_set(t, f, {"a.png": b"\x89PNG\r\n\x1a\ngarbage"}),
         ["realism", "{set}", "{ds}", "--out", "{out}", "--pixel-size-nm", "5", "--steps", "1"], "a.png", 2,
         _absent("out"), max_seconds=20, needs=DS_FX),
    Case("realism-annotations-not-json", lambda t, f: {**_ds(t, f, lambda c: "{not json"), "out": str(t / "r")},
         ["realism", "{ds}", "{ds}", "--out", "{out}", "--steps", "1"], "annotations.json", 2, _absent("out"),
         max_seconds=20, needs=DS_FX),
    Case("refine-apply-annotations-not-json",
         lambda t, f: {**_ds(t, f, lambda c: "{not json"), "run": str(f["generator_pt"]), "out": str(t / "ref")},
         ["refine", "apply", "{run}", "--input", "{ds}", "--out", "{out}", "--device", "cpu"], "annotations.json", 2,
         _absent("out"), needs=("dataset", "generator_pt")),
    Case("fit-annotations-not-json",
         lambda t, f: {**_ds(t, f, lambda c: "{not json"), "out": str(t / "fit" / "fitted.toml")},
         ["fit", "{ds}", "--out", "{out}", "--n-sim", "1", "--rounds", "1"], "annotations.json", 2,
         _absent("out"), needs=DS_FX),
    Case("fit-without-masks",
         lambda t, f: _unlabelled_dataset(t),
         ["fit", "{ds}", "--out", "{out}", "--n-sim", "1", "--rounds", "1"], "label", 2, _absent("out")),
    # ---- help and version
    Case("help-simulate-shows-sweep-section", lambda t, f: {}, ["simulate", "--help"], "[sweep]", 0),
    Case("help-robustness-measurand", lambda t, f: {}, ["robustness", "--help"], "--measurand", 0,
         _help_has("D50_rel_err", absent=("1 - F1 style scores are not errors",))),
    Case("help-refine-apply-options", lambda t, f: {}, ["refine", "apply", "--help"], "--overwrite", 0,
         _options_all_have_help),
    Case("version", lambda t, f: {}, ["--version"], "semsynth 0.1.0", 0),
]


def _write(path: Path, data: str | bytes) -> Path:
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _small_image_dataset(tmp: Path, fx: dict) -> dict:
    """A dataset of 4 x 4 px images: smaller than the refiner's receptive field."""
    from eval.data.ingest import ingest

    src = tmp / "src"
    (src / "masks").mkdir(parents=True)
    mask = np.zeros((4, 4), np.uint8)
    mask[1:3, 1:3] = 255
    cv2.imwrite(str(src / "img0.png"), sem_image(mask))
    cv2.imwrite(str(src / "masks" / "img0_m.png"), mask)
    ingest(src, tmp / "small", pixel_size_nm=PIXEL_SIZE_NM)
    return {"ds": str(tmp / "small"), "run": str(fx["generator_pt"]), "out": str(tmp / "ref")}


def _unlabelled_dataset(tmp: Path) -> dict:
    from eval.data.ingest import ingest

    ingest(write_source(tmp / "src", masks=False), tmp / "nolabels", pixel_size_nm=PIXEL_SIZE_NM)
    return {"ds": str(tmp / "nolabels"), "out": str(tmp / "fit" / "fitted.toml")}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, request):
    fixtures = {name: request.getfixturevalue(name) for name in case.needs}
    names = case.setup(tmp_path, fixtures)
    args = [a.format(**names) for a in case.args]
    start = time.perf_counter()
    proc = run_cli(*args, cwd=tmp_path, timeout=max(case.max_seconds, 5))
    seconds = time.perf_counter() - start
    fragment = case.fragment.format(**names)
    stream = proc.stdout if case.rc == 0 else proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    assert proc.returncode == case.rc, f"rc {proc.returncode}, expected {case.rc}\n{proc.stderr[-3000:]}"
    assert fragment in stream, f"{fragment!r} not in:\n{stream[-3000:]}"
    if case.rc == 2:
        line = next(line for line in proc.stderr.splitlines() if line.startswith("error: "))
        assert "(expected " in line, f"message does not say what was expected: {line}"
    assert seconds <= case.max_seconds, f"took {seconds:.1f} s: the check must come before the expensive work"
    case.after(tmp_path, {**names, "_stdout": proc.stdout})


SUBPROCESS_CASES = ("simulate-overwrite-foreign", "config-is-binary", "plugin-raises", "version")


@pytest.mark.parametrize("case", [c for c in CASES if c.id in SUBPROCESS_CASES], ids=SUBPROCESS_CASES)
def test_subprocess_agrees(case: Case, tmp_path, request):
    """The truth is a subprocess: for a sample of the table, the same exit code and message there."""
    fixtures = {name: request.getfixturevalue(name) for name in case.needs}
    names = case.setup(tmp_path, fixtures)
    proc = run_cli(*[a.format(**names) for a in case.args], cwd=tmp_path, in_process=False)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    assert proc.returncode == case.rc, proc.stderr[-3000:]
    assert case.fragment.format(**names) in (proc.stdout if case.rc == 0 else proc.stderr)
    case.after(tmp_path, {**names, "_stdout": proc.stdout})


def test_overwrite_replaces_own_output_and_keeps_nothing_foreign(tmp_path, dataset):
    """--overwrite on a folder a semsynth command wrote replaces it; the marker names the kind of output."""
    from eval.data.ingest import ingest

    out = copy_dataset(dataset, tmp_path / "ds")
    proc = run_cli("ingest", str(write_source(tmp_path / "src", n=1)), "--out", str(out), "--pixel-size-nm", "5",
                   "--overwrite", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    coco = json.loads((out / "annotations.json").read_text())
    assert len(coco["images"]) == 1
    markers = list(out.glob(".semsynth*"))
    assert len(markers) == 1 and json.loads(markers[0].read_text())["kind"]
    del ingest


PARENT = """
import sys, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
sys.path.insert(0, {root!r})
from simulator.io.writer import die_with_parent

def pid(_):
    import os
    return os.getpid()

if __name__ == "__main__":
    pool = ProcessPoolExecutor(2, mp_context=get_context("spawn"), initializer=die_with_parent,
                               initargs=(0.1,))
    print(*sorted(set(pool.map(pid, range(8)))), flush=True)
    time.sleep(60)
"""


def test_workers_die_with_the_main_process(tmp_path):
    """kill -9 of the main process alone (no chance to stop its pool): the workers exit within seconds (without
    ``die_with_parent`` they live on)."""
    import signal

    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(root=str(ROOT)))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    workers = [int(p) for p in parent.stdout.readline().split()]
    assert workers
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    alive = workers
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in workers if _running(p)]
    assert not alive, f"workers {alive} outlived the main process"


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False
