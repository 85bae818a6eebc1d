"""A model from a file of COCO results (any external segmenter): masks per image, overlaps resolved by score."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eval.segment.interface import Prediction, relabel_sequential
from simulator.io.errors import UserError


# ------------------------------------------------------------------------------------ external predictions
def _segmentation_rle(segmentation: Any, height: int, width: int, where: str) -> dict:
    """One COCO RLE (compressed) from an RLE (compressed or not) or polygons, checked against the image size."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, dict):
        size = list(segmentation.get("size", []))
        if size != [height, width]:
            raise ValueError(f"{where}: RLE size {size} does not match the image's [height, width] = "
                             f"[{height}, {width}]")
        if isinstance(segmentation.get("counts"), list):
            return mask_utils.frPyObjects(segmentation, height, width)
        counts = segmentation.get("counts")
        if not isinstance(counts, str | bytes):
            raise ValueError(f"{where}: RLE counts must be a string or a list, got {type(counts).__name__}")
        return {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
    if isinstance(segmentation, list) and segmentation:
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            raise ValueError(f"{where}: polygons need at least 3 points (6 numbers)")
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    raise ValueError(f"{where}: segmentation must be an RLE dict or a list of polygons, "
                     f"got {type(segmentation).__name__}")


def predictions_to_labels(entries: list[dict], shape: tuple[int, int], *, where: str = "predictions") -> Prediction:
    """Resolve COCO result entries of one image into a label map: where masks overlap, the highest score wins
    (on equal scores the earlier entry). Ids are 1..N in decreasing score; masks left without a pixel vanish."""
    from pycocotools import mask as mask_utils

    height, width = shape
    ids = np.zeros(shape, np.int32)
    scores = np.array([float(e.get("score", 1.0)) for e in entries], float)
    order = np.argsort(-scores, kind="stable")  # rank 0 = best
    for rank in order[::-1]:  # paint the worst first so that better ones overwrite it
        entry = entries[rank]
        rle = _segmentation_rle(entry["segmentation"], height, width, f"{where} entry {rank}")
        x, y, w, h = (int(v) for v in np.round(mask_utils.toBbox(rle)))
        if w == 0 or h == 0:
            continue
        m = mask_utils.decode(rle)[y : y + h, x : x + w].astype(bool)
        ids[y : y + h, x : x + w][m] = int(np.flatnonzero(order == rank)[0]) + 1
    ids, old = relabel_sequential(ids)
    ranked = scores[order]
    return Prediction(ids=ids, scores={new: float(ranked[o - 1]) for new, o in enumerate(old) if new > 0})


@dataclass(frozen=True, slots=True, kw_only=True)
class PredictionsConfig:
    score_threshold: float = 0.0  # entries with a lower score are ignored
    category_id: int | None = None  # keep only this category (None: all)


class CocoPredictionsModel:
    """``predictions:FILE.json``: masks an external model wrote, looked up by the image's COCO record.

    The file is either a COCO results list (``[{image_id, segmentation, score, category_id}, ...]``, matched
    on ``image_info["id"]``) or a COCO dict with ``images`` and ``annotations`` (matched on ``file_name``, so
    its image ids may differ from the dataset's). An image without entries is predicted empty.
    """

    external = True  # user data: its failures are bad input, reported as such

    def __init__(self, path: Path, cfg: PredictionsConfig, spec: str):
        self.path, self.cfg, self.spec = path, cfg, spec
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{spec}: {path} is not valid JSON ({err})") from None
        if isinstance(data, dict) and "annotations" in data:
            self.key = "file_name"
            images = data.get("images")
            if not isinstance(images, list):
                raise ValueError(f"{spec}: {path} has 'annotations' but no 'images' list to match file names")
            name_of = {im["id"]: im["file_name"] for im in images}
            entries = data["annotations"]
        elif isinstance(data, list):
            self.key, name_of, entries = "id", None, data
        else:
            raise ValueError(f"{spec}: {path} must hold a COCO results list or a dict with 'images' and "
                             f"'annotations', got {type(data).__name__}")
        self.by_image: dict[Any, list[dict]] = {}
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "image_id" not in entry or "segmentation" not in entry:
                raise ValueError(f"{spec}: {path} entry {i} needs 'image_id' and 'segmentation' (mask results; "
                                 "box-only detections cannot be evaluated as instances)")
            if float(entry.get("score", 1.0)) < cfg.score_threshold:
                continue
            if cfg.category_id is not None and entry.get("category_id") != cfg.category_id:
                continue
            key = entry["image_id"] if name_of is None else name_of.get(entry["image_id"])
            if key is None:
                raise ValueError(f"{spec}: {path} entry {i} refers to image_id {entry['image_id']!r}, "
                                 "which is not in its 'images'")
            self.by_image.setdefault(key, []).append(entry)
        if not entries:
            raise UserError(path, "holds no predictions (an empty list)", "COCO mask results, one entry per "
                            "predicted instance: [{image_id, segmentation, score, category_id}, ...]")

    def check_images(self, images: list[Mapping]) -> None:
        """Refuse a predictions file that matches none of the images to evaluate (it would score 0 in silence):
        ids of another dataset, or ids of another type (the string "1" is not the image id 1)."""
        dataset_keys = [im.get(self.key) for im in images]
        if self.by_image and not set(self.by_image) & set(dataset_keys):
            theirs = sorted(map(repr, self.by_image))[:3]
            ours = [repr(k) for k in dataset_keys[:3]]
            kinds = {type(k).__name__ for k in self.by_image} - {type(k).__name__ for k in dataset_keys}
            hint = f"; its image_id values are {'/'.join(sorted(kinds))}" if kinds and self.key == "id" else ""
            raise UserError(self.path, f"no prediction matches an image of the dataset: it refers to {self.key} "
                            f"{', '.join(theirs)}, the dataset has {', '.join(ours)}{hint}",
                            f"predictions whose image {self.key} values are the dataset's")

    @property
    def image_keys(self) -> set:
        """The image ids (or file names) that have at least one prediction."""
        return set(self.by_image)

    def __call__(self, image: np.ndarray, pixel_size_nm: float, image_info: Mapping | None = None) -> Prediction:
        if image_info is None or self.key not in image_info:
            raise ValueError(f"{self.spec}: needs image_info, the image's COCO record with its {self.key!r}, to "
                             "find its predictions (call model(image, pixel_size_nm, image_info=record))")
        key = image_info[self.key]
        return predictions_to_labels(self.by_image.get(key, []), image.shape, where=f"{self.path} image {key!r}")

    def describe(self) -> dict:
        return {"kind": "predictions", "spec": self.spec, "path": str(self.path), "match_on": self.key,
                "images_with_predictions": len(self.by_image), **dataclasses.asdict(self.cfg)}
