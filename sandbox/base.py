"""The sandbox interface: jailed function servers, and how a job of them ended.

A *job* (trusted-side: task, source, configurations, seeds, limits) asks for the task's
contract check and, for the ``train`` stage, one training per configuration and seed. The
trainings run on the trusted side (``discovery.training``); a sandbox provides the jail for
the candidate's function: a fresh, confined process per training (:meth:`Sandbox.session`)
that answers calls over a pipe and never sees the model, the data or the job. An
:class:`Outcome` says how the job ended, with a status and a one-line reason.
"""

from __future__ import annotations

import enum
import os
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class Status(str, enum.Enum):
    """The one vocabulary of how a candidate stands: sandbox outcomes, the archive, selection,
    feedback, the dashboard and the export all use it.

    A status says *what* happened; *where* (reply, static, contract, cascade, full, heldout,
    dedup) is a separate ``stage`` field. A sandbox job ends in ``OK`` or one of the failures;
    ``PENDING``/``EVALUATING`` are a candidate's life before that, ``DUPLICATE`` and ``CULLED``
    are decisions of the search.
    """

    PENDING = "pending"  # stored, not yet started
    EVALUATING = "evaluating"  # being checked or trained
    OK = "ok"
    POLICY = "policy"  # rejected by the static policy before anything ran
    PARSE = "parse"  # no usable code: the reply or the source does not parse / define the slot
    TIMEOUT = "timeout"  # wall clock or CPU time exhausted
    MEMORY = "memory"  # address-space limit hit
    OUTPUT = "output"  # wrote more than the file-size limit
    CRASHED = "crashed"  # killed by a signal, or exited without a result
    INVALID = "invalid"  # broke the slot's contract: NaN, wrong shape or dtype, no gradient
    ERROR = "error"  # the candidate raised an exception
    DUPLICATE = "duplicate"  # same normalized code as an earlier candidate of the run; not evaluated
    CULLED = "culled"  # passed the checks but stopped by the cheap cascade stage

    @property
    def failed(self) -> bool:
        """Whether this is a failure of the candidate's code (shown to proposers as a failure)."""
        return self in FAILURES

    @property
    def finished(self) -> bool:
        """Whether the candidate's evaluation is over (neither pending nor evaluating)."""
        return self not in (Status.PENDING, Status.EVALUATING)


#: the statuses that mean the candidate's code failed (a duplicate or culled one did not)
FAILURES = frozenset(
    {
        Status.POLICY,
        Status.PARSE,
        Status.TIMEOUT,
        Status.MEMORY,
        Status.OUTPUT,
        Status.CRASHED,
        Status.INVALID,
        Status.ERROR,
    }
)


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
    """What the trusted side is asked to do with one candidate (the jail sees only its source and
    slot: :class:`sandbox.wire.JailSpec`)."""

    task: str  # built-in task name or path to a task file
    source: str
    stage: str = "train"  # "contract" or "train"
    suite: str = "discover"
    configs: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    device: str = "cpu"  # where the trusted trainer computes
    limits: Limits = field(default_factory=Limits)
    #: run the candidate under the run-time guard (sandbox/jail/guard.py); only a trusted-side test of the
    #: OS walls behind it (the hostile corpus) turns it off
    guarded: bool = True
    #: train the (configuration, seed) cells a task can batch (``Task.batch_key``) as one vectorised
    #: training each; False: one training per cell, as a task without batching does
    batched: bool = True


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
    error_class: str = ""  # the exception's class name when the candidate raised one
    message: str = ""  # the exception's own message (one line), without the class or the line

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


class Sandbox(ABC):
    """A backend that runs jobs in isolation. Implementations must be thread-safe per slot."""

    name: str = "abstract"
    #: human-readable notes on what isolation is in force (recorded with every run)
    isolation_notes: list[str]

    @abstractmethod
    def session(self, spec: Any, seconds: float, max_payload: int = 1 << 28) -> AbstractContextManager[Any]:
        """A fresh jailed function server for ``spec`` (a :class:`sandbox.wire.JailSpec`),
        ready to answer calls, as a context manager yielding its :class:`sandbox.host.session.Session`;
        it ends with the block. ``seconds`` bounds its life; raises ``JailEnded`` when the candidate
        cannot even be loaded."""

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
