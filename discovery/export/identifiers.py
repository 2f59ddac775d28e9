"""Safe, unique Python identifiers for exported functions, whatever a proposer called them.

A candidate's name is untrusted text (an LLM wrote it). It never reaches the exported module
as code: it is reduced to ``[a-z0-9_]``, prefixed when it would start with a digit or be a
keyword, a soft keyword or a builtin, truncated, and made unique with a numeric suffix.
"""

from __future__ import annotations

import builtins
import keyword
import re
import unicodedata
from collections.abc import Iterable

MAX_CHARS = 48
"""Longest identifier derived from a candidate name (before a uniqueness suffix)."""

_BUILTINS = frozenset(dir(builtins))


def is_safe_identifier(name: str) -> bool:
    """An ASCII identifier that is no keyword, soft keyword, builtin, and does not start with ``_``."""
    return (
        bool(re.fullmatch(r"[a-z][a-z0-9_]*", name))
        and name.isidentifier()
        and not keyword.iskeyword(name)
        and not keyword.issoftkeyword(name)
        and name not in _BUILTINS
    )


def base_identifier(raw: str, fallback: str, prefix: str = "loss") -> str:
    """``raw`` reduced to a safe identifier; ``fallback`` when nothing usable is left.

    ``"LRML (τ=0.05)"`` -> ``"lrml_t_0_05"``; ``"class"`` -> ``"loss_class"``; ``"3x"`` -> ``"loss_3x"``.
    ``fallback`` and ``prefix`` must themselves reduce to identifiers (they are trusted).
    """
    text = unicodedata.normalize("NFKD", str(raw)).encode("ascii", "ignore").decode("ascii").lower()
    text = re.sub(r"[^a-z0-9]+", "_", text).strip("_")[:MAX_CHARS].rstrip("_")
    if not text:
        text = fallback
    if not is_safe_identifier(text):
        text = f"{prefix}_{text}"[:MAX_CHARS].rstrip("_")
    if not is_safe_identifier(text):
        raise ValueError(f"cannot derive an identifier from {raw!r} with fallback {fallback!r}")
    return text


def unique_identifier(base: str, taken: set[str]) -> str:
    """``base``, or ``base_2``, ``base_3``, ... : the first one not in ``taken`` (which is updated)."""
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"not an identifier: {name!r}")
    taken.add(name)
    return name


def export_names(raw_names: Iterable[tuple[str, str]], reserved: Iterable[str], prefix: str = "loss") -> list[str]:
    """One unique safe identifier per ``(candidate name, candidate id)``, in order.

    The id gives the fallback for a name with no usable character (``loss_1a2b3c4d`` for
    ``c-1a2b3c4d``); ``reserved`` names (the module's own) are never returned.
    """
    taken = set(reserved)
    out = []
    for raw, cid in raw_names:
        fallback = base_identifier(cid, "candidate", prefix)
        if not fallback.startswith(prefix + "_"):
            fallback = f"{prefix}_{fallback.removeprefix('c_')}"
        out.append(unique_identifier(base_identifier(raw, fallback, prefix), taken))
    return out
