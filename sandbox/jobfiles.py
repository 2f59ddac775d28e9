"""The files a job directory holds, and how a finished job becomes an :class:`Outcome`.

``job.json`` and ``inputs.pt`` go in (written by the trusted side); ``result.pt`` and
``log.txt`` come out. ``result.pt`` is read with ``weights_only=True``: plain containers,
numbers, strings and tensors only, so nothing in it can run code on the trusted side.
"""

from __future__ import annotations

import io
import os
import signal as signals
import stat
from pathlib import Path
from typing import Any

import torch

from sandbox.base import Job, Outcome, Status

LOG_TAIL_CHARS = 2000


def write_job(job_dir: Path, job: Job, inputs: dict[str, Any] | None) -> None:
    """Write ``job.json`` and (when given) ``inputs.pt`` into ``job_dir``."""
    job.write(job_dir)
    if inputs is not None:
        torch.save(inputs, job_dir / "inputs.pt")


def input_key(config: str, seed: int) -> str:
    """The key of one (configuration, seed) in ``inputs.pt`` and ``result.pt``."""
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


def read_log_tail(job_dir: Path) -> str:
    """The last lines the candidate's process printed (bounded), for feedback only."""
    data = read_regular_file(job_dir / "log.txt", tail=LOG_TAIL_CHARS)
    return data.decode("utf-8", "replace") if data else ""


def _signal_name(sig: int) -> str:
    try:
        return signals.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def _valid_result(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and isinstance(data.get("status"), str)
        and data["status"] in {s.value for s in Status}
        and isinstance(data.get("reason", ""), str)
        and isinstance(data.get("outputs", {}), dict)
    )


def read_outcome(
    job_dir: Path,
    returncode: int | None,
    signal: int | None,
    timed_out: bool,
    oom: bool,
    seconds: float,
    wall_limit: float = 0.0,
    file_limit_mb: int = 0,
) -> Outcome:
    """Classify how the job ended; the limits the trusted side enforced take precedence."""
    tail = read_log_tail(job_dir)
    if timed_out:
        return Outcome(Status.TIMEOUT, f"wall-clock limit of {wall_limit:g} s exceeded; process group killed",
                       stderr_tail=tail, seconds=seconds)
    if signal == signals.SIGXCPU:
        return Outcome(Status.TIMEOUT, "CPU-time limit exceeded (SIGXCPU)", stderr_tail=tail, seconds=seconds)
    if signal == signals.SIGXFSZ:
        return Outcome(Status.OUTPUT, f"wrote more than the {file_limit_mb} MB file-size limit (SIGXFSZ)",
                       stderr_tail=tail, seconds=seconds)
    if oom:
        return Outcome(Status.MEMORY, "killed for exceeding the memory limit", stderr_tail=tail, seconds=seconds)
    raw = read_regular_file(job_dir / "result.pt")
    data: Any = None
    if raw is not None:
        try:
            data = torch.load(io.BytesIO(raw), weights_only=True)
        except Exception as exc:  # a forged or torn file is a crash, never trusted
            return Outcome(Status.CRASHED, f"unreadable result file ({type(exc).__name__})",
                           stderr_tail=tail, seconds=seconds)
    if data is not None and _valid_result(data) and returncode == 0:
        line = data.get("line", -1)
        return Outcome(
            Status(data["status"]),
            data.get("reason", ""),
            stage=str(data.get("stage", "")),
            outputs=data.get("outputs", {}),
            stderr_tail=tail,
            seconds=seconds,
            line=line if isinstance(line, int) and line > 0 else None,
        )
    if signal:
        return Outcome(Status.CRASHED, f"killed by {_signal_name(signal)}", stderr_tail=tail, seconds=seconds)
    detail = _last_line(tail)
    reason = f"process exited with code {returncode} without a result"
    return Outcome(Status.CRASHED, reason + (f": {detail}" if detail else ""), stderr_tail=tail, seconds=seconds)
