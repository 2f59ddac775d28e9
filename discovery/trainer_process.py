"""A trusted trainer process of its own for one worker, so that workers train in parallel.

The task's trainer is Python driving small torch ops; two workers' trainers in one process take
turns on its interpreter lock, and a second worker then adds almost nothing. A
:class:`TrainerProcess` stands in the pool for one worker's sandbox: it starts a child process
(a fresh interpreter, so no state of the agent's is forked into it) that owns the real sandbox (its warm
template) and runs :func:`discovery.training.run_job` there, returning the job's
:class:`~sandbox.base.Outcome` (raw outputs included) to the agent, which scores it. The child is
as trusted as the agent: no candidate code runs in it; the candidate's function stays jailed
in the child's sandbox. The child ignores Ctrl-C (the agent decides when to stop); an abort
kills it, and its sandbox's template goes with it (bubblewrap dies with its parent).
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from sandbox.base import Job, Outcome, Sandbox, Status

#: seconds the child may take to start (imports torch and the tasks, starts its sandbox's template)
START_SECONDS = 300


def _send(conn: Connection, value: Any) -> None:
    """Pickle by value (torch's multiprocessing pickler would share storages by descriptor instead)."""
    conn.send_bytes(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def _receive(conn: Connection) -> Any:
    return pickle.loads(conn.recv_bytes())  # noqa: S301 - between the agent and its own trusted child


def _run(box: Sandbox, job: Job, inputs: dict[str, Any] | None, task_ref: str, run_device: str, suite: Any) -> Outcome:
    """In the child: the job trained here, the candidate jailed in this process's sandbox."""
    from discovery.devices import trainer_device
    from discovery.tasks import get_task
    from discovery.training import run_job
    from sandbox.host.pool import visible_gpus

    gpu = getattr(box, "gpu", None)
    device = trainer_device(run_device, gpu, visible_gpus() if gpu is not None else [])
    return run_job(box, job, inputs, get_task(task_ref), device, suite=suite)


def _evaluate(box: Sandbox, job: Job, inputs: dict[str, Any] | None, task_ref: str, run_device: str, suite: Any) -> Any:
    """In the child: ``job`` trained as in :func:`_run`, then scored here (an EvaluationReport), so that
    workers score in parallel and the trained weights never travel back to the agent."""
    from discovery.devices import trusted_device
    from discovery.evaluation import score_outcome
    from discovery.tasks import get_task

    outcome = _run(box, job, inputs, task_ref, run_device, suite)
    device = trusted_device(run_device)
    return score_outcome(get_task(task_ref), device, outcome, suite, list(job.configs), list(job.seeds), inputs or {})


def _die_with_parent(parent: int) -> None:
    """Be killed when the agent dies, even by SIGKILL (Linux's PR_SET_PDEATHSIG): an orphaned trainer
    must not keep its sandbox running after a killed run."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the agent died before the request took effect
        os._exit(1)


def serve(requests: Connection, replies: Connection, gpu: str | None, threads: int, parent: int) -> None:
    """The child's loop: ("run", args) -> ("ok", Outcome), ("evaluate", args) -> ("ok", EvaluationReport),
    or ("error", exception) for either; ("close",) ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent decides when to stop; an abort kills us
    _die_with_parent(parent)
    import torch

    torch.set_num_threads(1)
    from sandbox.host.local import LocalSandbox

    box = LocalSandbox(threads=threads, gpu=gpu)
    _send(replies, ("ok", list(box.isolation_notes)))
    try:
        while True:
            try:
                request = _receive(requests)
            except EOFError:
                return
            if request[0] == "close":
                return
            try:
                work = _evaluate if request[0] == "evaluate" else _run
                _send(replies, ("ok", work(box, *request[1])))
            except Exception as exc:  # noqa: BLE001 - an internal error of the trainer: the agent reports it
                try:
                    _send(replies, ("error", exc))
                except Exception:  # noqa: BLE001 - an exception that does not pickle
                    _send(replies, ("error", RuntimeError(f"{type(exc).__name__}: {exc}")))
    finally:
        box.close()


class TrainerProcess(Sandbox):
    """One worker: a trusted child process with its own local sandbox, running whole jobs."""

    name = "local"

    def __init__(self, gpu: str | None = None, threads: int | None = None):
        self.gpu, self.threads = gpu, threads
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        notes = self._start()
        self.isolation_notes = [*notes, "trainer: a trusted process of its own per worker"]

    def _start(self) -> list[str]:
        to_child, from_parent = os.pipe()
        to_parent, from_child = os.pipe()
        cmd = [
            sys.executable,
            "-m",
            "discovery.trainer_process",
            str(to_child),
            str(from_child),
            self.gpu or "",
            str(self.threads or 1),
            str(os.getpid()),
        ]
        self._proc = subprocess.Popen(cmd, pass_fds=(to_child, from_child), stdin=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self._requests, self._replies = Connection(from_parent), Connection(to_parent)
        if not self._replies.poll(START_SECONDS):
            self.kill()
            raise RuntimeError("the worker's trainer process did not start")
        status, notes = _receive(self._replies)
        return list(notes)

    def session(self, spec: Any, seconds: float, max_payload: int = 1 << 28) -> Any:
        raise NotImplementedError("a TrainerProcess runs whole jobs (run_job), not single sessions")

    def run_job(
        self, job: Job, inputs: dict[str, Any] | None, task_ref: str, run_device: str, suite: Any = None
    ) -> Outcome:
        """``job`` trained in the child (on its worker's device for ``run_device``); its outcome."""
        died = Outcome(Status.CRASHED, "the worker's trusted trainer process died during the job", stage="train")
        return self._request("run", (job, inputs, task_ref, run_device, suite), died)

    def evaluate_job(self, job: Job, inputs: dict[str, Any] | None, task_ref: str, run_device: str, suite: Any) -> Any:
        """``job`` trained and scored in the child: its EvaluationReport (for the agent's Evaluator)."""
        from discovery.evaluation import score_outcome
        from discovery.tasks import get_task

        died = Outcome(Status.CRASHED, "the worker's trusted trainer process died during the job", stage="train")
        report = self._request("evaluate", (job, inputs, task_ref, run_device, suite), None)
        if report is None:  # scored here, as a crash: no outputs
            return score_outcome(get_task(task_ref), "cpu", died, suite, list(job.configs), list(job.seeds), {})
        return report

    def _request(self, kind: str, args: tuple[Any, ...], died: Any) -> Any:
        """One request to the child and its reply; ``died`` when the child dies on the way."""
        with self._lock:
            try:
                if self._proc is None or self._proc.poll() is not None:
                    self._start()
                _send(self._requests, (kind, args))
                status, value = _receive(self._replies)
            except (EOFError, OSError):
                self.kill()
                return died
        if status == "error":
            raise value
        return value

    def kill(self) -> None:
        """Kill the child now (an abort); its sandbox's template dies with it (bubblewrap's --die-with-parent)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)

    def close(self) -> None:
        """Stop the child's sandbox, then the child."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                _send(self._requests, ("close",))
                proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


def main(argv: list[str] | None = None) -> None:
    """``python -m discovery.trainer_process REQUESTS_FD REPLIES_FD GPU THREADS PARENT_PID`` (started by
    TrainerProcess)."""
    args = sys.argv[1:] if argv is None else argv
    serve(Connection(int(args[0])), Connection(int(args[1])), args[2] or None, int(args[3]), int(args[4]))


if __name__ == "__main__":
    main()
