"""Plain text helpers for one-line reasons: both sides quote a candidate's line the same way.

Nothing here imports anything but the standard library: the jail, the trusted side and the static check all use it.
"""

from __future__ import annotations

import re

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


def annotate(source: str, line: int, note: str) -> str:
    """The candidate's source with ``  <--- note`` appended to line ``line`` (OPTO-style), for feedback.

    Lines are counted the way :mod:`ast` counts them; a line outside the source is clamped to
    the first or last line, and newlines in ``note`` become spaces.
    """
    parts = re.split(r"(\r\n|\r|\n)", source)  # line, separator, line, separator, ..., line
    n_lines = (len(parts) + 1) // 2
    if n_lines > 1 and parts[-1] == "":
        n_lines -= 1  # a trailing newline does not start another line
    index = 2 * (min(max(line, 1), n_lines) - 1)
    parts[index] += "  <--- " + " ".join(note.splitlines())
    return "".join(parts)
