"""A session's directory seen from the trusted side, and how a jail that died becomes an :class:`Outcome`.

``job.json`` (the :class:`~sandbox.wire.JailSpec`), ``deadline`` and the FIFOs go in;
``log.txt`` is the only file read back, its tail only, for feedback. A jail returns nothing
through files: whatever it writes into its directory is never read as a result.
"""

from __future__ import annotations

import os
import re
import signal as signals
import stat
import time
from pathlib import Path
from typing import Any

from sandbox.base import Outcome, Status
from sandbox.text import one_line, where
from sandbox.wire import CANDIDATE_FILE, DEADLINE_FILE

LOG_TAIL_CHARS = 2000
DUMP_SEARCH_CHARS = 32768
MIB = 1024 * 1024
#: a job may keep this many file-size limits' worth of data in its scratch directory
SCRATCH_FACTOR = 4
SCRATCH_MAX_ENTRIES = 2000
#: how often the trusted side looks at a running job's scratch directory
SCRATCH_POLL_SECONDS = 0.25


def write_deadline(job_dir: Path, wall_seconds: float) -> None:
    """Tell the runner when the trusted side will kill the job: ``time.time()`` plus the wall
    limit. Called just before the job starts (a little before the trusted side starts its own
    clock), so that the runner can dump the candidate's stack into the log before the kill."""
    (job_dir / DEADLINE_FILE).write_text(repr(time.time() + wall_seconds))


def scratch_budget(job_dir: Path, file_mb: int) -> int:
    """Bytes a job may keep in its directory: what is there now plus SCRATCH_FACTOR file limits."""
    return scratch_usage(job_dir, limit_bytes=None)[0] + SCRATCH_FACTOR * max(file_mb, 1) * MIB


def scratch_usage(job_dir: Path, limit_bytes: int | None, max_entries: int = SCRATCH_MAX_ENTRIES) -> tuple[int, int]:
    """(bytes allocated, entries) under ``job_dir``, links not followed; stops early once past
    ``limit_bytes`` or ``max_entries`` so that a directory full of junk costs bounded time."""
    total = entries = 0
    stack = [str(job_dir)]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for entry in it:
                entries += 1
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                total += info.st_blocks * 512
                if stat.S_ISDIR(info.st_mode):
                    stack.append(entry.path)
                if entries > max_entries or (limit_bytes is not None and total > limit_bytes):
                    return total, entries
    return total, entries


def scratch_exceeded(job_dir: Path, budget: int, max_entries: int = SCRATCH_MAX_ENTRIES) -> str:
    """Why the job's directory is over its budget (one line), or "" while it is within it."""
    used, entries = scratch_usage(job_dir, budget, max_entries)
    if entries > max_entries:
        return f"created more than {max_entries} files in its scratch directory"
    if used > budget:
        return f"wrote more than {budget // MIB} MB into its scratch directory"
    return ""


def input_key(config: str, seed: int) -> str:
    """The key of one (configuration, seed) in a job's inputs and outputs."""
    return f"{config}/{seed}"


def read_regular_file(path: Path, tail: int | None = None) -> bytes | None:
    """Bytes of ``path`` only if it is a regular file, not a link or FIFO the candidate planted
    (a ``log.txt`` symlinked to ``/proc/self/environ`` must not make us read our own secrets)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        if tail is not None and info.st_size > tail:
            os.lseek(fd, info.st_size - tail, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_log_tail(job_dir: Path, chars: int = LOG_TAIL_CHARS) -> str:
    """The last lines the candidate's process printed (bounded), for feedback only."""
    data = read_regular_file(job_dir / "log.txt", tail=chars)
    return data.decode("utf-8", "replace")[-chars:] if data else ""


def _signal_name(sig: int) -> str:
    try:
        return signals.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


_DUMP_HEADER = re.compile(
    r"(?:Current thread|Thread) 0x[0-9a-f]+ \(most recent call first\):|Stack \(most recent call first\):"
)
_DUMP_FRAME = re.compile(r'File "' + re.escape(CANDIDATE_FILE) + r'", line (\d+)')


def dumped_line(log: str) -> int:
    """The candidate's innermost line in the last stack dump faulthandler wrote to the log
    (when the job was killed for time or by a fatal signal), or -1."""
    headers = list(_DUMP_HEADER.finditer(log))
    if not headers:
        return -1
    # the dump of the thread that ran the candidate: the last block that mentions its file
    for header in reversed(headers):
        block = log[header.end() :]
        nxt = _DUMP_HEADER.search(block)
        block = block[: nxt.start()] if nxt else block
        match = _DUMP_FRAME.search(block)
        if match:
            return int(match.group(1))
    return -1


def read_outcome(
    job_dir: Path,
    returncode: int | None,
    signal: int | None,
    timed_out: bool,
    oom: bool,
    seconds: float,
    wall_limit: float = 0.0,
    file_limit_mb: int = 0,
    *,
    source: str = "",
    scratch: str = "",
    cpu_seconds: float | None = None,
    cpu_limit: float = 0.0,
    maxrss_kb: int | None = None,
    memory_limit_mb: int = 0,
) -> Outcome:
    """Classify how a jailed process ended that did not answer: the limits the trusted side
    enforced take precedence, then the signal or exit code (a jail that exits by itself, whatever
    it wrote, ended without an answer: crashed).

    ``source`` (the trusted copy of the candidate) lets a reason quote the candidate's line;
    ``scratch`` is why the trusted side killed the job for filling its directory;
    ``cpu_seconds`` (from wait4, or an upper bound) and ``maxrss_kb`` (from wait4) tell a kill
    at the CPU hard limit and the kernel's out-of-memory kill apart from other SIGKILLs.
    Every reason is one line; no file the candidate could have planted is followed.
    """
    log = read_log_tail(job_dir, DUMP_SEARCH_CHARS)  # a stack dump may be long: look further back
    tail = log[-LOG_TAIL_CHARS:]

    def outcome(status: Status, reason: str, line: int = -1, **extra: Any) -> Outcome:
        return Outcome(
            status,
            one_line(reason + where(source, line)),
            stderr_tail=tail,
            seconds=seconds,
            line=line if line > 0 else None,
            **extra,
        )

    if timed_out:
        return outcome(
            Status.TIMEOUT, f"wall-clock limit of {wall_limit:g} s exceeded; process group killed", dumped_line(log)
        )
    if scratch:
        return outcome(Status.OUTPUT, scratch + "; process group killed")
    if signal == signals.SIGXCPU:
        return outcome(Status.TIMEOUT, "CPU-time limit exceeded (SIGXCPU)", dumped_line(log))
    if signal == signals.SIGXFSZ:
        return outcome(Status.OUTPUT, f"wrote more than the {file_limit_mb} MB file-size limit (SIGXFSZ)")
    if oom:
        return outcome(
            Status.MEMORY,
            f"killed for exceeding the {memory_limit_mb} MB memory limit"
            if memory_limit_mb
            else "killed for exceeding the memory limit",
        )
    if signal == signals.SIGKILL:
        if cpu_seconds is not None and cpu_limit and cpu_seconds >= cpu_limit:
            return outcome(
                Status.TIMEOUT,
                f"CPU-time limit of {cpu_limit:g} s exceeded (SIGKILL at the hard limit)",
                dumped_line(log),
            )
        if maxrss_kb is not None and memory_limit_mb and maxrss_kb >= memory_limit_mb * 1024 // 2:
            return outcome(
                Status.MEMORY,
                f"killed by SIGKILL at {maxrss_kb // 1024} MB resident (the kernel's out-of-memory killer)",
            )
    if signal:
        return outcome(Status.CRASHED, f"killed by {_signal_name(signal)}", dumped_line(log))
    detail = _last_line(tail)
    reason = f"process exited with code {returncode} without a result"
    return outcome(Status.CRASHED, reason + (f": {detail}" if detail else ""))
