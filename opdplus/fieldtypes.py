"""Field types of the config dataclasses: normalise each value to its declared type, or fail.

Config files are the usual source of wrong types: YAML 1.1 reads ``lr: 1e-5`` as a string
(accepted here as the number it spells), ``steps: true`` as a bool (rejected: Python would
count it as 1), and a scalar may stand where a list or mapping belongs, which would
otherwise surface later as a bare ``TypeError``. Every error is a ``ValueError`` that names
the dataclass, the field, the value and what it should be.

Types are read from the annotations as strings (``from __future__ import annotations``):
``int``, ``float``, ``bool``, ``str``, ``Optional[...]`` of those, ``Tuple[float, float]``
(a pair of numbers) and ``Dict[str, float]`` (a mapping; numeric strings among its values
become numbers, other values are left to the field's own checks).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}
_WANT = {"int": "an int", "float": "a number", "bool": "true or false", "str": "a string"}


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _number(where: str, v: Any, kind: str) -> Any:
    """``v`` as an int or float, accepting numeric strings (YAML 1.1 reads ``1e-5`` as one)."""
    if isinstance(v, bool):  # a bool is an int to Python, never to a user
        raise ValueError(f"{where} must be {_WANT[kind]}, got the bool {v!r}")
    x = v
    if isinstance(v, str):
        if not _is_number(v.strip()):
            raise ValueError(f"{where} must be {_WANT[kind]}, got the string {v!r}")
        x = float(v.strip())
    if not isinstance(x, (int, float)):
        raise ValueError(f"{where} must be {_WANT[kind]}, got {type(v).__name__} {v!r}")
    if kind == "float":
        return float(x)
    if isinstance(x, float):
        if not (math.isfinite(x) and x.is_integer()):
            raise ValueError(f"{where} must be a whole number, got {v!r}")
        return int(x)
    return x


def check_field_types(cfg) -> None:
    """Normalise every field of the frozen dataclass ``cfg`` in place, or raise ``ValueError``."""
    owner = type(cfg).__name__
    for f in dataclasses.fields(cfg):
        name, kind, v = f.name, str(f.type), getattr(cfg, f.name)
        where = f"{owner}: {name}"
        optional = kind.startswith("Optional[")
        base = kind[len("Optional[") : -1] if optional else kind
        if v is None and optional:
            continue
        if base in ("int", "float"):
            v = _number(where, v, base)
        elif base in ("bool", "str"):
            if not isinstance(v, _SCALARS[base]):
                raise ValueError(f"{where} must be {_WANT[base]}, got {type(v).__name__} {v!r}")
        elif base.startswith("Tuple[float"):
            if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple)) or len(v) != 2:
                raise ValueError(f"{where} must be a pair of numbers [a, b], got {v!r}")
            v = tuple(_number(f"{where}[{i}]", b, "float") for i, b in enumerate(v))
        elif base.startswith("Dict[str"):
            v = {} if v is None else v
            if not isinstance(v, Mapping) or not all(isinstance(k, str) for k in v):
                raise ValueError(
                    f"{where} must be a mapping of names to values, e.g. {{'beta': 0.5}}, got "
                    f"{type(v).__name__} {v!r}"
                )
            v = {
                k: _number(f"{where}[{k!r}]", x, "float")
                if isinstance(x, str) and _is_number(x)
                else x
                for k, x in v.items()
            }
        object.__setattr__(cfg, name, v)
