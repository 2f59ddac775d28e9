"""The walls of a jailed process, and how a candidate's failure becomes a one-line reason.

Used by the function server (:mod:`sandbox.jail.function_server`) in a child forked from the warm
template or in a fresh interpreter, before the candidate's first line runs.

The walls a job gets here, in order: stdout and stderr go to ``log.txt`` in the job
directory (so the file-size limit caps what a candidate prints); when started as root, a
private SysV IPC namespace, the job directory handed to an unprivileged uid and every
privilege dropped; rlimits (open descriptors among them: a few are held back for what the
server sends after a failure); the seccomp filter. Before the candidate's first line runs,
faulthandler is armed so that a job killed for time (or by a fatal signal) leaves a
traceback in the log that names the candidate's line; a write beyond the file-size limit
raises ``OSError(EFBIG)`` at the candidate's line instead of killing the process silently.
"""

from __future__ import annotations

import errno
import faulthandler
import math
import os
import resource
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from sandbox.text import one_line, where
from sandbox.wire import CANDIDATE_FILE, DEADLINE_FILE, UID_VARIABLE

#: uid (and gid) a job runs as when the sandbox starts it as root, unless the environment
#: variable UID_VARIABLE names another (the local backend gives each sandbox its own uid, so
#: that per-user limits such as RLIMIT_NPROC are not shared between workers)
SANDBOX_UID = 65534
#: seconds before the deadline at which the runner dumps the candidate's stack into the log
DUMP_MARGIN_SECONDS = 1.0
#: open descriptors a job may hold (RLIMIT_NOFILE, soft = hard). A job starts with stdin and the
#: log on stdout/stderr, the runner holds RESERVED_DESCRIPTORS more, and the rest is the candidate's;
#: a CUDA job also opens the driver's device nodes and a few of its own, after the limit is set
MAX_OPEN_FILES = 64
MAX_OPEN_FILES_CUDA = 256
#: descriptors held back for what the server sends after the candidate failed, so that a candidate
#: that used up its own gets EMFILE at its own line and still gets its failure reported, instead
#: of ending as a crash without one
RESERVED_DESCRIPTORS = 3
_reserved: list[int] = []


def _candidate_line(exc: BaseException) -> int:
    """The last traceback line inside the candidate's own code (-1 when there is none)."""
    if isinstance(exc, SyntaxError) and exc.filename == CANDIDATE_FILE and exc.lineno:
        return exc.lineno
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == CANDIDATE_FILE]
    return (frames[-1].lineno or -1) if frames else -1


def _message(exc: BaseException) -> str:
    try:
        text = str(exc).strip()
    except Exception:  # noqa: BLE001 - a candidate's exception may fail to render itself
        text = ""
    return one_line(text.splitlines()[0], 200) if text else ""


def _describe(exc: BaseException, source: str) -> tuple[str, int]:
    lineno = _candidate_line(exc)
    message = _message(exc)
    reason = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return one_line(reason + where(source, lineno)), lineno


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    oom = getattr(sys.modules.get("torch"), "OutOfMemoryError", None)
    if isinstance(oom, type) and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in _message(exc)


def _is_output_limit(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.EFBIG


def _failure(exc: BaseException, source: str, stage: str, memory_mb: int, file_mb: int) -> dict[str, Any]:
    """The result of a job whose candidate raised ``exc``."""
    reason, line = _describe(exc, source)
    error = {"error_class": type(exc).__name__, "message": _message(exc)}
    if _is_out_of_memory(exc):
        limit = f"the {memory_mb} MB memory limit" if memory_mb > 0 else "the memory limit"
        return {
            "status": "memory",
            "stage": stage,
            "line": line,
            **error,
            "reason": one_line(f"out of memory: {limit} was reached{where(source, line)}"),
        }
    if _is_output_limit(exc):
        return {
            "status": "output",
            "stage": stage,
            "line": line,
            **error,
            "reason": one_line(f"wrote more than the {file_mb} MB file-size limit{where(source, line)}"),
        }
    if isinstance(exc, RecursionError):
        reason = "recursion without end: " + reason
    return {"status": "error", "stage": stage, "reason": one_line(reason), "line": line, **error}


# ------------------------------------------------------------------------------------ walls


def redirect_output(job_dir: Path) -> None:
    """Point stdout and stderr at ``log.txt`` in the job directory (the file-size limit caps it)."""
    fd = os.open(os.path.join(job_dir, "log.txt"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if fd > 2:
        os.close(fd)


def _hand_over(job_dir: Path, uid: int, gid: int) -> None:
    """Give the job directory (not its parents) to the unprivileged job user."""
    for entry in [job_dir, *Path(job_dir).iterdir()]:
        os.chown(entry, uid, gid, follow_symlinks=False)


def job_uid(environ: dict[str, str] | os._Environ[str] | None = None) -> int:
    """The uid a job runs as when started as root (from UID_VARIABLE, else SANDBOX_UID)."""
    value = (os.environ if environ is None else environ).get(UID_VARIABLE, "")
    return int(value) if value.isdigit() and 0 < int(value) < 2**31 else SANDBOX_UID


def max_open_files(device: str) -> int:
    """The RLIMIT_NOFILE of a job on ``device``."""
    return MAX_OPEN_FILES_CUDA if str(device).startswith("cuda") else MAX_OPEN_FILES


def reserve_descriptors(count: int = RESERVED_DESCRIPTORS) -> None:
    """Hold ``count`` descriptors (on /dev/null) for the runner until :func:`release_descriptors`."""
    for _ in range(count - len(_reserved)):
        _reserved.append(os.open(os.devnull, os.O_RDONLY))


def release_descriptors() -> None:
    """Close the held descriptors, freeing their slots below RLIMIT_NOFILE (idempotent). A number the
    candidate closed and reused is closed all the same: either way the slot is free again."""
    while _reserved:
        try:
            os.close(_reserved.pop())
        except OSError:
            pass


def confine_job(job_dir: Path, job: Any, uid: int = SANDBOX_UID) -> list[str]:
    """Put up the in-process walls for ``job``; irreversible. Returns notes on what is in force.

    As root: a private IPC namespace, the job directory handed to ``uid`` (gid the same
    number), then every privilege dropped. Then rlimits (CPU, address space, file size,
    processes, open descriptors: :func:`max_open_files`, no core) and the seccomp filter (no
    fork/exec, no socket of any family). Call with the job directory as the working
    directory: the job keeps reaching it through the cwd even when its parents are not
    searchable by the unprivileged user.
    """
    from sandbox.jail.confine import apply_rlimits, drop_privileges, install_seccomp, unshare_ipc

    notes = []
    if os.geteuid() == 0:
        if unshare_ipc():
            notes.append("private IPC namespace")
        _hand_over(job_dir, uid, uid)
        drop_privileges(uid, uid)
        notes.append(f"runs as uid {uid} without capabilities")
    lim = job.limits
    memory = 0 if job.device.startswith("cuda") else lim.memory_mb  # CUDA maps huge virtual ranges
    # RLIMIT_CPU counts from the process's start: a fresh interpreter has already spent a second
    # or two importing torch, which must not come out of the candidate's allowance
    usage = resource.getrusage(resource.RUSAGE_SELF)
    spent = math.ceil(usage.ru_utime + usage.ru_stime)
    apply_rlimits(
        lim.cpu_seconds + spent if lim.cpu_seconds > 0 else 0,
        memory,
        lim.file_mb,
        lim.max_processes,
        max_files=max_open_files(job.device),
    )
    install_seccomp(deny_network=True)
    return notes


def _arm_diagnostics(job_dir: Path) -> None:
    """Make the candidate's line show up in the log when the job is killed."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit raise EFBIG at the line
    faulthandler.enable(file=sys.stderr, all_threads=True)  # SIGSEGV, SIGABRT, ...
    faulthandler.register(signal.SIGXCPU, file=sys.stderr, all_threads=True, chain=True)
    try:
        deadline = float((Path(job_dir) / DEADLINE_FILE).read_text())
    except (OSError, ValueError):
        return
    remaining = deadline - time.time() - DUMP_MARGIN_SECONDS
    if remaining > 0:
        faulthandler.dump_traceback_later(remaining, exit=False, file=sys.stderr)
