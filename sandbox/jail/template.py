"""The warm template: a process that has imported torch and the function server, and forks one child per session.

Protocol (JSON lines): the trusted side writes ``{"op": "run", "id": ..., "job_dir": ...}``
or ``{"op": "kill", "id": ...}`` on stdin; the template answers ``{"event": "started", ...}``
and ``{"event": "exited", "id", "returncode", "signal", "cpu_seconds", "maxrss_kb"}`` on stdout.
With ``--fifos IN OUT`` after the environment (the Docker backend: attaching to a container's
stdin is fiddly), the requests come from the FIFO ``IN`` and the events go to the FIFO ``OUT``
instead; the trusted side holds both open already, so opening them does not block.

The template imports torch and the function server and runs one tiny single-threaded call
(no parallel work: forking after torch has run a thread pool can hang the child); it never
sees a task, a model or data: it serves only jailed slot functions
(:mod:`sandbox.jail.function_server`). Each child, before any candidate code runs, starts
its own session, points stdout/stderr at a log file in its scratch directory, closes every
other inherited descriptor, replaces the environment and puts up the walls of
:func:`sandbox.jail.runner.confine_job` (as root: private IPC namespace and an unprivileged uid;
rlimits; a seccomp filter that refuses fork/exec/sockets). The template itself is made
non-dumpable, so a job cannot open its memory or descriptors under /proc.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
from typing import Any

#: the descriptors of the request stream and the event stream (stdin and stdout unless ``--fifos``)
_requests = 0
_events = 1


def _emit(message: dict[str, Any]) -> None:
    os.write(_events, (json.dumps(message) + "\n").encode())


def _child(job_dir: str, env: dict[str, str], uid: int) -> None:
    """In the forked child: put up the walls, run the job, never return."""
    code = 70
    try:
        signal.set_wakeup_fd(-1)  # the template's wake-up pipe and SIGCHLD handler are not the child's
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        log = os.open(os.path.join(job_dir, "log.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.closerange(3, 1 << 16)  # nothing of the template's (its pipes to the trusted side) stays open
        os.chdir(job_dir)
        os.environ.clear()
        os.environ.update(env)
        os.environ["HOME"] = job_dir
        os.environ["TMPDIR"] = job_dir
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        from pathlib import Path

        from sandbox.jail.function_server import run_session

        code = run_session(Path("."), uid)  # reached through the cwd: the job user may not search the parents
    except BaseException:  # noqa: BLE001 - report on the log, never fall back into the template loop
        try:
            import traceback

            traceback.print_exc()
        finally:
            code = 71
    finally:
        os._exit(code)


def serve(env: dict[str, str], uid: int) -> None:
    """Read job requests (stdin) until they end; fork a child per job; report exits."""
    running: dict[int, str] = {}  # pid -> job id
    buffer = b""
    stdin_open = True
    # a child's exit wakes the loop at once (SIGCHLD through a wake-up pipe), instead of at its next poll
    wake_read, wake_write = os.pipe()
    for fd in (wake_read, wake_write):
        os.set_blocking(fd, False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.set_wakeup_fd(wake_write)
    while stdin_open or running:
        readable, _, _ = select.select([_requests, wake_read] if stdin_open else [wake_read], [], [], 0.5)
        if wake_read in readable:
            try:
                while os.read(wake_read, 4096):
                    pass
            except BlockingIOError:
                pass
        if _requests in readable:
            chunk = os.read(_requests, 65536)
            if not chunk:
                stdin_open = False
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                if request["op"] == "run":
                    pid = os.fork()
                    if pid == 0:
                        _child(request["job_dir"], env, uid)
                    running[pid] = request["id"]
                    _emit({"event": "started", "id": request["id"], "pid": pid})
                elif request["op"] == "kill":
                    for pid, job_id in running.items():
                        if job_id == request["id"]:
                            try:
                                os.killpg(pid, signal.SIGKILL)
                            except ProcessLookupError:
                                pass
        while running:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid not in running:
                continue
            job_id = running.pop(pid)
            try:  # anything the child left behind in its group dies with it
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            _emit(
                {
                    "event": "exited",
                    "id": job_id,
                    "returncode": os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else None,
                    "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                    "cpu_seconds": usage.ru_utime + usage.ru_stime,
                    "maxrss_kb": usage.ru_maxrss,
                }
            )


def main() -> None:
    """Preload, report readiness, serve."""
    global _requests, _events
    env = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    if sys.argv[2:3] == ["--fifos"] and len(sys.argv) >= 5:
        _requests = os.open(sys.argv[3], os.O_RDONLY)
        _events = os.open(sys.argv[4], os.O_WRONLY)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the agent's; it stops us by closing stdin
    import torch

    torch.set_num_threads(1)  # no intra-op thread pool exists before fork; each child sets its own
    import torch.nn.functional  # noqa: F401

    import sandbox.jail.confine  # noqa: F401
    import sandbox.jail.function_server
    import sandbox.jail.runner  # noqa: F401
    import sandbox.wire  # noqa: F401

    sandbox.jail.function_server.warmup()  # lazy imports, first calls, the guard's allow-list tables

    network_note = ""
    if os.environ.get("DISCOVERY_SANDBOX_NETNS") == "self":
        from sandbox.jail.confine import enter_network_namespace

        network_note = enter_network_namespace()
    from sandbox.jail.confine import set_dumpable

    set_dumpable(False)
    _emit({"event": "ready", "pid": os.getpid(), "network": network_note})
    from sandbox.jail.runner import job_uid

    serve(env, job_uid())


if __name__ == "__main__":
    main()
