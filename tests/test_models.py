"""Model layer: spec parsing, the watershed baseline, external COCO predictions, python plug-ins, the U-Net."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from conftest import small_config
from pycocotools import mask as mask_utils

from eval.segment.interface import Prediction, as_prediction
from eval.segment.options import parse_options
from eval.segment.plugin import PluginModel
from eval.segment.predictions import CocoPredictionsModel, predictions_to_labels
from eval.segment.registry import load_model
from eval.segment.unet import (
    UNet,
    UNetConfig,
    build_unet,
    forward_image,
    instance_targets,
    load_unet,
    read_checkpoint,
    train_unet,
)
from eval.segment.watershed import WatershedConfig, WatershedModel, watershed_segment
from simulator.io.writer import write_dataset

TINY = UNetConfig(base_channels=4, depth=2, max_channels=16, head_channels=4)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------ helpers
def disks_image(shape, centres_px, radii_px, *, seed=0, noise=0.02):
    """Bright disks (0.6) on a dark substrate (0.1) with Gaussian noise, and the visible label map (later
    disks on top)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for k, ((cy, cx), r) in enumerate(zip(centres_px, radii_px, strict=True)):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r**2] = k + 1
    rng = np.random.default_rng(seed)
    image = np.where(labels > 0, 0.6, 0.1) + rng.normal(0, noise, shape)
    return np.clip(image, 0, 1).astype(np.float32), labels


def best_ious(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """For each true instance, the best IoU of any predicted instance."""
    nt, npred = truth.max() + 1, pred.max() + 1
    inter = np.bincount(truth.ravel() * npred + pred.ravel(), minlength=nt * npred).reshape(nt, npred)
    union = inter.sum(1)[:, None] + inter.sum(0)[None, :] - inter
    return (inter / np.maximum(union, 1))[1:, 1:].max(axis=1)


def rle_of(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


# ------------------------------------------------------------------------------------------------ specs
def test_watershed_spec_options_are_typed_and_merged():
    model = load_model("watershed:min_separation_nm=80, threshold=0.3,fill_holes=false", min_area_nm2=500)
    assert isinstance(model, WatershedModel)
    assert model.cfg == WatershedConfig(min_separation_nm=80.0, threshold=0.3, fill_holes=False, min_area_nm2=500.0)
    assert load_model("watershed").cfg == WatershedConfig()
    assert load_model("watershed:threshold=li").cfg.threshold == "li"
    assert model.describe()["min_separation_nm"] == 80.0
    assert parse_options("a=1, b = x") == {"a": "1", "b": "x"}


@pytest.mark.parametrize(
    ("spec", "error", "words"),
    [
        ("", ValueError, ["empty spec", "watershed:key=value"]),
        ("maskrcnn:model.pt", ValueError, ["'maskrcnn'", "unet:PATH", "python:module:callable"]),
        ("watershed:bogus=1", ValueError, ["bogus", "min_separation_nm"]),
        ("watershed:min_area_nm2=big", ValueError, ["min_area_nm2", "'big'"]),
        ("watershed:min_area_nm2", ValueError, ["not key=value"]),
        ("watershed:threshold=median", ValueError, ["threshold", "'median'"]),
        ("watershed:min_separation_nm=-5", ValueError, ["min_separation_nm", "-5"]),
        ("unet:", ValueError, ["checkpoint path", "expected one of the forms watershed,"]),
        ("unet:/nonexistent/model.pt", FileNotFoundError, ["/nonexistent/model.pt"]),
        ("predictions:/nonexistent/preds.json", FileNotFoundError, ["/nonexistent/preds.json"]),
        ("python:just_a_module", ValueError, ["python:module:callable"]),
        ("python:no_such_module_semsynth:fn", ModuleNotFoundError, ["no_such_module_semsynth"]),
        ("python:/nonexistent/plugin.py:fn", FileNotFoundError, ["/nonexistent/plugin.py"]),
    ],
)
def test_bad_specs_name_the_spec_and_the_problem(spec, error, words):
    with pytest.raises(error) as info:
        load_model(spec)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_option_given_twice_is_refused():
    with pytest.raises(ValueError, match="both in the spec and as arguments"):
        load_model("watershed:min_area_nm2=10", min_area_nm2=20)


def test_prediction_validates_its_label_map():
    with pytest.raises(ValueError, match="int32"):
        Prediction(ids=np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match=">= 0"):
        Prediction(ids=-np.ones((4, 4), np.int32))
    assert as_prediction(np.ones((3, 5), np.uint16), (3, 5)).ids.dtype == np.int32
    with pytest.raises(ValueError, match=r"shape \(3, 5\).*\(4, 5\)"):
        as_prediction(np.ones((3, 5), np.int32), (4, 5), source="plug-in")


def test_models_reject_bad_images():
    model = load_model("watershed")
    with pytest.raises(ValueError, match="2-D"):
        model(np.zeros((2, 3, 3), np.float32), 5.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model(np.full((8, 8), 255.0, np.float32), 5.0)
    with pytest.raises(ValueError, match="pixel_size_nm"):
        model(np.zeros((8, 8), np.float32), 0.0)


# ------------------------------------------------------------------------------------------------ watershed
@pytest.mark.parametrize("pixel_size_nm", [4.0, 7.344, 12.0])
def test_watershed_separates_two_touching_disks(pixel_size_nm):
    radius_nm = 110.0
    r = radius_nm / pixel_size_nm
    shape = (int(4 * r), int(6 * r))
    cy, cx = shape[0] / 2, shape[1] / 2
    d = 1.8 * r  # centres at (r1 + r2)(1 - overlap), overlap 0.1: a neck like the simulator's
    image, labels = disks_image(shape, [(cy, cx - d / 2), (cy, cx + d / 2)], [r, r], seed=1)
    # the true split of the union: each pixel to the nearer centre
    xx = np.mgrid[: shape[0], : shape[1]][1]
    truth = np.where(labels > 0, np.where(xx < cx, 1, 2), 0).astype(np.int32)
    ids = watershed_segment(image, pixel_size_nm, WatershedConfig())
    assert ids.max() == 2
    assert best_ious(truth, ids).min() > 0.8


def test_watershed_finds_isolated_disks_of_different_sizes():
    px = 7.344
    radii_nm = [60, 80, 100, 125, 150, 90, 70, 110]
    centres = [(60 + 120 * (k // 4), 60 + 120 * (k % 4)) for k in range(len(radii_nm))]
    image, labels = disks_image((260, 500), centres, [r / px for r in radii_nm], seed=2, noise=0.03)
    ids = watershed_segment(image, px, WatershedConfig())
    assert ids.max() == len(radii_nm)
    assert best_ious(labels, ids).min() > 0.8


def test_watershed_drops_specks_below_the_minimum_area():
    px = 5.0
    image, labels = disks_image((100, 200), [(50, 50), (50, 150)], [20, 2], seed=3, noise=0.0)
    ids = watershed_segment(image, px, WatershedConfig(min_area_nm2=np.pi * (5 * px) ** 2))
    assert ids.max() == 1 and best_ious(labels, ids)[0] > 0.9
    assert watershed_segment(np.zeros((40, 40), np.float32), px, WatershedConfig()).max() == 0


# ------------------------------------------------------------------------------------------- predictions
def _label_map():
    labels = np.zeros((60, 80), np.int32)
    labels[5:25, 5:30] = 1
    labels[5:25, 30:50] = 2  # touches 1
    labels[35:55, 10:70] = 3
    yy, xx = np.mgrid[:60, :80]
    labels[(yy - 45) ** 2 + (xx - 40) ** 2 < 36] = 4  # a disk inside 3 (3 has a hole)
    return labels


def test_predictions_json_rle_round_trips_to_the_label_map(tmp_path):
    labels = _label_map()
    results = [{"image_id": 7, "category_id": 1, "segmentation": rle_of(labels == k), "score": 1.0 - 0.1 * k}
               for k in range(1, 5)]
    results.append({"image_id": 8, "category_id": 1, "segmentation": rle_of(labels == 1), "score": 0.5})
    path = tmp_path / "preds.json"
    path.write_text(json.dumps(results))
    model = load_model(f"predictions:{path}")
    assert isinstance(model, CocoPredictionsModel)
    image = np.zeros(labels.shape, np.float32)
    pred = model(image, 7.0, image_info={"id": 7, "file_name": "000007.png"})
    np.testing.assert_array_equal(pred.ids, labels)
    assert pred.scores == pytest.approx({1: 0.9, 2: 0.8, 3: 0.7, 4: 0.6})
    assert model(image, 7.0, image_info={"id": 99}).ids.max() == 0  # no predictions: empty
    with pytest.raises(ValueError, match="image_info"):
        model(image, 7.0)
    # score threshold as an option
    assert load_model(f"predictions:{path}", score_threshold=0.75)(image, 7.0, {"id": 7}).ids.max() == 2


def test_overlapping_predictions_are_resolved_by_score():
    shape = (40, 40)
    a, b, c = (np.zeros(shape, bool) for _ in range(3))
    a[5:25, 5:25] = True
    b[15:35, 15:35] = True
    c[16:20, 16:20] = True  # inside the overlap, lowest score: entirely covered
    entries = [{"segmentation": rle_of(a), "score": 0.4}, {"segmentation": rle_of(b), "score": 0.9},
               {"segmentation": rle_of(c), "score": 0.1}]
    pred = predictions_to_labels(entries, shape)
    assert pred.ids.max() == 2 and pred.scores == pytest.approx({1: 0.9, 2: 0.4})
    assert (pred.ids[b] == 1).all()  # the best mask wins everywhere it lies
    assert (pred.ids[a & ~b] == 2).all() and (pred.ids[~a & ~b] == 0).all()


def test_predictions_polygons_and_coco_dict_matched_by_file_name(tmp_path):
    coco = {"images": [{"id": 1, "file_name": "a.png"}],
            "annotations": [{"image_id": 1, "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]], "score": 0.8}]}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    model = load_model(f"predictions:{path}")
    pred = model(np.zeros((40, 50), np.float32), 5.0, image_info={"id": 555, "file_name": "a.png"})
    ys, xs = np.nonzero(pred.ids)
    assert pred.ids.max() == 1 and xs.min() == 10 and ys.min() == 10 and 200 <= len(xs) <= 231
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 1, "segmentation": rle_of(np.ones((5, 5), bool)), "score": 1}]))
    with pytest.raises(ValueError, match=r"RLE size \[5, 5\].*\[40, 50\]"):
        load_model(f"predictions:{bad}")(np.zeros((40, 50), np.float32), 5.0, {"id": 1})
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([{"image_id": 1, "bbox": [0, 0, 4, 4], "score": 1}]))
    with pytest.raises(ValueError, match="segmentation"):
        load_model(f"predictions:{boxes}")


# --------------------------------------------------------------------------------------------- plug-ins
PLUGIN = textwrap.dedent(
    """
    import numpy as np
    from scipy import ndimage
    from eval.segment.interface import Prediction

    def threshold(image, pixel_size_nm, level=0.35):
        return ndimage.label(image > level)[0]

    def with_info(image, pixel_size_nm, image_info=None):
        ids = ndimage.label(image > 0.35)[0].astype(np.int32)
        return Prediction(ids=ids, scores={k: float(image_info["id"]) for k in range(1, ids.max() + 1)})

    def wrong_shape(image, pixel_size_nm):
        return np.zeros((3, 3), np.int32)

    NOT_CALLABLE = 3
    """
)


def test_python_plugin_from_a_file_and_from_a_module(tmp_path, monkeypatch):
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    image, labels = disks_image((80, 160), [(40, 40), (40, 120)], [15, 20], seed=4)
    model = load_model(f"python:{tmp_path / 'my_plugin.py'}:threshold")
    assert isinstance(model, PluginModel)
    pred = model(image, 5.0, image_info={"id": 3})
    assert pred.ids.dtype == np.int32 and best_ious(labels, pred.ids).min() > 0.9
    # options are passed to the callable
    assert load_model(f"python:{tmp_path / 'my_plugin.py'}:threshold", level=0.99)(image, 5.0).ids.max() == 0
    monkeypatch.syspath_prepend(str(tmp_path))
    pred = load_model("python:my_plugin:with_info")(image, 5.0, image_info={"id": 3})
    assert pred.ids.max() == 2 and pred.scores == {1: 3.0, 2: 3.0}
    with pytest.raises(ValueError, match=r"python:my_plugin:wrong_shape.*shape \(3, 3\)"):
        load_model("python:my_plugin:wrong_shape")(image, 5.0)
    with pytest.raises(AttributeError, match="no attribute 'missing'.*threshold"):
        load_model("python:my_plugin:missing")
    with pytest.raises(TypeError, match="not a callable"):
        load_model("python:my_plugin:NOT_CALLABLE")


# ------------------------------------------------------------------------------------------------ U-Net
def test_instance_targets_of_touching_squares():
    labels = np.zeros((20, 30), np.int32)
    labels[5:15, 5:15] = 1
    labels[5:15, 15:25] = 2
    fg, boundary, dist = instance_targets(labels)
    assert fg.sum() == 200 and fg.dtype == np.uint8
    assert boundary[10, 14] and boundary[10, 15]  # both sides of the contact line
    assert not boundary[10, 10] and boundary[5, 10] and not boundary[0, 0]
    assert dist.dtype == np.float32 and dist[boundary > 0].max() == 0
    for k in (1, 2):
        assert dist[labels == k].max() == pytest.approx(1.0)
    assert dist[labels == 0].max() == 0
    # targets commute with rot90 and flips (so augmenting the crop and its targets is consistent)
    for t, t_rot in zip(instance_targets(labels), instance_targets(np.rot90(labels)), strict=True):
        np.testing.assert_allclose(np.rot90(t), t_rot, atol=1e-6)


def test_unet_shapes_dtypes_and_size():
    net = build_unet(UNetConfig(), seed=0)
    n_params = sum(p.numel() for p in net.parameters())
    assert 1_000_000 <= n_params <= 2_500_000
    small = build_unet(TINY, seed=0).eval()
    with torch.no_grad():
        out = small(torch.rand(2, 1, 64, 96))
    assert out.shape == (2, 3, 64, 96) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="multiples of 8"):
        small(torch.rand(1, 1, 60, 64))
    # tiles: an image that fits one tile is one pass; tiled inference covers the image and stays close to it
    image = np.random.default_rng(0).random((100, 150)).astype(np.float32)
    whole = forward_image(small, image, torch.device("cpu"), tile_px=256)
    tiled = forward_image(small, image, torch.device("cpu"), tile_px=64, overlap_px=16)
    assert whole.shape == tiled.shape == (3, 100, 150) and np.isfinite(tiled).all()
    assert ((whole >= 0) & (whole <= 1)).all()
    assert np.abs(whole - tiled).mean() < 0.05
    assert build_unet(TINY, seed=0).state_dict()["down.0.0.weight"].equal(small.state_dict()["down.0.0.weight"])


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "data"
    write_dataset(out, small_config(), n_images=4, seed=0)
    return out


def _train(dataset, out, steps, **kw):
    args = dict(steps=steps, crop_px=64, batch_size=4, lr=1e-2, seed=0, device="cpu", model=TINY,
                val_fraction=0.25, checkpoint_every=100)
    return train_unet([dataset], out, **(args | kw))


def test_unet_training_lowers_the_loss(tiny_dataset, tmp_path):
    seen = []
    result = _train(tiny_dataset, tmp_path / "m.pt", 60, on_step=lambda step, losses: seen.append((step, losses)))
    assert [s for s, _ in seen] == list(range(1, 61))
    first = np.mean([losses["total"] for _, losses in seen[:10]])
    last = np.mean([losses["total"] for _, losses in seen[-10:]])
    assert last < 0.75 * first
    assert result.step == 60 and result.n_train_images == 3 and result.n_val_images == 1
    assert set(result.val_losses) == {"total", "foreground", "boundary", "distance"}
    state = read_checkpoint(tmp_path / "m.pt")
    assert state["step"] == 60 and state["train_args"]["crop_px"] == 64 and len(state["history"]) == 60
    assert state["datasets"][0]["images_used"] == 4 and state["pixel_size_nm"] == pytest.approx(7.344)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temporary file


def test_checkpoint_round_trip_gives_identical_predictions(tiny_dataset, tmp_path):
    from eval.calibrate.fit import dataset_samples

    _train(tiny_dataset, tmp_path / "m.pt", 4)
    image, _, px, _ = next(iter(dataset_samples(tiny_dataset)))
    a, b = load_model(f"unet:{tmp_path / 'm.pt'}", device="cpu"), load_unet(tmp_path / "m.pt", device="cpu")
    np.testing.assert_array_equal(a.predict_maps(image, px), b.predict_maps(image, px))
    pa, pb = a(image, px), b(image, px, image_info={"id": 1})
    np.testing.assert_array_equal(pa.ids, pb.ids)
    assert pa.ids.shape == image.shape and pa.ids.dtype == np.int32 and pa.scores == pb.scores
    # the weights are those of the training run's network
    net = UNet(TINY)
    net.load_state_dict(read_checkpoint(tmp_path / "m.pt")["model_state"])
    for k, v in net.state_dict().items():
        assert v.equal(a.net.state_dict()[k])
    # a coarser image is rescaled to the training pixel size and the maps come back at its own size
    assert a.predict_maps(image[:, :100], 2 * px).shape == (3, image.shape[0], 100)
    assert load_model(f"unet:{tmp_path / 'm.pt'}", marker_distance=0.3).post.marker_distance == 0.3
    with pytest.raises(ValueError, match="unknown option.*'colour'.*tile_px"):
        load_model(f"unet:{tmp_path / 'm.pt'}", colour=1)


def test_resume_continues_at_the_saved_step_and_matches_an_uninterrupted_run(tiny_dataset, tmp_path):
    _train(tiny_dataset, tmp_path / "straight.pt", 6)
    with pytest.raises(_Interrupt):  # killed after step 3, whose checkpoint was written
        _train(tiny_dataset, tmp_path / "split.pt", 6, checkpoint_every=3, on_step=_stop_after(3))
    assert read_checkpoint(tmp_path / "split.pt")["step"] == 3
    steps_seen = []
    result = _train(tiny_dataset, tmp_path / "split.pt", 6, checkpoint_every=3, resume=True,
                    on_step=lambda step, losses: steps_seen.append(step))
    assert result.start_step == 3 and result.step == 6 and steps_seen == [4, 5, 6]
    straight, split = read_checkpoint(tmp_path / "straight.pt"), read_checkpoint(tmp_path / "split.pt")
    assert split["step"] == 6 and len(split["history"]) == 6
    for k, v in straight["model_state"].items():
        assert v.equal(split["model_state"][k]), k
    # different arguments cannot resume; an existing checkpoint is not overwritten by accident
    with pytest.raises(ValueError, match="batch_size was 4, now 2"):
        _train(tiny_dataset, tmp_path / "split.pt", 8, batch_size=2, resume=True)
    with pytest.raises(FileExistsError, match="resume=True"):
        _train(tiny_dataset, tmp_path / "split.pt", 6)
    other = _train(tiny_dataset, tmp_path / "seed1.pt", 1, seed=1)
    assert other.step == 1
    assert not read_checkpoint(tmp_path / "seed1.pt")["model_state"]["head.2.weight"].equal(
        straight["model_state"]["head.2.weight"])


class _Interrupt(Exception):
    pass


def _stop_after(n):
    def callback(step, losses):
        if step == n:
            raise _Interrupt

    return callback
