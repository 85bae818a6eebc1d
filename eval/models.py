"""Instance-segmentation models behind one interface, chosen by a spec string.

A model is a callable

    model(image, pixel_size_nm, image_info=None) -> Prediction

- ``image``: (H, W) float32 in [0, 1], the image as written (``eval.fit.dataset_samples`` yields it);
- ``pixel_size_nm``: its sampling distance, so that models can work in physical units;
- ``image_info``: the image's COCO record from the dataset's ``annotations.json`` (``id``, ``file_name``,
  ...) or None. The evaluator always passes it; only models that look predictions up by image need it
  (``predictions:``); the others ignore it.

It returns a ``Prediction``: ``ids`` (H, W) int32 label map (0 = background, 1..N) and optional ``scores``
(instance id -> confidence, for AP-type metrics). ``load_model(spec, **options)`` builds one from

    watershed                         classical baseline (``WatershedConfig``)
    watershed:key=value,key=value     the same with options, e.g. watershed:min_separation_nm=80,threshold=otsu
    unet:PATH                         a checkpoint written by ``eval.unet.train_unet``
    predictions:FILE.json             COCO results of an external model (detectron2, mmdetection, ...)
    python:module:callable            a plug-in: callable(image, pixel_size_nm) -> label map or Prediction
    python:path/to/file.py:callable   the same, imported from a file

Every model it returns also has ``spec`` (the string it was built from) and ``describe()`` (a JSON-able dict
of its parameters, for reports).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import inspect
import json
import math
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np
from scipy import ndimage

SPEC_FORMS = (
    "watershed",
    "watershed:key=value,key=value",
    "unet:PATH",
    "predictions:FILE.json",
    "python:module:callable",
    "python:path/to/file.py:callable",
)


# ------------------------------------------------------------------------------------------------ interface
@dataclass(frozen=True, slots=True)
class Prediction:
    """One image's instances: ``ids`` (H, W) int32, 0 = background, 1..N; ``scores`` id -> confidence or None."""

    ids: np.ndarray
    scores: dict[int, float] | None = None

    def __post_init__(self):
        ids = self.ids
        if not isinstance(ids, np.ndarray) or ids.ndim != 2 or ids.dtype != np.int32:
            got = f"{type(ids).__name__} {getattr(ids, 'dtype', '')} {getattr(ids, 'shape', '')}".strip()
            raise ValueError(f"Prediction.ids must be a 2-D int32 array, got {got}")
        if ids.size and int(ids.min()) < 0:
            raise ValueError(f"Prediction.ids must be >= 0 (0 = background), got minimum {int(ids.min())}")
        if self.scores is not None and not isinstance(self.scores, dict):
            raise ValueError(f"Prediction.scores must be a dict id -> score or None, got {type(self.scores).__name__}")

    @property
    def n_instances(self) -> int:
        return len(np.unique(self.ids[self.ids > 0]))


@runtime_checkable
class Model(Protocol):
    spec: str

    def __call__(self, image: np.ndarray, pixel_size_nm: float, image_info: Mapping | None = None) -> Prediction:
        ...

    def describe(self) -> dict:
        ...


def check_input(image: np.ndarray, pixel_size_nm: float) -> None:
    """Raise a clear error unless ``image`` is (H, W) float in [0, 1] and ``pixel_size_nm`` a positive number."""
    if not isinstance(image, np.ndarray) or image.ndim != 2:
        raise ValueError(f"image must be a 2-D (H, W) array, got {getattr(image, 'shape', type(image).__name__)}")
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"image must be float in [0, 1], got dtype {image.dtype}")
    if image.size and (float(image.min()) < -1e-6 or float(image.max()) > 1 + 1e-6):
        raise ValueError(f"image values must lie in [0, 1], got [{float(image.min())}, {float(image.max())}]")
    if not (isinstance(pixel_size_nm, int | float | np.floating) and math.isfinite(pixel_size_nm)
            and pixel_size_nm > 0):
        raise ValueError(f"pixel_size_nm must be a positive number, got {pixel_size_nm!r}")


def as_prediction(output: Any, shape: tuple[int, int], *, source: str = "model") -> Prediction:
    """A ``Prediction`` from what a model returned: a Prediction or an integer label map of ``shape``."""
    if isinstance(output, Prediction):
        ids, scores = output.ids, output.scores
    elif isinstance(output, np.ndarray):
        ids, scores = output, None
    else:
        raise TypeError(f"{source} returned {type(output).__name__}; expected a Prediction or an (H, W) label map")
    if ids.shape != tuple(shape):
        raise ValueError(f"{source} returned a label map of shape {ids.shape}, expected the image's {tuple(shape)}")
    if ids.dtype != np.int32:
        if not (np.issubdtype(ids.dtype, np.integer) or ids.dtype == bool):
            raise ValueError(f"{source} returned a label map of dtype {ids.dtype}; expected integers")
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) > np.iinfo(np.int32).max):
            raise ValueError(f"{source} returned label ids outside [0, 2^31): [{int(ids.min())}, {int(ids.max())}]")
        ids = ids.astype(np.int32)
    return Prediction(ids=ids, scores=None if scores is None else {int(k): float(v) for k, v in scores.items()})


# -------------------------------------------------------------------------------------- shared post-processing
def relabel_sequential(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids renumbered 1..N in increasing order of the old ids; also returns the old id of each new id (index 0: 0)."""
    old = np.unique(ids)
    if len(old) == 0 or old[0] != 0:
        old = np.concatenate([[0], old])
    lut = np.zeros(int(old[-1]) + 1, np.int32)
    lut[old] = np.arange(len(old), dtype=np.int32)
    return lut[ids], old


def remove_small_instances(ids: np.ndarray, min_area_px: float) -> np.ndarray:
    """Instances of fewer than ``min_area_px`` pixels set to 0; the rest renumbered 1..N."""
    if ids.size == 0:
        return ids.astype(np.int32)
    areas = np.bincount(ids.ravel())
    keep = areas >= min_area_px
    keep[0] = False
    return relabel_sequential(np.where(keep[ids], ids, 0))[0].astype(np.int32)


def marker_watershed(surface: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Flood ``surface`` (low = instance centre) from ``markers`` within ``mask``. A connected component of
    the mask without a marker gets one at its lowest point, so no foreground is lost. Returns (H, W) int32."""
    from skimage.segmentation import watershed

    markers = np.where(mask, markers, 0).astype(np.int32)
    components, n = ndimage.label(mask)
    if n:
        has_marker = np.zeros(n + 1, bool)
        has_marker[components[markers > 0]] = True
        missing = np.flatnonzero(~has_marker[1:]) + 1
        if len(missing):
            lowest = ndimage.minimum_position(surface, components, missing)
            next_id = int(markers.max()) + 1
            for k, pos in enumerate(lowest):
                markers[pos] = next_id + k
    ids = watershed(surface, markers, mask=mask)
    return relabel_sequential(ids.astype(np.int32))[0]


def disk(radius_px: float) -> np.ndarray:
    """Boolean disk footprint of the given radius (at least a single pixel)."""
    r = max(int(math.floor(radius_px)), 0)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return yy**2 + xx**2 <= max(radius_px, 0) ** 2 + 1e-9


# ---------------------------------------------------------------------------------------- watershed baseline
THRESHOLD_METHODS = ("otsu", "li", "triangle", "mean")


@dataclass(frozen=True, slots=True, kw_only=True)
class WatershedConfig:
    """Classical baseline: smooth, threshold, distance transform, markers, watershed. Lengths in nm so that it
    behaves the same at any pixel size."""

    smoothing_nm: float = 3.0  # Gaussian sigma before thresholding (0 = none)
    threshold: str | float = "otsu"  # one of THRESHOLD_METHODS, or a fixed level in [0, 1]
    threshold_scale: float = 1.0  # multiplies the automatic threshold (< 1 keeps dimmer particle edges)
    fill_holes: bool = True
    opening_nm: float = 0.0  # radius of a morphological opening of the foreground (0 = none)
    min_separation_nm: float = 40.0  # markers (distance maxima) closer than this merge
    min_prominence_nm: float = 2.0  # a distance maximum must rise this much above the saddle to its neighbour
    min_area_nm2: float = 1000.0  # smaller instances are dropped

    def __post_init__(self):
        if isinstance(self.threshold, str):
            if self.threshold not in THRESHOLD_METHODS:
                raise ValueError(f"watershed.threshold must be one of {THRESHOLD_METHODS} or a number in [0, 1], "
                                 f"got {self.threshold!r}")
        elif not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"watershed.threshold must be in [0, 1], got {self.threshold!r}")
        for name in ("smoothing_nm", "opening_nm", "min_separation_nm", "min_prominence_nm", "min_area_nm2"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"watershed.{name} must be a finite number >= 0, got {value!r}")
        if not (math.isfinite(self.threshold_scale) and self.threshold_scale > 0):
            raise ValueError(f"watershed.threshold_scale must be > 0, got {self.threshold_scale!r}")


def foreground_threshold(image: np.ndarray, cfg: WatershedConfig) -> float:
    """The grey level that separates particles from the substrate."""
    if not isinstance(cfg.threshold, str):
        return float(cfg.threshold)
    from skimage import filters

    method = {"otsu": filters.threshold_otsu, "li": filters.threshold_li,
              "triangle": filters.threshold_triangle, "mean": filters.threshold_mean}[cfg.threshold]
    if float(image.max()) == float(image.min()):
        return float(image.max())  # flat image: nothing above the threshold
    return float(method(image)) * cfg.threshold_scale


def distance_markers(distance_nm: np.ndarray, mask: np.ndarray, pixel_size_nm: float, *,
                     min_separation_nm: float, min_prominence_nm: float) -> np.ndarray:
    """Markers at the maxima of a distance map: regional maxima that rise ``min_prominence_nm`` above their
    surroundings (h-maxima), merged when closer than ``min_separation_nm``. Returns (H, W) int32 labels."""
    from skimage.morphology import h_maxima

    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    # h-maxima on a fine integer grid (the float version is sensitive to round-off on plateaus)
    quantum_nm = 0.25
    levels = np.round(np.where(mask, distance_nm, 0) / quantum_nm).astype(np.int64)
    h = max(int(round(min_prominence_nm / quantum_nm)), 1)
    peaks = h_maxima(levels, h).astype(bool) & mask
    radius_px = 0.5 * min_separation_nm / pixel_size_nm
    if radius_px >= 1:
        # peaks within min_separation of each other fuse into one marker (dilation stays inside the mask)
        grown = cv2.dilate(peaks.astype(np.uint8), disk(radius_px).astype(np.uint8)).astype(bool) & mask
        blobs, _ = ndimage.label(grown, structure=np.ones((3, 3)))
        markers = np.where(peaks, blobs, 0)
    else:
        markers, _ = ndimage.label(peaks, structure=np.ones((3, 3)))
    return relabel_sequential(markers.astype(np.int32))[0]


def watershed_segment(image: np.ndarray, pixel_size_nm: float, cfg: WatershedConfig) -> np.ndarray:
    """Instance label map (H, W) int32 of bright particles on a dark substrate."""
    check_input(image, pixel_size_nm)
    px = float(pixel_size_nm)
    smooth = image.astype(np.float32)
    if cfg.smoothing_nm > 0:
        smooth = cv2.GaussianBlur(smooth, (0, 0), cfg.smoothing_nm / px, borderType=cv2.BORDER_REFLECT)
    mask = smooth > foreground_threshold(smooth, cfg)
    if cfg.opening_nm > 0:
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, disk(cfg.opening_nm / px).astype(np.uint8))
        mask = mask.astype(bool)
    if cfg.fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    distance_nm = ndimage.distance_transform_edt(mask) * px
    markers = distance_markers(distance_nm, mask, px, min_separation_nm=cfg.min_separation_nm,
                               min_prominence_nm=cfg.min_prominence_nm)
    ids = marker_watershed(-distance_nm, markers, mask)
    return remove_small_instances(ids, cfg.min_area_nm2 / px**2)


class WatershedModel:
    """``watershed``: the classical baseline as a model."""

    def __init__(self, cfg: WatershedConfig, spec: str = "watershed"):
        self.cfg = cfg
        self.spec = spec

    def __call__(self, image: np.ndarray, pixel_size_nm: float, image_info: Mapping | None = None) -> Prediction:
        return Prediction(ids=watershed_segment(image, pixel_size_nm, self.cfg))

    def describe(self) -> dict:
        return {"kind": "watershed", "spec": self.spec, **dataclasses.asdict(self.cfg)}


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


# ------------------------------------------------------------------------------------------ python plug-ins
def _import_target(target: str, spec: str) -> types.ModuleType:
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{spec}: plug-in file {path} does not exist")
        name = f"semsynth_plugin_{path.stem}_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # dataclasses and pickling look modules up here
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"{spec}: cannot import module {target!r} ({err}); give an importable module "
                                  "name or a path to a .py file") from None


def _accepts_image_info(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "image_info" or p.kind is p.VAR_KEYWORD for p in params)


class PluginModel:
    """``python:module:callable``: a user function ``fn(image, pixel_size_nm[, image_info=...], **options)``
    returning a label map or a Prediction. It gets ``image_info`` if it has a parameter of that name (or
    ``**kwargs``); ``options`` given to ``load_model`` are passed as keyword arguments on every call."""

    def __init__(self, fn: Callable, spec: str, options: dict):
        self.fn, self.spec, self.options = fn, spec, dict(options)
        self.wants_info = _accepts_image_info(fn)

    def __call__(self, image: np.ndarray, pixel_size_nm: float, image_info: Mapping | None = None) -> Prediction:
        kwargs = dict(self.options)
        if self.wants_info:
            kwargs["image_info"] = image_info
        return as_prediction(self.fn(image, pixel_size_nm, **kwargs), image.shape, source=self.spec)

    def describe(self) -> dict:
        return {"kind": "python", "spec": self.spec, **{k: _jsonable(v) for k, v in self.options.items()}}


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | type(None)) else repr(value)


def load_plugin(target: str, attr: str, spec: str, options: dict) -> PluginModel:
    module = _import_target(target, spec)
    try:
        fn = functools.reduce(getattr, attr.split("."), module)
    except AttributeError:
        public = sorted(n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise AttributeError(f"{spec}: {target!r} has no attribute {attr!r}; its callables: {public}") from None
    if not callable(fn):
        raise TypeError(f"{spec}: {target}:{attr} is a {type(fn).__name__}, not a callable")
    return PluginModel(fn, spec, options)


# ------------------------------------------------------------------------------------------- spec parsing
def parse_options(text: str, *, spec: str = "") -> dict[str, str]:
    """``"a=1,b=otsu"`` -> ``{"a": "1", "b": "otsu"}`` (values stay strings; ``config_from_options`` types them)."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"model spec {spec or text!r}: option {item!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """A spec-string value converted to a config field's type (numbers given as numbers pass through)."""
    args = typing.get_args(annotation)
    allowed = tuple(a for a in args if a is not type(None)) if args else (annotation,)
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        if type(None) in args:
            return None
        raise ValueError(f"option {name} cannot be None")
    if not isinstance(value, str):
        if bool in allowed and isinstance(value, bool):
            return value
        if isinstance(value, bool):
            raise ValueError(f"option {name} expects {_type_names(allowed)}, got {value!r}")
        if float in allowed and isinstance(value, int | float):
            return float(value)
        if int in allowed and isinstance(value, int | np.integer):
            return int(value)
        if str in allowed and isinstance(value, str):
            return value
        raise ValueError(f"option {name} expects {_type_names(allowed)}, got {value!r}")
    for kind in allowed:  # the order of the union decides: `str | float` tries str last below
        if kind is bool:
            if value.lower() in _TRUE + _FALSE:
                return value.lower() in _TRUE
        elif kind is int:
            try:
                return int(value)
            except ValueError:
                pass
        elif kind is float:
            try:
                return float(value)
            except ValueError:
                pass
    if str in allowed:
        try:  # a number given to a `str | float` field is the number
            return float(value) if float in allowed else value
        except ValueError:
            return value
    raise ValueError(f"option {name} expects {_type_names(allowed)}, got {value!r}")


def _type_names(types_: tuple) -> str:
    return " or ".join(getattr(t, "__name__", str(t)) for t in types_)


def config_from_options(cls: type, options: Mapping[str, Any], *, where: str) -> Any:
    """A frozen config dataclass from options (strings from a spec or typed values), rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; accepted: {fields}")
    try:
        values = {k: _coerce(v, hints[k], k) for k, v in options.items()}
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return cls(**values)


def _spec_error(spec: str, problem: str) -> ValueError:
    forms = "\n  ".join(SPEC_FORMS)
    return ValueError(f"model spec {spec!r}: {problem}; accepted forms:\n  {forms}")


def load_model(spec: str, **options: Any) -> Model:
    """The model a spec string names (see the module docstring); ``options`` are its parameters (for
    ``watershed`` they add to those in the spec; for ``unet`` see ``eval.unet.load_unet``; for ``python``
    they are passed to the callable)."""
    if not isinstance(spec, str) or not spec.strip():
        raise _spec_error(str(spec), "empty spec")
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "watershed":
        from_spec = parse_options(rest, spec=spec) if sep else {}
        both = sorted(set(from_spec) & set(options))
        if both:
            raise ValueError(f"model spec {spec!r}: option(s) {both} given both in the spec and as arguments")
        cfg = config_from_options(WatershedConfig, {**from_spec, **options}, where=f"model spec {spec!r}")
        return WatershedModel(cfg, spec)
    if kind == "unet":
        if not rest.strip():
            raise _spec_error(spec, "unet needs a checkpoint path (unet:PATH)")
        from eval.unet import load_unet

        return load_unet(Path(rest.strip()).expanduser(), spec=spec, **options)
    if kind == "predictions":
        if not rest.strip():
            raise _spec_error(spec, "predictions needs a JSON file (predictions:FILE.json)")
        path = Path(rest.strip()).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model spec {spec!r}: predictions file {path} does not exist")
        cfg = config_from_options(PredictionsConfig, options, where=f"model spec {spec!r}")
        return CocoPredictionsModel(path, cfg, spec)
    if kind == "python":
        target, colon, attr = rest.strip().rpartition(":")
        if not colon or not target or not attr:
            raise _spec_error(spec, "python needs a module (or .py file) and a callable (python:module:callable)")
        return load_plugin(target, attr, spec, options)
    raise _spec_error(spec, f"unknown model kind {kind!r}")
