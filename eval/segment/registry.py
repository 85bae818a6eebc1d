"""Instance-segmentation models behind one interface, chosen by a spec string.

A model is a callable

    model(image, pixel_size_nm, image_info=None) -> Prediction

- ``image``: (H, W) float32 in [0, 1], the image as written (``eval.calibrate.fit.dataset_samples`` yields it);
- ``pixel_size_nm``: its sampling distance, so that models can work in physical units;
- ``image_info``: the image's COCO record from the dataset's ``annotations.json`` (``id``, ``file_name``,
  ...) or None. The evaluator always passes it; only models that look predictions up by image need it
  (``predictions:``); the others ignore it.

It returns a ``Prediction``: ``ids`` (H, W) int32 label map (0 = background, 1..N) and optional ``scores``
(instance id -> confidence, for AP-type metrics). ``load_model(spec, **options)`` builds one from

    watershed                         classical baseline (``WatershedConfig``)
    watershed:key=value,key=value     the same with options, e.g. watershed:min_separation_nm=80,threshold=otsu
    unet:PATH                         a checkpoint written by ``eval.segment.unet.train_unet``
    predictions:FILE.json             COCO results of an external model (detectron2, mmdetection, ...)
    python:module:callable            a plug-in: callable(image, pixel_size_nm) -> label map or Prediction
    python:path/to/file.py:callable   the same, imported from a file

Every model it returns also has ``spec`` (the string it was built from) and ``describe()`` (a JSON-able dict
of its parameters, for reports).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.segment.interface import Model
from eval.segment.options import _spec_error, config_from_options, parse_options
from eval.segment.plugin import load_plugin
from eval.segment.predictions import CocoPredictionsModel, PredictionsConfig
from eval.segment.watershed import WatershedConfig, WatershedModel


def load_model(spec: str, **options: Any) -> Model:
    """The model a spec string names (see the module docstring); ``options`` are its parameters (for
    ``watershed`` they add to those in the spec; for ``unet`` see ``eval.segment.unet.load_unet``; for ``python``
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
        from eval.segment.unet import load_unet

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
