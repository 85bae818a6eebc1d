"""Segmentation metrics: oracles on synthetic label maps (disks, rectangles, rolled copies, merges, splits),
COCOeval agreement, the maxDets cap, ignore regions, Feret / ECD, PSD statistics and bootstrap coverage."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from conftest import small_config
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval
from scipy import ndimage

from eval.metrics import matching
from eval.metrics.bootstrap import METRICS, bootstrap_ci, evaluate_predictions
from eval.metrics.coco import coco_accumulate, coco_evaluate_images, coco_metrics, rle_encode_labels, run_cocoeval
from eval.metrics.matching import (
    ImageSample,
    MatchConfig,
    aggregate_matches,
    ecd_px,
    feret_diameters_px,
    instance_overlaps,
    match_image,
)
from eval.metrics.psd import lognormal_fit, psd_metrics
from simulator.io.records import ignore_ids_from_annotations, image_records
from simulator.pipeline import simulate_image

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
PX_NM = 5.0


def disk(shape, cy, cx, r) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def paint(shape, masks, ids=None) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    for k, m in enumerate(masks):
        labels[m] = k + 1 if ids is None else ids[k]
    return labels


def disk_grid(n_rows=3, n_cols=4, r=10, spacing=30, radii=None) -> np.ndarray:
    """Disks of radius r (or ``radii``) on a grid, centres on whole pixels, well apart."""
    shape = (n_rows * spacing, n_cols * spacing)
    masks = []
    for i in range(n_rows):
        for j in range(n_cols):
            radius = r if radii is None else radii[(i * n_cols + j) % len(radii)]
            masks.append(disk(shape, spacing // 2 + i * spacing, spacing // 2 + j * spacing, radius))
    return paint(shape, masks)


def relabel(labels: np.ndarray, seed: int = 0, offset: int = 100) -> np.ndarray:
    """Same instances under other, shuffled ids (a prediction does not know the true ids)."""
    n = int(labels.max())
    lut = np.concatenate([[0], np.random.default_rng(seed).permutation(n) + 1 + offset])
    return lut[labels]


def oracle_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def thresholds_passed(iou: float) -> int:
    assert np.min(np.abs(IOU_THRESHOLDS - iou)) > 0.005, f"IoU {iou} too close to a threshold for a clean test"
    return int((IOU_THRESHOLDS <= iou).sum())


# ----------------------------------------------------------------------------------- building blocks


@pytest.mark.parametrize("dense_limit", [1 << 24, 4])  # dense table, then the compacted / sparse fallback
def test_pair_counting_iou_equals_brute_force(monkeypatch, dense_limit):
    monkeypatch.setattr(matching, "_DENSE_PAIR_LIMIT", dense_limit)
    rng = np.random.default_rng(3)
    true = rng.integers(0, 6, (30, 40)) * 7
    pred = rng.integers(0, 5, (30, 40)) * 100_003
    ov = instance_overlaps(true, pred)
    iou = ov.iou_matrix()
    assert ov.true_ids.tolist() == [7, 14, 21, 28, 35] and len(ov.pred_ids) == 4
    for i, a in enumerate(ov.true_ids):
        assert ov.true_area_px[i] == (true == a).sum()
        for j, b in enumerate(ov.pred_ids):
            assert iou[i, j] == pytest.approx(oracle_iou(true == a, pred == b), abs=1e-12)


def test_rle_equals_pycocotools_encode():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (7, 5), (23, 31)]:
        labels = rng.integers(0, 4, shape) * 9
        labels[0, 0], labels[-1, -1] = 9, 27  # runs touching both ends of the column-major order
        ids, rles = rle_encode_labels(labels)
        assert ids.tolist() == sorted(set(np.unique(labels).tolist()) - {0})
        for i, rle in zip(ids, rles, strict=True):
            ref = mask_utils.encode(np.asfortranarray((labels == i).astype(np.uint8)))
            assert rle == ref
    with pytest.raises(ValueError, match=r"\[5\]"):
        rle_encode_labels(np.ones((3, 3), int), ids=[1, 5])


def test_feret_and_ecd_oracles():
    shape = (160, 200)
    radii = [5.0, 12.5, 30.0]
    masks = [disk(shape, 40, 40, radii[0]), disk(shape, 40, 120, radii[1]), disk(shape, 110, 60, radii[2])]
    rect = np.zeros(shape, bool)
    rect[100:115, 130:170] = True  # 15 x 40 px, axis-aligned
    labels = paint(shape, [*masks, rect])
    fmin, fmax = feret_diameters_px(labels)
    area = np.bincount(labels.ravel())[1:]
    for k, r in enumerate(radii):
        assert ecd_px(area[k]) == pytest.approx(2 * r, abs=0.5)  # pixel-centre sampling of pi r^2
        # pixel corners reach half a pixel beyond the centres within r: 2r <= Feret <= 2r + 1.5
        assert 2 * r - 0.01 <= fmin[k] <= fmax[k] <= 2 * r + 1.5
    assert fmin[3] == pytest.approx(15.0, abs=1e-9)
    assert fmax[3] == pytest.approx(np.hypot(40, 15), abs=1e-9)
    # a rotated rectangle (pixel centres inside it): a pixel reaches 0.5 (cos a + sin a) beyond its centre
    yy, xx = np.mgrid[: shape[0], : shape[1]] + 0.5
    ang = np.deg2rad(30)
    u = (xx - 100) * np.cos(ang) + (yy - 80) * np.sin(ang)
    v = -(xx - 100) * np.sin(ang) + (yy - 80) * np.cos(ang)
    rot = (np.abs(u) <= 30) & (np.abs(v) <= 10)
    rmin, rmax = feret_diameters_px(rot.astype(np.int32))
    reach = np.cos(ang) + np.sin(ang)  # both sides
    assert 20 - 1 <= rmin[0] <= 20 + reach and np.hypot(60, 20) - 1.5 <= rmax[0] <= np.hypot(60, 20) + np.sqrt(2)
    # selected ids, in the given order; absent ids raise
    sel_min, _ = feret_diameters_px(labels, [4, 1])
    np.testing.assert_allclose(sel_min, [fmin[3], fmin[0]])
    with pytest.raises(ValueError, match=r"\[9\]"):
        feret_diameters_px(labels, [9])


def test_match_reports_sizes_in_nm():
    true = disk_grid(1, 3, r=10)
    m = match_image(ImageSample(true, relabel(true), PX_NM))
    fmin, fmax = feret_diameters_px(true)
    np.testing.assert_allclose(m.pair_true_feret_min_nm, fmin * PX_NM)
    np.testing.assert_allclose(m.pair_pred_feret_max_nm, fmax * PX_NM)
    np.testing.assert_allclose(m.pair_true_ecd_nm, ecd_px(np.bincount(true.ravel())[1:]) * PX_NM)
    assert np.all(m.pair_pred_id >= 100)


# ----------------------------------------------------------------------------------- image-level cases


def test_perfect_prediction_scores_one():
    true = disk_grid(radii=[6, 8, 10, 12])
    sample = ImageSample(true, relabel(true), PX_NM)  # no scores: COCO uses 1.0
    result = evaluate_predictions([sample, sample], n_resamples=20)
    metrics = {k: v["value"] for k, v in result["metrics"].items()}
    for key in ("AP", "AP50", "AP75", "AR", "PQ", "SQ", "RQ", "DSC", "F1", "precision", "recall"):
        assert metrics[key] == pytest.approx(1.0), key
    for key in (
        "split_rate",
        "merge_rate",
        "ECD_bias_nm",
        "ECD_sd_nm",
        "FeretMin_bias_nm",
        "FeretMax_bias_nm",
        "D10_rel_err",
        "D50_rel_err",
        "D90_rel_err",
        "dg_rel_err",
        "sigmag_rel_err",
        "W1_nm",
        "KS",
    ):
        assert metrics[key] == pytest.approx(0.0, abs=1e-12), key
    assert result["metrics"]["PQ"]["ci_low"] == pytest.approx(1.0)
    assert result["counts"]["tp"] == 2 * true.max() and result["counts"]["fp"] == result["counts"]["fn"] == 0


def test_known_shift_gives_expected_counts_and_ap():
    true = disk_grid(r=10)
    n = int(true.max())
    shift = 4  # a disk of radius 10 rolled by 4 px overlaps itself with IoU ~ 0.6
    pred = np.roll(relabel(true), shift, axis=1)
    iou = oracle_iou(true == 1, np.roll(true == 1, shift, axis=1))
    assert 0.55 < iou < 0.65
    m = match_image(ImageSample(true, pred, PX_NM))
    assert (m.tp, m.fp, m.fn) == (n, 0, 0)
    np.testing.assert_allclose(m.pair_iou, iou)
    assert aggregate_matches([m])["PQ"] == pytest.approx(iou)
    ap = coco_metrics([ImageSample(true, pred, PX_NM)])
    assert ap["AP50"] == pytest.approx(1.0) and ap["AP75"] == pytest.approx(0.0)
    assert ap["AP"] == pytest.approx(thresholds_passed(iou) / 10)
    # a larger shift drops below IoU 0.5: every disk is both missed and wrongly predicted
    far = np.roll(relabel(true), 8, axis=1)
    assert oracle_iou(true == 1, np.roll(true == 1, 8, axis=1)) < 0.45
    m = match_image(ImageSample(true, far, PX_NM))
    assert (m.tp, m.fp, m.fn) == (0, n, n)
    assert coco_metrics([ImageSample(true, far, PX_NM)])["AP50"] == pytest.approx(0.0)


def test_merge_of_two_touching_particles():
    shape = (60, 80)
    big, small = disk(shape, 30, 25, 12), disk(shape, 30, 45, 8)  # centres 20 px apart: touching
    true = paint(shape, [big, small])  # they share one pixel: it goes to the second
    pred = paint(shape, [big | small], ids=[7])
    iou = oracle_iou(true == 1, pred > 0)
    m = match_image(ImageSample(true, pred, PX_NM))
    assert (m.tp, m.fp, m.fn, m.merges, m.splits) == (1, 0, 1, 1, 0)
    assert m.pair_true_id.tolist() == [1] and m.pair_iou[0] == pytest.approx(iou)
    ap = coco_metrics([ImageSample(true, pred, PX_NM)])
    # one of two particles found at precision 1: recall thresholds 0..0.5 (51 of 101) have precision 1
    assert ap["AP50"] == pytest.approx(51 / 101)
    assert ap["AP75"] == pytest.approx(0.0)
    assert ap["AP"] == pytest.approx(thresholds_passed(iou) / 10 * 51 / 101)


def test_split_counts_once_and_ignores_specks():
    shape = (60, 60)
    whole = disk(shape, 30, 30, 12)
    cols = np.arange(shape[1])[None, :]
    left, right = whole & (cols < 34), whole & (cols >= 34)
    true = paint(shape, [whole])
    m = match_image(ImageSample(true, paint(shape, [left, right]), PX_NM))
    assert (m.tp, m.fp, m.fn, m.splits, m.merges) == (1, 1, 0, 1, 0)
    # a 2-px speck inside an otherwise perfect prediction is a FP, not a split
    speck = np.zeros(shape, bool)
    speck[30, 30:32] = True
    m = match_image(ImageSample(true, paint(shape, [whole, speck]), PX_NM))
    assert (m.tp, m.fp, m.splits) == (1, 1, 0)


def test_max_dets_raised_above_instance_count():
    shape = (10 * 12, 15 * 12)
    masks = []
    for i in range(10):
        for j in range(15):
            m = np.zeros(shape, bool)
            m[i * 12 + 2 : i * 12 + 9, j * 12 + 2 : j * 12 + 9] = True
            masks.append(m)
    true = paint(shape, masks)  # 150 particles
    sample = ImageSample(true, relabel(true), PX_NM, scores={i: 1.0 for i in range(101, 251)})
    assert coco_metrics([sample]) == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "AR": 1.0})
    capped = coco_metrics([sample], max_dets=100)
    assert capped["AP"] < 0.7 and capped["AR"] == pytest.approx(100 / 150)
    # COCOeval with its default parameters and summary: the same cap, silently
    E = run_cocoeval([sample])
    default = COCOeval(E.cocoGt, E.cocoDt, iouType="segm")
    with contextlib.redirect_stdout(io.StringIO()):
        default.evaluate()
        default.accumulate()
        default.summarize()
    assert default.stats[0] < 0.7 and default.stats[1] < 0.7


def test_images_with_more_than_255_particles():
    """pycocotools' mask.area overflows above 255 masks per call; a real image holds up to ~570 particles."""
    true = np.zeros((20 * 8, 20 * 8), np.int32)
    for i in range(20):
        for j in range(20):
            true[i * 8 + 1 : i * 8 + 7, j * 8 + 1 : j * 8 + 7] = i * 20 + j + 1  # 400 particles
    sample = ImageSample(true, relabel(true), PX_NM)
    assert coco_metrics([sample]) == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "AR": 1.0})


def test_ignore_regions_are_neither_fn_nor_fp():
    shape = (60, 100)
    inner_a, inner_b = disk(shape, 30, 30, 9), disk(shape, 30, 60, 9)
    border = disk(shape, 30, 2, 8)  # cut by the left border
    hidden = disk(shape, 52, 90, 5)  # say mostly occluded
    true = paint(shape, [inner_a, inner_b, border, hidden])
    ignore = frozenset({3, 4})
    missing = paint(shape, [inner_a, inner_b], ids=[11, 12])
    with_border = paint(shape, [inner_a, inner_b, border], ids=[11, 12, 13])
    spanning = paint(shape, [inner_a, inner_b, border | disk(shape, 30, 12, 3)], ids=[11, 12, 13])

    m = match_image(ImageSample(true, missing, PX_NM, ignore_ids=ignore))
    assert (m.tp, m.fp, m.fn, m.n_true, m.n_true_ignored) == (2, 0, 0, 2, 2)
    m = match_image(ImageSample(true, with_border, PX_NM, ignore_ids=ignore))
    assert (m.tp, m.fp, m.fn, m.n_pred_ignored) == (2, 0, 0, 1)
    assert m.dice == pytest.approx(1.0)
    m = match_image(ImageSample(true, spanning, PX_NM, ignore_ids=ignore))  # mostly, not only, in the region
    assert (m.tp, m.fp, m.fn, m.n_pred_ignored) == (2, 0, 0, 1)
    assert len(m.true_ecd_nm) == 2 and len(m.pred_ecd_nm) == 2  # the PSD leaves ignore regions out too
    # three touching ignored particles merged into one prediction: about a third in each, all in the region
    stacked = [disk(shape, 30 + dy, 2, 8) for dy in (-17, 0, 17)]
    true3 = paint(shape, [inner_a, inner_b, *stacked])
    triple = paint(shape, [inner_a, inner_b, stacked[0] | stacked[1] | stacked[2]], ids=[11, 12, 13])
    m = match_image(ImageSample(true3, triple, PX_NM, ignore_ids={3, 4, 5}))
    assert (m.tp, m.fp, m.fn, m.n_pred_ignored) == (2, 0, 0, 1)
    assert coco_metrics([ImageSample(true3, triple, PX_NM, ignore_ids={3, 4, 5})])["AP"] == pytest.approx(1.0)
    for pred in (missing, with_border, spanning):
        assert coco_metrics([ImageSample(true, pred, PX_NM, ignore_ids=ignore)])["AP"] == pytest.approx(1.0)
    # the same predictions without ignore regions: misses and false positives (the test can fail)
    m = match_image(ImageSample(true, missing, PX_NM))
    assert (m.tp, m.fn) == (2, 2)
    assert coco_metrics([ImageSample(true, missing, PX_NM)])["AP"] < 0.6


def test_ignore_ids_from_annotation_records():
    anns = [
        {"instance_id": 1, "touches_border": False, "occluded_fraction": 0.1},
        {"instance_id": 2, "touches_border": True, "occluded_fraction": 0.0},
        {"instance_id": 3, "touches_border": False, "occluded_fraction": 0.8},
    ]
    assert ignore_ids_from_annotations(anns) == {2, 3}
    assert ignore_ids_from_annotations(anns, max_occluded_fraction=0.9) == {2}


# ----------------------------------------------------------------------------------- COCO accumulation


def _varied_samples():
    rng = np.random.default_rng(5)
    samples = []
    for k in range(5):
        true = disk_grid(2, 3, radii=[5, 7, 9, 11])
        pred = np.roll(relabel(true, seed=k), int(rng.integers(0, 6)), axis=int(rng.integers(0, 2)))
        pred[rng.random(pred.shape) < 0.02] = 0
        scores = {int(i): float(rng.random()) for i in np.unique(pred) if i}
        samples.append(ImageSample(true, pred, PX_NM, scores, frozenset({int(rng.integers(1, 7))})))
    samples.append(ImageSample(np.zeros((20, 20), int), np.zeros((20, 20), int), PX_NM))  # nothing at all
    return samples


def test_reaccumulation_equals_cocoeval_with_repeated_images():
    samples = _varied_samples()
    evals = coco_evaluate_images(samples)
    assert coco_accumulate(evals) == pytest.approx(coco_metrics(samples), abs=1e-12)
    picks = [0, 0, 2, 3, 3, 3, 5]  # a bootstrap resample: repeats count repeatedly
    expected = coco_metrics([samples[i] for i in picks])
    assert coco_accumulate([evals[i] for i in picks]) == pytest.approx(expected, abs=1e-12)
    assert expected != pytest.approx(coco_metrics([samples[i] for i in sorted(set(picks))]), abs=1e-6)


def test_no_ground_truth_gives_nan_not_minus_one():
    empty = ImageSample(np.zeros((20, 20), int), paint((20, 20), [disk((20, 20), 10, 10, 4)]), PX_NM)
    result = coco_metrics([empty])
    assert all(np.isnan(v) for v in result.values())


# ----------------------------------------------------------------------------------- PSD and bootstrap


def test_psd_lognormal_fit_and_distances():
    rng = np.random.default_rng(11)
    d = rng.lognormal(np.log(150.0), np.log(1.3), 20_000)
    dg, sg = lognormal_fit(d)
    assert dg == pytest.approx(150.0, rel=0.01) and sg == pytest.approx(1.3, rel=0.01)
    same = psd_metrics(d, d.copy())
    for key in ("D10_rel_err", "D50_rel_err", "D90_rel_err", "dg_rel_err", "sigmag_rel_err", "W1_nm", "KS"):
        assert same[key] == pytest.approx(0.0, abs=1e-12), key
    scaled = psd_metrics(d, 1.1 * d)  # every size 10 % too large: shape unchanged
    for key in ("D10_rel_err", "D50_rel_err", "D90_rel_err", "dg_rel_err"):
        assert scaled[key] == pytest.approx(0.1, rel=1e-9), key
    assert scaled["sigmag_rel_err"] == pytest.approx(0.0, abs=1e-9)
    assert scaled["W1_nm"] == pytest.approx(0.1 * d.mean(), rel=1e-9)
    assert scaled["KS"] > 0.1
    assert np.isnan(psd_metrics(d, [])["W1_nm"])
    with pytest.raises(ValueError, match="finite diameters > 0"):
        psd_metrics(d, [10.0, -1.0])


def test_bootstrap_interval_covers_true_mean():
    true_mean, n_images, n_datasets = 2.0, 30, 100
    covered, widths = 0, []

    def mean(values):
        return {"mean": float(np.mean(values))}

    for seed in range(n_datasets):
        per_image = np.random.default_rng(seed).normal(true_mean, 1.0, n_images).tolist()
        ci = bootstrap_ci(per_image, mean, rng=np.random.default_rng(1000 + seed), n_resamples=200)["mean"]
        covered += ci.ci_low <= true_mean <= ci.ci_high
        widths.append(ci.ci_high - ci.ci_low)
    assert 0.86 <= covered / n_datasets <= 0.99
    assert np.mean(widths) == pytest.approx(2 * 1.96 / np.sqrt(n_images), rel=0.15)


def test_bootstrap_resamples_whole_images_and_is_seeded():
    records = [("a", 1.0), ("b", 2.0), ("c", 30.0)]
    seen = []

    def statistic(rs):
        seen.append(list(rs))
        return {"sum": sum(v for _, v in rs)}

    first = bootstrap_ci(records, statistic, rng=np.random.default_rng(4), n_resamples=50)
    assert all(len(rs) == 3 and all(r in records for r in rs) for rs in seen)
    assert any(len(set(rs)) < 3 for rs in seen[1:])  # drawn with replacement
    again = bootstrap_ci(records, statistic, rng=np.random.default_rng(4), n_resamples=50)
    assert first == again
    assert first["sum"].value == 33.0 and first["sum"].ci_low <= first["sum"].ci_high


def test_evaluate_predictions_rows_tuples_and_json():
    samples = _varied_samples()
    tuples = [(s.true_ids, s.pred_ids, s.scores, s.pixel_size_nm, s.ignore_ids) for s in samples]
    result = evaluate_predictions(tuples, n_resamples=30, seed=1)
    assert set(result["metrics"]) == set(METRICS)
    assert len(result["images"]) == len(samples)
    for row, s in zip(result["images"], samples, strict=True):
        m = match_image(s)
        assert (row["tp"], row["fp"], row["fn"], row["n_true"], row["n_pred"]) == (m.tp, m.fp, m.fn, m.n_true, m.n_pred)
    pq = result["metrics"]["PQ"]
    assert pq["ci_low"] <= pq["ci_high"] and 0 < pq["value"] < 1
    assert result["metrics"]["AP"]["value"] == pytest.approx(coco_metrics(samples)["AP"])
    text = json.dumps(result)
    assert json.dumps(evaluate_predictions(tuples, n_resamples=30, seed=1)) == text  # seeded: same result


def test_simulated_image_perfect_and_eroded_prediction():
    cfg = small_config()
    sim = simulate_image(cfg, 0, 0)
    true = sim.render.instance_id[: cfg.image.height_px].astype(np.int32)
    _, anns = image_records(sim, cfg, "000000")
    ignore = ignore_ids_from_annotations(anns)
    assert 0 < len(ignore) < len(anns)
    perfect = match_image(ImageSample(true, true, cfg.image.pixel_size_nm, ignore_ids=ignore))
    assert perfect.fp == perfect.fn == 0 and perfect.tp == len(anns) - len(ignore)
    eroded = np.where(ndimage.grey_erosion(true, size=3) == ndimage.grey_dilation(true, size=3), true, 0)
    m = match_image(ImageSample(true, eroded, cfg.image.pixel_size_nm, ignore_ids=ignore))
    metrics = aggregate_matches([m])
    assert metrics["ECD_bias_nm"] < 0 and metrics["FeretMax_bias_nm"] < 0 and metrics["DSC"] < 1


# ----------------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
    ok = np.zeros((4, 4), int)
    with pytest.raises(ValueError, match="same shape"):
        ImageSample(ok, np.zeros((4, 5), int), 1.0)
    with pytest.raises(ValueError, match="integer instance ids"):
        ImageSample(ok.astype(float), ok, 1.0)
    with pytest.raises(ValueError, match="ids >= 0"):
        ImageSample(ok - 1, ok, 1.0)
    with pytest.raises(ValueError, match="pixel_size_nm"):
        ImageSample(ok, ok, 0.0)
    with pytest.raises(ValueError, match="iou_threshold"):
        MatchConfig(iou_threshold=0.3)
    pred = ok.copy()
    pred[1, 1] = 3
    with pytest.raises(ValueError, match=r"scores are missing for predicted ids \[3\]"):
        coco_metrics([ImageSample(ok, pred, 1.0, scores={4: 0.5})])
    with pytest.raises(TypeError, match="ImageSample or a tuple"):
        evaluate_predictions([ok])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0], lambda r: {"x": 1.0}, rng=np.random.default_rng(0), confidence=1.5)
