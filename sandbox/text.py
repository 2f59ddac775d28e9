"""Plain text helpers for one-line reasons: both sides quote a candidate's line the same way.

Nothing here imports anything: the jail, the trusted side and the static check all use it.
"""

from __future__ import annotations

#: characters one reason may take
REASON_CHARS = 300


def one_line(text: str, limit: int = REASON_CHARS) -> str:
    """``text`` on one line (whitespace runs collapsed), at most ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def candidate_line_text(source: str, lineno: int) -> str:
    """The stripped text of line ``lineno`` of ``source`` ("" when out of range)."""
    lines = source.splitlines()
    return lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""


def where(source: str, lineno: int) -> str:
    """`` (line N: `text`)`` for the candidate's line ``lineno``, or "" when there is none."""
    if lineno <= 0:
        return ""
    return f" (line {lineno}: `{candidate_line_text(source, lineno)[:120]}`)"
