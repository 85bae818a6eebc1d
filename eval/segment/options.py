"""Model options as text (``k=v,...``) to typed config dataclasses, with errors that quote the spec."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

import numpy as np

SPEC_FORMS = (
    "watershed",
    "watershed:key=value,key=value",
    "unet:PATH",
    "predictions:FILE.json",
    "python:module:callable",
    "python:path/to/file.py:callable",
)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


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
    """A bad ``--model`` spec: a ``UserError`` naming the option, the spec and the accepted forms."""
    from simulator.io.errors import UserError

    return UserError("--model", f"model spec {spec!r}: {problem}", "one of the forms " + ", ".join(SPEC_FORMS))
