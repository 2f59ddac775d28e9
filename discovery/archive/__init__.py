"""The SQLite archive of discovery runs: the one file the dashboard and the export read.

``Archive(path)`` opens it for the run (creating and migrating it), ``Archive.open_readonly``
for everyone else; every problem with the file is an ``ArchiveError`` with a one-line
message. See ``store`` for the concurrency model and ``schema`` for the tables.
"""

from .errors import ArchiveError
from .schema import latest_version
from .store import (
    DEFAULT_BUSY_TIMEOUT,
    RUN_STATUSES,
    SUITES,
    UNFINISHED_STATUSES,
    UPDATABLE_CANDIDATE_FIELDS,
    Added,
    Archive,
)

SCHEMA_VERSION = latest_version()

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "RUN_STATUSES",
    "SCHEMA_VERSION",
    "SUITES",
    "UNFINISHED_STATUSES",
    "UPDATABLE_CANDIDATE_FIELDS",
    "Added",
    "Archive",
    "ArchiveError",
]
