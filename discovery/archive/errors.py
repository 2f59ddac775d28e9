"""The one exception the archive raises, and how SQLite errors become it."""

from __future__ import annotations

import sqlite3
from pathlib import Path


class ArchiveError(Exception):
    """A problem with an archive file, as one line a CLI can print without a traceback.

    The message never contains a newline; the originating ``sqlite3`` error, when there
    is one, is kept as ``__cause__`` for ``--verbose`` output.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def from_sqlite(exc: BaseException, path: str | Path, busy_timeout: float) -> ArchiveError:
    """Translate a ``sqlite3`` (or ``OSError``) failure on ``path`` into an ``ArchiveError``."""
    text = str(exc) or type(exc).__name__
    low = text.lower()
    if "not a database" in low:
        return ArchiveError(f"{path} is not a discovery archive (not a SQLite database)")
    if "locked" in low or "busy" in low:
        return ArchiveError(f"archive {path} is locked by another process (gave up after {busy_timeout:g} s)")
    if "malformed" in low or "corrupt" in low:
        return ArchiveError(f"archive {path} is damaged: {text}")
    if "readonly" in low or "read-only" in low:
        return ArchiveError(f"archive {path} is read-only: {text}")
    if "unable to open" in low or isinstance(exc, OSError):
        return ArchiveError(f"cannot open archive {path}: {text}")
    if isinstance(exc, sqlite3.IntegrityError):
        return ArchiveError(f"archive {path}: integrity error: {text}")
    return ArchiveError(f"archive {path}: {text}")
