"""Instance matching of one image, and the dataset-level detection, segmentation and size metrics.

Inputs per image (``ImageSample``): the true label map and the predicted one, ``(H, W)`` non-negative integers
(0 = background, any other value = one instance; ids need not be consecutive), optional scores per predicted
id, the pixel size and ``ignore_ids``: true instances that are *ignore regions* (cut by the image border, mostly
hidden), as metrology protocols do.

Rules (``MatchConfig`` holds the numbers):

- IoU of every (true, predicted) pair from one pass of pair counting over the flattened label pair
  (``instance_overlaps``): no loop over instances.
- Match: IoU > ``iou_threshold`` (0.5). Above 0.5 a true instance and a prediction can each have at most one
  partner, so the matching is one-to-one by construction and needs no assignment step.
- Ignore: a true instance in ``ignore_ids`` is never a false negative (FN). A prediction that is not matched
  to a counted true instance is ignored, counting neither as TP nor FP, when at least ``ignore_fraction``
  (0.5) of its area lies inside the union of the ignored true instances (this includes every prediction
  matched to an ignored true instance). ``eval.metrics.coco`` applies the same rule: the union of the ignored
  instances is one ``iscrowd`` region per image, and COCOeval ignores a detection with at least half of its
  area in it.
- TP: matched pairs of a counted (not ignored) true instance; FP: counted predictions without a match; FN:
  counted true instances without a match.
- Part: instance ``b`` is a *part* of instance ``a`` when their intersection holds at least ``part_fraction``
  (0.5) of ``b``'s area (``b`` lies mostly inside ``a``) and at least ``min_part_fraction`` (0.1) of ``a``'s
  area (specks do not count).
  *Split*: a counted true instance with >= 2 predictions as parts. *Merge*: a counted prediction with >= 2
  true instances (ignored ones included: merging into a border particle is still a merge) as parts.
- Dice: binary foreground Dice of the image, pixels of ignored true instances left out on both sides; 1 when
  neither side has foreground there.
- Sizes of matched pairs: equivalent circular diameter ECD = sqrt(4 area / pi) and min / max Feret diameters
  from the convex hull of the instance's pixel corners (rotating calipers), in nm.

Dataset level (``aggregate_matches``) sums counts over images (PQ = sum IoU of TP / (TP + FP/2 + FN/2), ...).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

_DENSE_PAIR_LIMIT = 1 << 24  # (n_true + 1) * (n_pred + 1) bins above which pair counting goes sparse
_DENSE_ID_LIMIT = 1 << 22  # label values above which ids are compacted with np.unique instead of a lookup

IdList = Sequence[int] | np.ndarray | None  # instance ids to select; None: all present


# ----------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True, kw_only=True)
class MatchConfig:
    iou_threshold: float = 0.5  # matched when IoU > iou_threshold; >= 0.5 keeps the matching one-to-one
    ignore_fraction: float = 0.5  # an unmatched prediction with this much of its area in ignore regions is ignored
    part_fraction: float = 0.5  # b is a part of a: |a & b| >= part_fraction * |b| ...
    min_part_fraction: float = 0.1  # ... and |a & b| >= min_part_fraction * |a|

    def __post_init__(self):
        if not 0.5 <= self.iou_threshold < 1.0:
            raise ValueError(f"iou_threshold must be in [0.5, 1) for a one-to-one matching, got {self.iou_threshold!r}")
        if not 0.0 < self.ignore_fraction <= 1.0:
            raise ValueError(f"ignore_fraction must be in (0, 1], got {self.ignore_fraction!r}")
        for name in ("part_fraction", "min_part_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")


@dataclass(frozen=True, slots=True, eq=False)  # holds arrays: compare fields explicitly
class ImageSample:
    """One image to evaluate. ``scores`` maps predicted id -> confidence (None: the model gives none)."""

    true_ids: np.ndarray  # (H, W) int, 0 = background
    pred_ids: np.ndarray  # (H, W) int, 0 = background
    pixel_size_nm: float
    scores: Mapping[int, float] | None = None
    ignore_ids: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self):
        true_ids = as_label_map(self.true_ids, "true_ids")
        pred_ids = as_label_map(self.pred_ids, "pred_ids")
        if true_ids.shape != pred_ids.shape:
            raise ValueError(
                f"true_ids and pred_ids must have the same shape, got {true_ids.shape} and {pred_ids.shape}"
            )
        size = float(self.pixel_size_nm)
        if not (math.isfinite(size) and size > 0):
            raise ValueError(f"pixel_size_nm must be a finite number > 0, got {self.pixel_size_nm!r}")
        object.__setattr__(self, "true_ids", true_ids)
        object.__setattr__(self, "pred_ids", pred_ids)
        object.__setattr__(self, "pixel_size_nm", size)
        object.__setattr__(self, "ignore_ids", frozenset(int(i) for i in self.ignore_ids))
        if self.scores is not None:
            scores = {int(k): float(v) for k, v in self.scores.items()}
            bad = {k: v for k, v in scores.items() if not math.isfinite(v)}
            if bad:
                raise ValueError(f"scores must be finite numbers, got {bad}")
            object.__setattr__(self, "scores", scores)


def as_sample(sample) -> ImageSample:
    """An ``ImageSample`` as is, or one from a tuple ``(true_ids, pred_ids, scores, pixel_size_nm, ignore_ids)``."""
    if isinstance(sample, ImageSample):
        return sample
    try:
        true_ids, pred_ids, scores, pixel_size_nm, ignore_ids = sample
    except (TypeError, ValueError):
        raise TypeError(
            "a sample must be an ImageSample or a tuple (true_ids, pred_ids, scores, pixel_size_nm, ignore_ids), "
            f"got {type(sample).__name__}"
        ) from None
    return ImageSample(true_ids, pred_ids, pixel_size_nm, scores, frozenset(ignore_ids or ()))


def as_label_map(ids, name: str) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) label map, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name} must hold integer instance ids, got dtype {ids.dtype}")
    if ids.size and ids.min() < 0:
        raise ValueError(f"{name} must hold ids >= 0 (0 = background), got minimum {ids.min()}")
    return ids.astype(np.int64, copy=False)


# --------------------------------------------------------------------------------------------- overlaps


@dataclass(frozen=True, slots=True, eq=False)  # holds arrays: compare fields explicitly
class Overlaps:
    """Areas of every instance and intersections of every overlapping (true, predicted) pair of one image.

    Instances are indexed 0..N-1 in increasing id order; ``pair_*`` list only pairs that share pixels.
    """

    true_ids: np.ndarray  # (Nt,) ids present in the true map
    pred_ids: np.ndarray  # (Np,)
    true_area_px: np.ndarray  # (Nt,)
    pred_area_px: np.ndarray  # (Np,)
    pair_true: np.ndarray  # (K,) index into true_ids
    pair_pred: np.ndarray  # (K,) index into pred_ids
    pair_inter_px: np.ndarray  # (K,)

    @property
    def pair_iou(self) -> np.ndarray:
        union = self.true_area_px[self.pair_true] + self.pred_area_px[self.pair_pred] - self.pair_inter_px
        return self.pair_inter_px / union

    def iou_matrix(self) -> np.ndarray:
        """(Nt, Np) IoU of every pair (0 where disjoint)."""
        iou = np.zeros((len(self.true_ids), len(self.pred_ids)))
        iou[self.pair_true, self.pair_pred] = self.pair_iou
        return iou


def _compact(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map label values to 0..N (0 stays background). Returns (compact labels, original ids, areas in px)."""
    top = int(flat.max()) if flat.size else 0
    if top <= _DENSE_ID_LIMIT:
        counts = np.bincount(flat, minlength=top + 1)
        counts[0] = 0
        ids = np.flatnonzero(counts)
        lut = np.zeros(top + 1, np.int64)
        lut[ids] = np.arange(1, len(ids) + 1)
        return lut[flat], ids, counts[ids]
    ids, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    if ids[0] == 0:
        return inverse, ids[1:], counts[1:]
    return inverse + 1, ids, counts


def instance_overlaps(true_ids: np.ndarray, pred_ids: np.ndarray) -> Overlaps:
    """Pair counting on the flattened label pair: one ``bincount`` of ``true * (max pred + 1) + pred``.

    When the id values are too large for that table, ids are first compacted to 0..N (and, for very many
    instances, the pairs counted with ``np.unique`` on foreground pixels).
    """
    true_ids = as_label_map(true_ids, "true_ids")
    pred_ids = as_label_map(pred_ids, "pred_ids")
    if true_ids.shape != pred_ids.shape:
        raise ValueError(f"true_ids and pred_ids must have the same shape, got {true_ids.shape} and {pred_ids.shape}")
    t_flat, p_flat = true_ids.ravel(), pred_ids.ravel()
    t_top = int(t_flat.max(initial=0))
    p_top = int(p_flat.max(initial=0))
    if (t_top + 1) * (p_top + 1) <= _DENSE_PAIR_LIMIT // 4:  # raw ids index the table directly
        table = np.bincount(t_flat * (p_top + 1) + p_flat, minlength=(t_top + 1) * (p_top + 1))
        table = table.reshape(t_top + 1, p_top + 1)
        t_area_all, p_area_all = table.sum(axis=1), table.sum(axis=0)
        t_ids, p_ids = np.flatnonzero(t_area_all[1:]) + 1, np.flatnonzero(p_area_all[1:]) + 1
        rows, cols = np.nonzero(table[1:, 1:])
        inter = table[rows + 1, cols + 1]
        t_index = np.searchsorted(t_ids, rows + 1)
        p_index = np.searchsorted(p_ids, cols + 1)
        return Overlaps(t_ids, p_ids, t_area_all[t_ids], p_area_all[p_ids], t_index, p_index, inter.astype(np.int64))
    ct, t_ids, t_area = _compact(t_flat)
    cp, p_ids, p_area = _compact(p_flat)
    n_cols = len(p_ids) + 1
    code = ct * n_cols + cp
    if (len(t_ids) + 1) * n_cols <= _DENSE_PAIR_LIMIT:
        counts = np.bincount(code, minlength=(len(t_ids) + 1) * n_cols).reshape(-1, n_cols)
        rows, cols = np.nonzero(counts[1:, 1:])
        inter = counts[1:, 1:][rows, cols]
    else:
        both = (ct > 0) & (cp > 0)
        codes, inter = np.unique(code[both], return_counts=True)
        rows, cols = codes // n_cols - 1, codes % n_cols - 1
    return Overlaps(t_ids, p_ids, t_area, p_area, rows.astype(np.int64), cols.astype(np.int64), inter.astype(np.int64))


def match_pairs(overlaps: Overlaps, iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matches at IoU > ``iou_threshold`` (>= 0.5): (true index, pred index, IoU), by true index."""
    if not 0.5 <= iou_threshold < 1.0:
        raise ValueError(f"iou_threshold must be in [0.5, 1) for a one-to-one matching, got {iou_threshold!r}")
    iou = overlaps.pair_iou
    keep = iou > iou_threshold
    t, p, iou = overlaps.pair_true[keep], overlaps.pair_pred[keep], iou[keep]
    order = np.argsort(t, kind="stable")
    return t[order], p[order], iou[order]


# ---------------------------------------------------------------------------------------- sizes (Feret)


def ecd_px(area_px: np.ndarray) -> np.ndarray:
    """Equivalent circular diameter (px) of a pixel area."""
    return np.sqrt(4.0 * np.asarray(area_px, float) / np.pi)


def feret_diameters_px(labels: np.ndarray, ids: IdList = None) -> tuple[np.ndarray, np.ndarray]:
    """Min and max Feret diameters (px) of instances of a label map, from their pixel corners.

    The convex hull of every corner of every pixel of an instance equals the hull of the outer corners of its
    horizontal runs (row-wise stretches of one label): the runs of the whole map are found at once by comparing
    neighbouring columns, then one ``cv2.convexHull`` per instance, then rotating calipers on the padded hulls
    of all instances together: max Feret = largest vertex-to-vertex distance, min Feret = smallest over hull
    edges of the largest vertex distance to the edge's line (the minimum width of a convex polygon has one
    side flush with an edge). A w x h px rectangle gives exactly (min(w, h), hypot(w, h)); a digital disk of
    radius r gives about 2 r + 1 (its pixels reach half a pixel beyond the centres within r).

    ids : instances to measure (default: every id > 0 present, ascending); an absent id raises ValueError.
    Returns (feret_min_px, feret_max_px), each (N,) in the order of ``ids``.
    """
    labels = as_label_map(labels, "labels")
    height, width = labels.shape
    if labels.size == 0:
        run_lab = np.zeros(0, np.int64)
        starts = ends = run_lab
    else:
        inside = labels > 0
        start = inside.copy()
        start[:, 1:] &= labels[:, 1:] != labels[:, :-1]
        end = inside  # reused: last pixel of each run
        end[:, :-1] &= labels[:, :-1] != labels[:, 1:]
        starts, ends = np.flatnonzero(start), np.flatnonzero(end)  # paired, in row-major order
        run_lab = labels.ravel()[starts]
    if ids is None:
        ids = np.unique(run_lab)
    ids = np.asarray(ids, np.int64).ravel()
    missing = np.setdiff1d(ids, run_lab)
    if len(missing):
        raise ValueError(f"ids {missing[:10].tolist()} are not present in the label map")
    if len(ids) == 0:
        return np.zeros(0), np.zeros(0)
    keep = np.isin(run_lab, ids)
    order = np.argsort(run_lab[keep], kind="stable")
    run_lab, starts, ends = run_lab[keep][order], starts[keep][order], ends[keep][order]
    row, left, right = starts // width, starts % width, ends % width + 1
    # pixel corners (x, y): left edge of a run's first pixel, right edge of its last, top and bottom
    xs = np.stack([left, left, right, right], 1).ravel()
    ys = np.stack([row, row + 1, row, row + 1], 1).ravel()
    corners = np.stack([xs, ys], 1).astype(np.int32)
    first = np.searchsorted(run_lab, ids, side="left")
    stop = np.searchsorted(run_lab, ids, side="right")
    hulls = [cv2.convexHull(corners[4 * a : 4 * b]).reshape(-1, 2) for a, b in zip(first, stop, strict=True)]
    return _calipers(hulls)


def _calipers(hulls: list[np.ndarray], budget: int = 1 << 21) -> tuple[np.ndarray, np.ndarray]:
    """Min / max width of convex polygons (vertices in order): polygons of similar size padded together,
    in batches of about ``budget`` vertex pairs."""
    size = np.array([len(h) for h in hulls])
    feret_min, feret_max = np.zeros(len(hulls)), np.zeros(len(hulls))
    order = np.argsort(size, kind="stable")
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (stop + 1 - start) * size[order[stop]] ** 2 <= budget:
            stop += 1
        batch = order[start:stop]
        feret_min[batch], feret_max[batch] = _calipers_padded([hulls[i] for i in batch])
        start = stop
    return feret_min, feret_max


def _calipers_padded(hulls: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    n = len(hulls)
    size = np.array([len(h) for h in hulls])
    k = int(size.max())
    valid = np.arange(k)[None, :] < size[:, None]
    x, y = np.zeros((n, k)), np.zeros((n, k))
    pts = np.concatenate(hulls).astype(float)
    x[valid], y[valid] = pts[:, 0], pts[:, 1]
    dx = x[:, None, :] - x[:, :, None]  # dx[n, i, j] = x_j - x_i
    dy = y[:, None, :] - y[:, :, None]
    pair_valid = valid[:, :, None] & valid[:, None, :]
    feret_max = np.sqrt(np.where(pair_valid, dx * dx + dy * dy, 0.0).max(axis=(1, 2)))
    nxt = (np.arange(k)[None, :] + 1) % size[:, None]
    ex = np.take_along_axis(x, nxt, axis=1) - x  # edge i: p_{i+1} - p_i
    ey = np.take_along_axis(y, nxt, axis=1) - y
    length = np.hypot(ex, ey)
    edge_valid = valid & (length > 0)
    length = np.where(length > 0, length, 1.0)
    # distance of vertex j to the line of edge i: |(p_j - p_i) x e_i| / |e_i|
    dist = np.abs(dx * ey[:, :, None] - dy * ex[:, :, None]) / length[:, :, None]
    width = np.where(pair_valid, dist, 0.0).max(axis=2)
    feret_min = np.where(edge_valid, width, np.inf).min(axis=1)
    feret_min[~np.isfinite(feret_min)] = 0.0
    return feret_min, feret_max


# ------------------------------------------------------------------------------------------ per image


@dataclass(frozen=True, slots=True, eq=False)  # holds arrays: compare fields explicitly
class ImageMatch:
    """Matching result of one image. Counts exclude ignored instances; ``pair_*`` arrays are the TP pairs."""

    tp: int
    fp: int
    fn: int
    sum_iou_tp: float  # sum of the IoU of TP pairs (PQ numerator)
    n_true: int  # counted true instances (TP + FN)
    n_pred: int  # counted predictions (TP + FP)
    n_true_ignored: int
    n_pred_ignored: int
    splits: int  # counted true instances with >= 2 predictions as parts
    merges: int  # counted predictions with >= 2 true instances as parts
    dice: float  # binary foreground Dice, ignored true instances left out
    pixel_size_nm: float
    pair_true_id: np.ndarray  # (TP,) true id of each matched pair
    pair_pred_id: np.ndarray  # (TP,)
    pair_iou: np.ndarray  # (TP,)
    pair_true_ecd_nm: np.ndarray  # (TP,)
    pair_pred_ecd_nm: np.ndarray
    pair_true_feret_min_nm: np.ndarray
    pair_pred_feret_min_nm: np.ndarray
    pair_true_feret_max_nm: np.ndarray
    pair_pred_feret_max_nm: np.ndarray
    true_ecd_nm: np.ndarray  # (n_true,) ECD of every counted true instance: the true size distribution
    pred_ecd_nm: np.ndarray  # (n_pred,) ECD of every counted prediction: the predicted size distribution

    def row(self) -> dict[str, float | int]:
        """Scalar summary of the image (for a CSV row): counts, PQ/SQ/RQ, Dice."""
        q = detection_quality(self.tp, self.fp, self.fn, self.sum_iou_tp)
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "n_true": self.n_true,
            "n_pred": self.n_pred,
            "n_true_ignored": self.n_true_ignored,
            "n_pred_ignored": self.n_pred_ignored,
            "splits": self.splits,
            "merges": self.merges,
            "PQ": q["PQ"],
            "SQ": q["SQ"],
            "RQ": q["RQ"],
            "DSC": self.dice,
        }


def match_image(sample: ImageSample, cfg: MatchConfig = MatchConfig()) -> ImageMatch:
    """Match the instances of one image (see the module docstring for every rule)."""
    sample = as_sample(sample)
    ov = instance_overlaps(sample.true_ids, sample.pred_ids)
    nt, npred = len(ov.true_ids), len(ov.pred_ids)
    ignored_true = np.isin(ov.true_ids, np.fromiter(sample.ignore_ids, np.int64, len(sample.ignore_ids)))

    t_idx, p_idx, iou = match_pairs(ov, cfg.iou_threshold)
    in_ignore_px = np.bincount(ov.pair_pred, weights=ov.pair_inter_px * ignored_true[ov.pair_true], minlength=npred)
    matched_counted = np.zeros(npred, bool)
    matched_counted[p_idx[~ignored_true[t_idx]]] = True
    ignored_pred = ~matched_counted & (in_ignore_px >= cfg.ignore_fraction * ov.pred_area_px)

    tp_mask = ~ignored_true[t_idx]
    t_idx, p_idx, iou = t_idx[tp_mask], p_idx[tp_mask], iou[tp_mask]
    tp = len(t_idx)
    n_true = int((~ignored_true).sum())
    n_pred = int((~ignored_pred).sum())

    # parts: b is a part of a when |a & b| >= part_fraction |b| and >= min_part_fraction |a|
    inter = ov.pair_inter_px
    t_area, p_area = ov.true_area_px[ov.pair_true], ov.pred_area_px[ov.pair_pred]
    pred_part_of_true = (inter >= cfg.part_fraction * p_area) & (inter >= cfg.min_part_fraction * t_area)
    true_part_of_pred = (inter >= cfg.part_fraction * t_area) & (inter >= cfg.min_part_fraction * p_area)
    parts_per_true = np.bincount(ov.pair_true[pred_part_of_true], minlength=nt)
    parts_per_pred = np.bincount(ov.pair_pred[true_part_of_pred], minlength=npred)
    splits = int(((parts_per_true >= 2) & ~ignored_true).sum())
    merges = int(((parts_per_pred >= 2) & ~ignored_pred).sum())

    pixel_nm = sample.pixel_size_nm
    t_fmin, t_fmax = feret_diameters_px(sample.true_ids, ov.true_ids[t_idx])
    p_fmin, p_fmax = feret_diameters_px(sample.pred_ids, ov.pred_ids[p_idx])
    true_ecd = ecd_px(ov.true_area_px) * pixel_nm
    pred_ecd = ecd_px(ov.pred_area_px) * pixel_nm
    return ImageMatch(
        tp=tp,
        fp=n_pred - tp,
        fn=n_true - tp,
        sum_iou_tp=float(iou.sum()),
        n_true=n_true,
        n_pred=n_pred,
        n_true_ignored=int(ignored_true.sum()),
        n_pred_ignored=int(ignored_pred.sum()),
        splits=splits,
        merges=merges,
        dice=_dice(ov, ignored_true),
        pixel_size_nm=pixel_nm,
        pair_true_id=ov.true_ids[t_idx],
        pair_pred_id=ov.pred_ids[p_idx],
        pair_iou=iou,
        pair_true_ecd_nm=true_ecd[t_idx],
        pair_pred_ecd_nm=pred_ecd[p_idx],
        pair_true_feret_min_nm=t_fmin * pixel_nm,
        pair_pred_feret_min_nm=p_fmin * pixel_nm,
        pair_true_feret_max_nm=t_fmax * pixel_nm,
        pair_pred_feret_max_nm=p_fmax * pixel_nm,
        true_ecd_nm=true_ecd[~ignored_true],
        pred_ecd_nm=pred_ecd[~ignored_pred],
    )


def _dice(ov: Overlaps, ignored_true: np.ndarray) -> float:
    """Foreground Dice from the overlaps, pixels of ignored true instances left out on both sides."""
    in_ignored = ignored_true[ov.pair_true]
    true_px = ov.true_area_px[~ignored_true].sum()
    pred_px = ov.pred_area_px.sum() - ov.pair_inter_px[in_ignored].sum()
    both_px = ov.pair_inter_px[~in_ignored].sum()
    total = int(true_px + pred_px)
    return 1.0 if total == 0 else 2.0 * float(both_px) / total


# ------------------------------------------------------------------------------------------ aggregate


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def detection_quality(tp: int, fp: int, fn: int, sum_iou_tp: float) -> dict[str, float]:
    """PQ = SQ * RQ, SQ = mean IoU of TP, RQ = F1@0.5 = TP / (TP + FP/2 + FN/2); NaN where undefined."""
    den = tp + 0.5 * fp + 0.5 * fn
    return {
        "PQ": _ratio(sum_iou_tp, den),
        "SQ": _ratio(sum_iou_tp, tp),
        "RQ": _ratio(tp, den),
    }


def _bias_sd(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    err = pred - true
    bias = float(err.mean()) if len(err) else float("nan")
    sd = float(err.std(ddof=1)) if len(err) > 1 else float("nan")
    return bias, sd


def aggregate_matches(matches: Sequence[ImageMatch]) -> dict[str, float]:
    """Dataset metrics from per-image matches (an image listed twice counts twice).

    Counts are summed over images before the ratios (PQ, SQ, RQ, F1, precision, recall; split rate = splits /
    counted true instances, merge rate = merges / counted predictions); DSC is the mean of per-image Dice;
    size errors (prediction - truth, nm) pool every TP pair: bias = mean, SD = sample SD (ddof 1).
    """
    if len(matches) == 0:
        raise ValueError("aggregate_matches needs at least one image, got none")
    tp = sum(m.tp for m in matches)
    fp = sum(m.fp for m in matches)
    fn = sum(m.fn for m in matches)
    sum_iou = sum(m.sum_iou_tp for m in matches)
    n_true = sum(m.n_true for m in matches)
    n_pred = sum(m.n_pred for m in matches)
    out = detection_quality(tp, fp, fn, sum_iou)
    out["F1"] = _ratio(2 * tp, 2 * tp + fp + fn)
    out["precision"] = _ratio(tp, tp + fp)
    out["recall"] = _ratio(tp, tp + fn)
    out["split_rate"] = _ratio(sum(m.splits for m in matches), n_true)
    out["merge_rate"] = _ratio(sum(m.merges for m in matches), n_pred)
    out["DSC"] = float(np.mean([m.dice for m in matches]))

    def pooled(name: str) -> np.ndarray:
        return np.concatenate([getattr(m, name) for m in matches])

    for key, attr in (("ECD", "ecd_nm"), ("FeretMin", "feret_min_nm"), ("FeretMax", "feret_max_nm")):
        bias, sd = _bias_sd(pooled(f"pair_pred_{attr}"), pooled(f"pair_true_{attr}"))
        out[f"{key}_bias_nm"] = bias
        out[f"{key}_sd_nm"] = sd
    return out
