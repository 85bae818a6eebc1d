"""A model from a Python callable ``callable(image, pixel_size_nm[, image_info])``."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import sys
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from eval.segment.interface import Prediction, as_prediction
from simulator.io.errors import UserError


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

    external = True  # user code: its failures are reported as bad input, naming the plug-in

    def __init__(self, fn: Callable, spec: str, options: dict):
        self.fn, self.spec, self.options = fn, spec, dict(options)
        self.wants_info = _accepts_image_info(fn)
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):
            return  # builtins without a signature: checked when called
        kwargs = {**self.options, **({"image_info": None} if self.wants_info else {})}
        try:
            signature.bind(np.zeros((1, 1), np.float32), 1.0, **kwargs)
        except TypeError as err:
            raise UserError(spec, f"the callable takes {signature} ({err})",
                            "fn(image, pixel_size_nm[, image_info=None], **options)") from None

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
