"""What runs inside an isolated process: load the candidate, check its contract, train.

Entry points: :func:`execute` (called in a child forked from the warm template, after
:func:`confine_job` has put up the walls) and ``python -m sandbox.runner JOB_DIR`` (a fresh
interpreter, e.g. inside a Docker container), which puts up the walls itself before loading
anything. The runner never computes a score: it writes raw tensors to ``result.pt``.

The walls a job gets here, in order: stdout and stderr go to ``log.txt`` in the job
directory (so the file-size limit caps what a candidate prints); when started as root, a
private SysV IPC namespace, the job directory handed to an unprivileged uid and every
privilege dropped; rlimits (open descriptors among them: a few are held back for what the
runner writes after the candidate); the seccomp filter. Before the candidate's first line runs,
faulthandler is armed so that a job killed for time (or by a fatal signal) leaves a
traceback in the log that names the candidate's line; a write beyond the file-size limit
raises ``OSError(EFBIG)`` at the candidate's line instead of killing the process silently.
"""

from __future__ import annotations

import builtins
import errno
import faulthandler
import json
import math
import os
import resource
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

CANDIDATE_FILE = "candidate.py"
#: uid (and gid) a job runs as when the sandbox starts it as root, unless the environment
#: variable UID_VARIABLE names another (the local backend gives each sandbox its own uid, so
#: that per-user limits such as RLIMIT_NPROC are not shared between workers)
SANDBOX_UID = 65534
UID_VARIABLE = "DISCOVERY_SANDBOX_UID"
#: written by the trusted side: the wall-clock time (``time.time()``) at which the job is killed
DEADLINE_FILE = "deadline"
#: seconds before the deadline at which the runner dumps the candidate's stack into the log
DUMP_MARGIN_SECONDS = 1.0
REASON_CHARS = 300
#: written by the runner when one training outlives ``Limits.training_seconds``; the process then
#: exits with TRAINING_TIMEOUT_EXIT (a candidate that writes it itself only fails itself)
TRAINING_TIMEOUT_FILE = "training_timeout.json"
TRAINING_TIMEOUT_EXIT = 124
#: open descriptors a job may hold (RLIMIT_NOFILE, soft = hard). A job starts with stdin and the
#: log on stdout/stderr, the runner holds RESERVED_DESCRIPTORS more, and the rest is the candidate's;
#: a CUDA job also opens the driver's device nodes and a few of its own, after the limit is set
MAX_OPEN_FILES = 64
MAX_OPEN_FILES_CUDA = 256
#: descriptors held back for what the runner writes after the candidate ran (result.pt, /dev/null,
#: the training-timeout note), so that a candidate that used up its own gets EMFILE at its own line
#: and still gets its result written, instead of ending as a crash without one
RESERVED_DESCRIPTORS = 3
_reserved: list[int] = []


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
    if _is_out_of_memory(exc):
        limit = f"the {memory_mb} MB memory limit" if memory_mb > 0 else "the memory limit"
        return {"status": "memory", "stage": stage, "line": line,
                "reason": one_line(f"out of memory: {limit} was reached{where(source, line)}")}
    if _is_output_limit(exc):
        return {"status": "output", "stage": stage, "line": line,
                "reason": one_line(f"wrote more than the {file_mb} MB file-size limit{where(source, line)}")}
    if isinstance(exc, RecursionError):
        reason = "recursion without end: " + reason
    return {"status": "error", "stage": stage, "reason": one_line(reason), "line": line}


class training_deadline:  # noqa: N801 - used as a context manager, like contextlib's
    """Ends the process when one training outlives ``seconds`` (0: no limit): the candidate's
    stack goes to the log, :data:`TRAINING_TIMEOUT_FILE` says which training, and the process
    exits with :data:`TRAINING_TIMEOUT_EXIT` (no exception the candidate could catch)."""

    def __init__(self, seconds: float, config: str, seed: int):
        self.seconds, self.config, self.seed = float(seconds or 0.0), config, seed

    def _expired(self, signum: int, frame: Any) -> None:
        faulthandler.dump_traceback(file=sys.stderr, all_threads=False)
        data = json.dumps({"config": self.config, "seed": self.seed, "seconds": self.seconds}).encode()
        release_descriptors()  # room for the note even when the candidate used up its descriptors
        try:
            fd = os.open(TRAINING_TIMEOUT_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, data)
            os.close(fd)
        finally:
            os._exit(TRAINING_TIMEOUT_EXIT)

    def __enter__(self) -> training_deadline:
        if self.seconds > 0:
            signal.signal(signal.SIGALRM, self._expired)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.seconds > 0:
            signal.setitimer(signal.ITIMER_REAL, 0)


def to_device(value: Any, device: str) -> Any:
    """``value`` (tensors in dicts, lists and tuples) moved onto ``device``."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def run_candidate(job: Any, inputs: dict[str, Any] | None) -> dict[str, Any]:
    """Load, check and train; return the result dict that goes to ``result.pt``."""
    from discovery.tasks import ContractError, TrainingFailed, get_task
    from discovery.tasks.base import FRESH_COPY
    from sandbox.jobfiles import input_key

    task = get_task(job.task)
    source = job.source
    stage = "parse"
    try:
        from sandbox.guard import compile_guarded

        if getattr(job, "guarded", True):  # every attribute read checked on its object (sandbox/guard.py)
            code, base = compile_guarded(source, CANDIDATE_FILE, task.slot.allowed_imports)
        else:  # only a trusted-side job may opt out (the hostile corpus tests the OS walls behind it)
            code, base = compile(source, CANDIDATE_FILE, "exec"), {"__builtins__": builtins}

        def load_slot() -> Any:
            """A fresh copy of the candidate (new module namespace, new default arguments), so that
            no state a candidate keeps can pass from one (configuration, seed) training to the next."""
            namespace: dict[str, Any] = {"__name__": "candidate", **base}
            exec(code, namespace)  # the sandbox is the wall: this process is disposable
            slot = namespace.get(task.slot.name)
            try:
                setattr(slot, FRESH_COPY, load_slot)  # tasks that train several times reload through it
            except (AttributeError, TypeError):
                pass
            return slot

        fn = load_slot()
        if not callable(fn):
            return {"status": "parse", "stage": stage, "reason": f"no function named {task.slot.name!r}"}
        stage = "contract"
        task.contract_check(fn)
        outputs: dict[str, Any] = {}
        if job.stage == "train":
            stage = "train"
            if inputs and job.device != "cpu":  # inputs travel on the CPU; the job owns one GPU
                inputs = to_device(inputs, job.device)
            suite = task.suite(job.suite)
            for config_name in job.configs:
                config = suite.config(config_name)
                for seed in job.seeds:
                    key = input_key(config_name, seed)
                    started = time.perf_counter()
                    try:
                        with training_deadline(job.limits.training_seconds, config_name, seed):
                            outputs[key] = task.train(load_slot(), config, seed, (inputs or {})[key], job.device)
                    except TrainingFailed as exc:
                        return {"status": "invalid", "stage": stage,
                                "reason": one_line(f"{config_name} seed {seed}: {exc}")}
                    outputs[key]["train_seconds"] = time.perf_counter() - started
        return {"status": "ok", "stage": stage, "reason": "", "outputs": outputs}
    except ContractError as exc:
        return {"status": "contract", "stage": stage, "reason": one_line(str(exc))}
    except SyntaxError as exc:
        reason, line = _describe(exc, source)
        return {"status": "parse", "stage": "parse", "reason": reason, "line": line}
    except BaseException as exc:  # noqa: BLE001 - candidate code may raise anything, even SystemExit
        return _failure(exc, source, stage, job.limits.memory_mb, job.limits.file_mb)


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
    from sandbox.confine import apply_rlimits, drop_privileges, install_seccomp, unshare_ipc

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
    apply_rlimits(lim.cpu_seconds + spent if lim.cpu_seconds > 0 else 0, memory, lim.file_mb, lim.max_processes,
                  max_files=max_open_files(job.device))
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


def load(job_dir: Path) -> tuple[Any, dict[str, Any] | None]:
    """The job and its trusted inputs (read before any wall goes up)."""
    import torch

    from sandbox.base import Job

    job = Job.read(job_dir)
    if job.task.endswith(".py") and not os.path.isabs(job.task):  # a user's task file, copied in
        job.task = str((job_dir / job.task).resolve())
    inputs_path = job_dir / "inputs.pt"
    inputs = torch.load(inputs_path, weights_only=True, map_location="cpu") if inputs_path.exists() else None
    return job, inputs


def _silence_output() -> None:
    """Flush what the candidate printed, then point stdout and stderr at /dev/null."""
    for stream in (sys.stdout, sys.stderr):  # a full log must not fail the result
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            pass
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


def write_result(result: dict[str, Any], job_dir: Path) -> None:
    """Write ``result`` to ``result.pt`` in ``job_dir`` (through a temporary file, then renamed)."""
    import torch

    tmp = job_dir / "result.pt.tmp"
    try:
        torch.save(result, tmp)
    except BaseException as exc:  # noqa: BLE001 - e.g. outputs that cannot be serialized
        torch.save({"status": "invalid", "stage": "train",
                    "reason": one_line(f"outputs not serializable: {exc}")}, tmp)
    os.replace(tmp, job_dir / "result.pt")


def execute_loaded(job: Any, inputs: dict[str, Any] | None, job_dir: Path = Path(".")) -> int:
    """Run ``job`` and write ``result.pt`` into ``job_dir``; returns the process exit code.

    RESERVED_DESCRIPTORS descriptors are held while the candidate runs and released only after
    it returned, so that the result is written even when the candidate used up every other one.
    """
    import torch

    torch.set_num_threads(max(1, job.limits.threads))
    _arm_diagnostics(job_dir)
    reserve_descriptors()
    result = run_candidate(job, inputs)
    faulthandler.cancel_dump_traceback_later()
    release_descriptors()
    _silence_output()
    write_result(result, job_dir)
    return 0


def execute(job_dir: Path) -> int:
    """Run the job in ``job_dir`` (walls already up) and write ``result.pt``; the exit code."""
    job, inputs = load(job_dir)
    return execute_loaded(job, inputs, job_dir)


def main(argv: list[str] | None = None) -> int:
    """``python -m sandbox.runner JOB_DIR``: confine this fresh process, then execute."""
    args = sys.argv[1:] if argv is None else argv
    job_dir = Path(args[0])
    redirect_output(job_dir)
    import torch  # noqa: F401  - load before the walls go up (imports need no extra syscalls later)

    import discovery.tasks  # noqa: F401
    import sandbox.confine  # noqa: F401
    import sandbox.jobfiles  # noqa: F401

    os.chdir(job_dir)
    job, inputs = load(Path("."))
    confine_job(Path("."), job, job_uid())
    code = execute_loaded(job, inputs)
    os._exit(code)  # no interpreter shutdown: nothing the candidate left behind runs after the result


if __name__ == "__main__":
    sys.exit(main())
