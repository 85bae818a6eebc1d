"""COCO mask AP / AR from label maps through pycocotools' COCOeval, made safe for dense particle images.

What differs from running COCOeval with its defaults, and why:

- ``maxDets`` is raised to the largest number of predictions in any image (at least 1): COCOeval's default
  summary keeps only the 100 best-scored detections per image, which silently caps recall on images of
  ~150 particles. Results are read from ``E.eval["precision"]`` / ``E.eval["recall"]`` by named axes
  (IoU threshold, category, area range "all", that maxDet), never through ``summarize()``.
- One area range, "all" (COCO's small/medium/large are pixel areas meant for photographs).
- Ignored true particles (``ImageSample.ignore_ids``: border-cut, mostly hidden) become, per image, one
  ``iscrowd=1`` ground-truth region: the union of their masks. COCOeval ignores crowd ground truth and every
  detection that matches it, with crowd IoU = |detection & crowd| / |detection|. At the 0.5 threshold this is
  ``eval.metrics.matching``'s rule (an unmatched prediction with at least half of its area in ignore regions is neither
  TP nor FP); one region per image rather than one per particle, so that a prediction spanning several ignored
  particles is ignored too. (COCOeval matches at IoU >= t, ``eval.metrics.matching`` at IoU > 0.5: they differ only
  for a pair at exactly 0.5.)
- Scores: a sample without scores gives every prediction the score 1.0. COCOeval then ranks the tied
  detections by image, then by predicted id (stable sort), so AP of a score-less model reflects that arbitrary
  order; precision / recall / PQ from ``eval.metrics.matching`` are its fairer summary.
- Masks are RLE-encoded from the label maps in one vectorised pass (``rle_encode_labels``), identical to
  ``pycocotools.mask.encode`` on the Fortran-ordered uint8 mask of each instance.
- COCOeval prints; its output is swallowed.

Bootstrap over images: ``coco_evaluate_images`` runs COCOeval's per-image evaluation (``evaluateImg``) once
and keeps, per image, each detection's score and matched / ignored flags at every IoU threshold;
``coco_accumulate`` then reproduces ``COCOeval.accumulate`` for any list of those records, repeats included
(an image listed twice counts twice), in a few milliseconds.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from eval.metrics.matching import IdList, ImageSample, as_label_map, as_sample

CATEGORY_ID = 1
AREA_ALL = [0.0, 1e12]  # px^2: every instance
REC_THRESHOLDS = np.linspace(0.0, 1.0, 101)  # COCOeval's recall thresholds


@dataclass(frozen=True, slots=True, eq=False)  # holds arrays: compare fields explicitly
class CocoImageEval:
    """COCOeval's per-image evaluation of one image, detections in descending score order (at most maxDet)."""

    iou_thresholds: np.ndarray  # (T,)
    scores: np.ndarray  # (D,)
    matched: np.ndarray  # (T, D) bool: matched to a ground truth (crowd included) at each threshold
    ignored: np.ndarray  # (T, D) bool: matched to crowd (ignore region) at each threshold
    n_gt: int  # ground-truth instances that count (not crowd)


# --------------------------------------------------------------------------------------------- RLE


def rle_encode_labels(labels: np.ndarray, ids: IdList = None) -> tuple[np.ndarray, list[dict]]:
    """COCO compressed RLE of every instance of a label map, all instances in one vectorised pass.

    ids : instances to encode (default: every id > 0 present); an id absent from the map raises ValueError.
    Returns (ids, rles): rles[k] == pycocotools.mask.encode(np.asfortranarray((labels == ids[k]).astype(np.uint8))).
    """
    labels = as_label_map(labels, "labels")
    height, width = labels.shape
    small = labels.size == 0 or labels.max() <= np.iinfo(np.int32).max
    flat = np.ascontiguousarray(labels.T, dtype=np.int32 if small else np.int64).ravel()  # column-major
    # runs of equal labels along the column-major order: one comparison of neighbours, no pixel sort
    run_start = np.flatnonzero(np.concatenate([[flat.size > 0], flat[1:] != flat[:-1]]))
    run_end = np.append(run_start[1:], flat.size)
    run_lab = flat[run_start].astype(np.int64)
    present = np.unique(run_lab[run_lab > 0])
    ids = present if ids is None else np.asarray(ids, np.int64).ravel()
    missing = np.setdiff1d(ids, present)
    if len(missing):
        raise ValueError(f"ids {missing[:10].tolist()} are not present in the label map")
    if len(ids) == 0:
        return ids, []
    keep = np.isin(run_lab, ids)
    order = np.argsort(run_lab[keep], kind="stable")  # by instance, runs in position order within each
    run_start, run_end, run_lab = run_start[keep][order], run_end[keep][order], run_lab[keep][order]
    run_len = run_end - run_start
    first_of_instance = np.ones(len(run_start), bool)
    first_of_instance[1:] = run_lab[1:] != run_lab[:-1]
    prev_end = np.concatenate([[0], run_end[:-1]])
    prev_end[first_of_instance] = 0
    counts = np.stack([run_start - prev_end, run_len], 1).ravel()  # zeros, ones, zeros, ones, ...
    inst_first = np.flatnonzero(first_of_instance)
    inst_stop = np.append(inst_first[1:], len(run_start))
    tail = height * width - run_end[inst_stop - 1]
    by_id = {}
    for k, (a, b) in enumerate(zip(inst_first, inst_stop, strict=True)):
        c = counts[2 * a : 2 * b].tolist()
        if tail[k]:
            c.append(int(tail[k]))
        by_id[int(run_lab[a])] = {"size": [height, width], "counts": c}
    rles = mask_utils.frPyObjects([by_id[int(i)] for i in ids], height, width)
    return ids, rles


def rle_areas(rles: list[dict]) -> np.ndarray:
    """Pixel counts of RLE masks. pycocotools 2.0.11's ``mask.area`` raises OverflowError for more than 255
    masks in one call (real images here hold up to ~570 particles), so it is called in chunks."""
    if not rles:
        return np.zeros(0, np.uint32)
    return np.concatenate([mask_utils.area(rles[i : i + 255]) for i in range(0, len(rles), 255)])


# --------------------------------------------------------------------------------------------- COCOeval


def _coco(images: list[dict], annotations: list[dict]) -> COCO:
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": CATEGORY_ID, "name": "particle"}],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _annotations(rles: list[dict], image_id: int, first_id: int, **extra) -> list[dict]:
    if not rles:
        return []
    areas = rle_areas(rles)
    boxes = mask_utils.toBbox(rles)
    return [
        {
            "id": first_id + k,
            "image_id": image_id,
            "category_id": CATEGORY_ID,
            "segmentation": rle,
            "area": float(areas[k]),
            "bbox": boxes[k].tolist(),
            **{key: (value[k] if isinstance(value, list) else value) for key, value in extra.items()},
        }
        for k, rle in enumerate(rles)
    ]


def _scores(sample: ImageSample, pred_ids: np.ndarray) -> list[float]:
    if sample.scores is None:
        return [1.0] * len(pred_ids)
    missing = [int(i) for i in pred_ids if int(i) not in sample.scores]
    if missing:
        raise ValueError(f"scores are missing for predicted ids {missing[:10]} (give a score for every predicted id)")
    return [sample.scores[int(i)] for i in pred_ids]


def run_cocoeval(samples: Sequence, *, max_dets: int | None = None) -> COCOeval:
    """COCOeval (segm) over the samples after ``evaluate()``: image k has id k + 1; one area range "all";
    ``maxDets = [max_dets]`` (default: the largest number of predictions in one image, so nothing is cut)."""
    samples = [as_sample(s) for s in samples]
    if not samples:
        raise ValueError("run_cocoeval needs at least one image, got none")
    images, gts, dts = [], [], []
    for k, s in enumerate(samples):
        image_id = k + 1
        height, width = s.true_ids.shape
        images.append({"id": image_id, "height": height, "width": width})
        ignored = np.isin(s.true_ids, np.fromiter(s.ignore_ids, np.int64, len(s.ignore_ids)))
        crowd_id = int(s.true_ids.max(initial=0)) + 1
        gt_ids, gt_rles = rle_encode_labels(np.where(ignored, crowd_id, s.true_ids))
        gts += _annotations(gt_rles, image_id, len(gts) + 1, iscrowd=[int(i == crowd_id) for i in gt_ids])
        pred_ids, pred_rles = rle_encode_labels(s.pred_ids)
        dts += _annotations(pred_rles, image_id, len(dts) + 1, iscrowd=0, score=_scores(s, pred_ids))
    if max_dets is None:
        per_image = np.bincount([d["image_id"] for d in dts], minlength=2)
        max_dets = max(1, int(per_image.max()))
    if int(max_dets) < 1:
        raise ValueError(f"max_dets must be >= 1, got {max_dets!r}")
    gt, dt = _coco(images, gts), _coco(images, dts)
    E = COCOeval(gt, dt, iouType="segm")
    E.params.imgIds = [im["id"] for im in images]
    E.params.catIds = [CATEGORY_ID]
    E.params.areaRng = [AREA_ALL]
    E.params.areaRngLbl = ["all"]
    E.params.maxDets = [int(max_dets)]
    with contextlib.redirect_stdout(io.StringIO()):
        E.evaluate()
    return E


def _summary(precision: np.ndarray, recall: np.ndarray, iou_thresholds: np.ndarray) -> dict[str, float]:
    """AP (mean over IoU 0.50:0.95 and recall thresholds), AP50, AP75, AR from (T, R) precision and (T,)
    recall; COCOeval's -1 ("no ground truth") entries are left out, NaN when nothing is left."""

    def mean(values: np.ndarray) -> float:
        values = values[values > -1]
        return float(values.mean()) if values.size else float("nan")

    def at(threshold: float) -> np.ndarray:
        t = np.flatnonzero(np.isclose(iou_thresholds, threshold))
        if len(t) != 1:
            raise ValueError(f"IoU threshold {threshold} is not among {iou_thresholds.tolist()}")
        return precision[t[0]]

    return {"AP": mean(precision), "AP50": mean(at(0.5)), "AP75": mean(at(0.75)), "AR": mean(recall)}


def coco_metrics(samples: Sequence, *, max_dets: int | None = None) -> dict[str, float]:
    """AP, AP50, AP75, AR over the samples, from COCOeval's own ``accumulate()``, read by named axes.

    ``max_dets`` defaults to the largest number of predictions in one image (no cap); 100 is COCOeval's cap.
    """
    E = run_cocoeval(samples, max_dets=max_dets)
    with contextlib.redirect_stdout(io.StringIO()):
        E.accumulate()
    p = E.params
    k = list(p.catIds).index(CATEGORY_ID)
    a = list(p.areaRngLbl).index("all")
    m = list(p.maxDets).index(p.maxDets[-1])
    precision = E.eval["precision"][:, :, k, a, m]  # [T, R, K, A, M] -> (T, R)
    recall = E.eval["recall"][:, k, a, m]  # [T, K, A, M] -> (T,)
    return _summary(precision, recall, np.asarray(p.iouThrs))


def coco_evaluate_images(samples: Sequence, *, max_dets: int | None = None) -> list[CocoImageEval]:
    """COCOeval's per-image evaluation, once; feed any (re)sampled list of the records to ``coco_accumulate``."""
    E = run_cocoeval(samples, max_dets=max_dets)
    thresholds = np.asarray(E.params.iouThrs, float)
    n_thr = len(thresholds)
    by_image = {e["image_id"]: e for e in E.evalImgs if e is not None}
    out = []
    for image_id in E.params.imgIds:
        e = by_image.get(image_id)
        if e is None:  # no ground truth and no detection
            none = np.zeros((n_thr, 0), bool)
            out.append(CocoImageEval(thresholds, np.zeros(0), none, none, 0))
            continue
        n_det = len(e["dtScores"])
        out.append(
            CocoImageEval(
                iou_thresholds=thresholds,
                scores=np.asarray(e["dtScores"], float),
                matched=np.asarray(e["dtMatches"]).reshape(n_thr, n_det) > 0,
                ignored=np.asarray(e["dtIgnore"]).reshape(n_thr, n_det).astype(bool),
                n_gt=int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)),
            )
        )
    return out


def coco_accumulate(evals: Sequence[CocoImageEval]) -> dict[str, float]:
    """``COCOeval.accumulate`` for one category and area range, vectorised, on a list of per-image records
    (in list order; repeats count repeatedly). Returns AP, AP50, AP75, AR as ``coco_metrics`` does."""
    if len(evals) == 0:
        raise ValueError("coco_accumulate needs at least one image, got none")
    thresholds = evals[0].iou_thresholds
    n_thr, n_rec = len(thresholds), len(REC_THRESHOLDS)
    precision = -np.ones((n_thr, n_rec))
    recall = -np.ones(n_thr)
    n_gt = sum(e.n_gt for e in evals)
    if n_gt > 0:
        scores = np.concatenate([e.scores for e in evals])
        order = np.argsort(-scores, kind="mergesort")
        matched = np.concatenate([e.matched for e in evals], axis=1)[:, order]
        ignored = np.concatenate([e.ignored for e in evals], axis=1)[:, order]
        n_det = len(scores)
        if n_det == 0:
            precision[:] = 0.0
            recall[:] = 0.0
        else:
            tp = np.cumsum(matched & ~ignored, axis=1, dtype=float)
            fp = np.cumsum(~matched & ~ignored, axis=1, dtype=float)
            rc = tp / n_gt
            pr = tp / (fp + tp + np.spacing(1))
            pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # precision envelope
            recall = rc[:, -1]
            for t in range(n_thr):
                idx = np.searchsorted(rc[t], REC_THRESHOLDS, side="left")
                precision[t] = np.where(idx < n_det, pr[t, np.minimum(idx, n_det - 1)], 0.0)
    return _summary(precision, recall, thresholds)
