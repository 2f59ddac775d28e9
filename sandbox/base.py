"""The sandbox interface: a job goes in, an outcome with a status and one-line reason comes out.

A *job* asks an isolated process to load a candidate program, run the task's contract
check, and (for the ``train`` stage) train on some configurations and seeds. The process
writes raw tensors to ``result.pt`` in its scratch directory; the trusted side reads them
with ``torch.load(weights_only=True)`` and scores them. Nothing the candidate prints is read.
"""

from __future__ import annotations

import enum
import json
import os
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class Status(str, enum.Enum):
    """How a sandboxed job ended."""

    OK = "ok"
    POLICY = "policy"  # rejected by the static policy before anything ran
    PARSE = "parse"  # the source does not parse / does not define the slot
    CONTRACT = "contract"  # the cheap contract check failed
    TIMEOUT = "timeout"  # wall clock or CPU time exhausted
    MEMORY = "memory"  # address-space limit hit
    OUTPUT = "output"  # wrote more than the file-size limit
    CRASHED = "crashed"  # killed by a signal, or exited without a result
    INVALID = "invalid"  # returned something unusable (NaN, wrong shape or dtype)
    ERROR = "error"  # the candidate raised an exception


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sandboxed job."""

    wall_seconds: float = 120.0
    cpu_seconds: int = 240
    memory_mb: int = 6144  # address space; torch maps a lot of virtual memory at import
    file_mb: int = 64
    max_processes: int = 256  # threads count too; forks are refused by seccomp regardless
    threads: int = 1
    #: wall-clock seconds one (configuration, seed) training may take (0: only the job's wall)
    training_seconds: float = 0.0


@dataclass
class Job:
    """What an isolated process is asked to do."""

    task: str  # built-in task name or path to a task file
    source: str
    stage: str = "train"  # "contract" or "train"
    suite: str = "discover"
    configs: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    device: str = "cpu"
    limits: Limits = field(default_factory=Limits)
    #: run the candidate under the run-time guard (sandbox/guard.py); only a trusted-side test of the
    #: OS walls behind it (the hostile corpus) turns it off
    guarded: bool = True

    def write(self, job_dir: Path) -> None:
        """Write ``job.json`` into ``job_dir`` (inputs.pt is written by the caller)."""
        data = asdict(self)
        (job_dir / "job.json").write_text(json.dumps(data))

    @classmethod
    def read(cls, job_dir: Path) -> Job:
        """Read a job written by :meth:`write`."""
        data = json.loads((job_dir / "job.json").read_text())
        data["limits"] = Limits(**data["limits"])
        return cls(**data)


@dataclass
class Outcome:
    """How a job ended, and what it returned (raw tensors, not scores)."""

    status: Status
    reason: str = ""
    stage: str = ""  # parse / contract / train
    outputs: dict[str, Any] = field(default_factory=dict)  # "config/seed" -> raw tensors
    stderr_tail: str = ""
    seconds: float = 0.0
    line: int | None = None  # the candidate's own line where the failure happened

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


class Sandbox(ABC):
    """A backend that runs jobs in isolation. Implementations must be thread-safe per slot."""

    name: str = "abstract"
    #: human-readable notes on what isolation is in force (recorded with every run)
    isolation_notes: list[str]

    @abstractmethod
    def run(self, job: Job, inputs: dict[str, Any] | None = None) -> Outcome:
        """Run ``job`` with the trusted ``inputs`` (tensors) and return its outcome."""

    def close(self) -> None:
        """Release processes and containers."""
        return None

    def kill(self) -> None:
        """Stop at once, a running job included (from another thread; an abort)."""
        self.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: how long (busy-wait iterations, ~1 ns each) an idle OpenMP thread of a team spins before it
#: sleeps: long enough to bridge the gaps between small ops, short enough not to starve others
GOMP_TEAM_SPINS = 200_000


def scrubbed_env(threads: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The whole environment a sandboxed process gets: no keys, no proxies, nothing inherited."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/nonexistent",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": str(threads),
        # OpenMP's idle threads: ACTIVE (spin for ever) starves everything once the machine is busier
        # than the sandbox's threads (2-thread jobs hit a 270 s wall at load 8); PASSIVE (sleep at
        # once) makes tiny multi-threaded ops 3x slower (15.5 s vs 5.5 s per suite, idle). A single
        # thread never waits on a team, so PASSIVE is free there; teams get a short bounded spin
        # (libgomp's GOMP_SPINCOUNT; its default is 30 billion spins under ACTIVE).
        "GOMP_SPINCOUNT": "0" if threads == 1 else str(GOMP_TEAM_SPINS),
        "MKL_NUM_THREADS": str(threads),
    }
    if threads == 1:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    if extra:
        env.update(extra)
    return env


def project_root() -> Path:
    """The directory that holds the ``discovery`` and ``sandbox`` packages."""
    return Path(os.path.dirname(os.path.abspath(__file__))).parent
