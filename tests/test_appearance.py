"""The paired appearance model (refiner.appearance): inputs, identity at step 0, training, resume, apply."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import digest
from typer.testing import CliRunner

from refiner.appearance.apply import apply
from refiner.appearance.gate import GateConfig, gate_reference, judge, load_segmenter
from refiner.appearance.inputs import RenderSettings, model_inputs, separate_touching
from refiner.appearance.nets import NetConfig
from refiner.appearance.train import AppearanceConfig, Pairs, build_nets, generate, train
from simulator.config import ProbeConfig, ShadingConfig

PX = 7.344
SETTINGS = RenderSettings(ShadingConfig(), ProbeConfig())
RENDER = {"shading": asdict(ShadingConfig()), "probe": asdict(ProbeConfig())}
TINY = AppearanceConfig(steps=8, batch_size=2, crop_px=32, checkpoint_every=4, gate_images=1, gate_crop_px=0,
                        lr_g=2e-3, net=NetConfig(width=8, dilations=(1, 2), disc_width=8))


def scene(shape=(64, 80), seed=0) -> np.ndarray:
    """A simulated-style label map: two touching discs (ids 1, 2 share an edge), one apart, one ellipse."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.int32)
    cy, cx = shape[0] // 2 + int(rng.integers(-3, 4)), 20
    lab[(yy - cy) ** 2 + (xx - cx) ** 2 < 100] = 1
    lab[((yy - cy) ** 2 + (xx - cx - 18) ** 2 < 100) & (lab == 0)] = 2  # touches 1 along x = cx + 9
    lab[(yy - 12) ** 2 + (xx - 62) ** 2 < 36] = 3
    lab[((yy - 50) / 6.0) ** 2 + ((xx - 62) / 11.0) ** 2 < 1] = 4
    return lab


def real_style(labels: np.ndarray) -> np.ndarray:
    """What a manual mask of the same shapes gives: a 0/255 mask with 1-px separations -> 4-connected pieces."""
    mask = np.where(separate_touching(labels) > 0, 255, 0).astype(np.uint8)
    _, inst = cv2.connectedComponents((mask > 0).astype(np.uint8), connectivity=4)
    return inst.astype(np.int32)


def tiny_pairs(n=2, shape=(64, 80)) -> Pairs:
    labels = [scene(shape, seed=i) for i in range(n)]
    buffers = [model_inputs(lab, PX, SETTINGS) for lab in labels]
    rng = np.random.default_rng(1)
    real = [(b[0] + 0.08 + 0.03 * rng.standard_normal(b[0].shape)).astype(np.float32) for b in buffers]
    return Pairs(buffers, real, labels, [(0.2, 0.8)] * n, [f"{i:06d}.png" for i in range(n)], PX)


def test_separations_drawn_like_real_masks():
    lab = scene()
    sep = separate_touching(lab)
    assert not ((sep[:, 1:] > 0) & (sep[:, :-1] > 0) & (sep[:, 1:] != sep[:, :-1])).any()
    assert not ((sep[1:] > 0) & (sep[:-1] > 0) & (sep[1:] != sep[:-1])).any()
    assert np.array_equal(separate_touching(real_style(lab)), real_style(lab))  # a real mask is unchanged
    assert ((lab > 0) & (sep == 0)).sum() > 0 and ((lab == 0) & (sep > 0)).sum() == 0


def test_inputs_of_real_mask_and_simulated_labels_agree():
    lab = scene()
    a, b = model_inputs(lab, PX, SETTINGS), model_inputs(real_style(lab), PX, SETTINGS)
    assert a.shape == (6, *lab.shape)
    np.testing.assert_array_equal(a, b)
    assert a[3].sum() > 0  # the separation between the touching discs is an explicit input


def test_step_zero_reproduces_the_render_exactly():
    pairs = tiny_pairs(1)
    for family in ("gan", "vae"):
        nets = build_nets(replace(TINY, family=family), 0)
        out = generate(nets.generator, family, TINY.net, pairs.buffers[0], torch.Generator().manual_seed(3))
        np.testing.assert_array_equal(out, pairs.buffers[0][0])


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gan", "vae"])
def test_training_lowers_losses_and_resumes_bit_identically(tmp_path, family):
    pairs = tiny_pairs()
    cfg = replace(TINY, family=family, steps=24, checkpoint_every=12)
    train(pairs, tmp_path / "a", cfg, seed=5, render_settings=RENDER)
    losses = [json.loads(x) for x in (tmp_path / "a" / "losses.jsonl").read_text().splitlines()]
    key = "low_l1" if family == "gan" else "nll"
    assert np.mean([r[key] for r in losses[-4:]]) < np.mean([r[key] for r in losses[:4]])

    class Stop(Exception):
        pass

    def stop_after_checkpoint(info):
        if info.step == 13:
            raise Stop

    with pytest.raises(Stop):
        train(pairs, tmp_path / "b", cfg, seed=5, render_settings=RENDER, on_step=stop_after_checkpoint)
    train(pairs, tmp_path / "b", cfg, seed=5, render_settings=RENDER, resume=True)
    a = torch.load(tmp_path / "a" / "state.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "state.pt", weights_only=False)
    for k, v in a["generator"].items():
        assert torch.equal(v, b["generator"][k]), k
    assert (tmp_path / "a" / "losses.jsonl").read_bytes() == (tmp_path / "b" / "losses.jsonl").read_bytes()
    assert (tmp_path / "a" / "model.pt").exists() and list((tmp_path / "a" / "samples").glob("*.png"))


def _dataset(folder: Path, n=2) -> None:
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    images = []
    for i in range(n):
        lab = scene(seed=i)
        cv2.imwrite(str(folder / "labels" / f"{i:06d}.png"), lab.astype(np.uint16))
        cv2.imwrite(str(folder / "images" / f"{i:06d}.png"), np.full(lab.shape, 90, np.uint8))
        images.append({"id": i + 1, "file_name": f"{i:06d}.png", "label_file": f"labels/{i:06d}.png",
                       "width": lab.shape[1], "height": lab.shape[0], "pixel_size_nm": PX})
    (folder / "annotations.json").write_text(json.dumps({"images": images, "annotations": [], "categories": []}))


def test_apply_never_changes_annotations(tmp_path):
    train(tiny_pairs(), tmp_path / "run", replace(TINY, steps=4), seed=0, render_settings=RENDER)
    _dataset(tmp_path / "sim")
    apply(tmp_path / "run", tmp_path / "sim", tmp_path / "out", seed=1)
    before, after = digest(tmp_path / "sim"), digest(tmp_path / "out")
    for name, sha in before.items():
        if not name.startswith("images/"):
            assert after[name] == sha, name
    assert {n for n in after if n.startswith("images/")} == {n for n in before if n.startswith("images/")}
    apply(tmp_path / "run", tmp_path / "sim", tmp_path / "out", seed=1)  # our own output may be replaced
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        apply(tmp_path / "run", tmp_path / "sim", tmp_path / "other")


def test_noise_changes_texture_not_fidelity():
    labels = [scene((128, 128), seed=s) for s in range(2)]
    buffers = [model_inputs(lab, PX, SETTINGS) for lab in labels]
    nets = build_nets(TINY, 0)
    with torch.no_grad():
        torch.nn.init.normal_(nets.generator.tail.weight, std=0.05, generator=torch.Generator().manual_seed(0))
    seg, gate = load_segmenter("watershed"), GateConfig()
    ref = gate_reference([b[0] for b in buffers], [b[0] for b in buffers], labels, PX, seg, gate)
    records = []
    for k in range(2):
        gen = [generate(nets.generator, "gan", TINY.net, b, torch.Generator().manual_seed(k)) for b in buffers]
        records.append((gen, judge(gen, labels, PX, seg, ref, gate)))
    (g0, r0), (g1, r1) = records
    assert np.abs(g0[0] - g1[0]).mean() > 1e-3  # texture differs
    for key in ("gen_F1", "gen_split_rate", "gen_merge_rate"):
        assert abs(r0[key] - r1[key]) <= 0.05, key


def test_cli_errors_are_one_line(tmp_path):
    from cli import app

    res = CliRunner().invoke(app, ["appearance", "apply", str(tmp_path / "nope"), "--input", str(tmp_path),
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "error:" in res.output and "model.pt" in res.output and "Traceback" not in res.output


def test_pairs_round_trip(tmp_path):
    pairs = tiny_pairs()
    pairs.save(tmp_path / "p.npz")
    back = Pairs.load(tmp_path / "p.npz")
    for a, b in zip(pairs.buffers, back.buffers, strict=True):
        np.testing.assert_array_equal(a[1:], b[1:])
        np.testing.assert_allclose(a[0], b[0], atol=2e-3)
    assert back.names == pairs.names and back.levels == pairs.levels


def test_training_imports_nothing_the_gpu_machine_lacks():
    """The training entry point (bench_appearance train) runs where pycocotools, kornia, noise, dask and SALib
    are missing."""
    import subprocess
    import sys

    code = ("import sys\n"
            "for m in ('pycocotools', 'kornia', 'noise', 'dask', 'SALib'): sys.modules[m] = None\n"
            "from refiner.appearance.train import train, Pairs\n"
            "from refiner.appearance.gate import load_segmenter\n"
            "load_segmenter('watershed')\n"
            "import runpy; runpy.run_path('bench/bench_appearance.py', run_name='not_main')\n")
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
