"""Values in and out of the archive: timestamps, JSON columns, decoded rows.

Every ``*_json`` column holds strict JSON (``json_extract`` can read it): non-finite floats
(NaN, +-inf) are stored as ``null``, numpy/torch scalars and arrays as plain numbers and
lists, paths as strings. Rows come back as dicts in which each ``x_json`` column is
replaced by ``x`` holding the decoded value (``parents_json`` -> ``parents``), and
``is_baseline`` is a ``bool``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import PurePath
from typing import Any


def now() -> str:
    """The current UTC time as a sortable ISO-8601 string with milliseconds."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _plain(value: Any) -> Any:
    """``value`` as JSON-ready builtins, non-finite floats replaced by ``None``."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [_plain(v) for v in items]
    if isinstance(value, PurePath):
        return str(value)
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars, torch tensors
    if callable(tolist):
        return _plain(tolist())
    item = getattr(value, "item", None)
    if callable(item):
        return _plain(item())
    return str(value)


def to_json(value: Any) -> str | None:
    """Encode ``value`` for a ``*_json`` column; ``None`` stays SQL NULL."""
    if value is None:
        return None
    return json.dumps(_plain(value), separators=(",", ":"), allow_nan=False)


def to_real(value: Any) -> float | None:
    """A float for a REAL column; ``None`` for missing and NaN (SQLite stores NaN as NULL)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def decode_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored row as a dict: ``x_json`` columns decoded into ``x``, booleans as ``bool``."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key.endswith("_json"):
            out[key[: -len("_json")]] = json.loads(value) if value is not None else None
        elif key == "is_baseline":
            out[key] = bool(value)
        else:
            out[key] = value
    return out
