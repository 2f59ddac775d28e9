"""What runs inside an isolated process: load the candidate, check its contract, train.

Entry points: :func:`execute` (called in a child forked from the warm template, after the
walls are up) and ``python -m sandbox.runner JOB_DIR`` (a fresh interpreter, e.g. inside a
Docker container), which puts up the in-process walls itself before loading anything.
The runner never computes a score: it writes raw tensors to ``result.pt``.
"""

from __future__ import annotations

import builtins
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

CANDIDATE_FILE = "candidate.py"


def _candidate_line(exc: BaseException, source: str) -> tuple[int, str]:
    """The last traceback line inside the candidate's own code, and its text."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == CANDIDATE_FILE]
    if isinstance(exc, SyntaxError) and exc.filename == CANDIDATE_FILE and exc.lineno:
        lineno = exc.lineno
    elif frames:
        lineno = frames[-1].lineno or 0
    else:
        return -1, ""
    lines = source.splitlines()
    text = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
    return lineno, text


def _describe(exc: BaseException, source: str) -> tuple[str, int]:
    lineno, text = _candidate_line(exc, source)
    message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    reason = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    if lineno > 0:
        reason += f" (line {lineno}: `{text[:120]}`)"
    return reason, lineno


def _status_for(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return "memory"
    return "error"


def run_candidate(job: Any, inputs: dict[str, Any] | None) -> dict[str, Any]:
    """Load, check and train; return the result dict that goes to ``result.pt``."""
    from discovery.tasks import ContractError, TrainingFailed, get_task
    from sandbox.jobfiles import input_key

    task = get_task(job.task)
    source = job.source
    stage = "parse"
    try:
        code = compile(source, CANDIDATE_FILE, "exec")
        namespace: dict[str, Any] = {"__name__": "candidate", "__builtins__": builtins}
        exec(code, namespace)  # the sandbox is the wall: this process is disposable
        fn = namespace.get(task.slot.name)
        if not callable(fn):
            return {"status": "parse", "stage": stage, "reason": f"no function named {task.slot.name!r}"}
        stage = "contract"
        task.contract_check(fn)
        outputs: dict[str, Any] = {}
        if job.stage == "train":
            stage = "train"
            suite = task.suite(job.suite)
            for config_name in job.configs:
                config = suite.config(config_name)
                for seed in job.seeds:
                    key = input_key(config_name, seed)
                    started = time.perf_counter()
                    try:
                        outputs[key] = task.train(fn, config, seed, (inputs or {})[key], job.device)
                    except TrainingFailed as exc:
                        return {"status": "invalid", "stage": stage, "reason": f"{config_name} seed {seed}: {exc}"}
                    outputs[key]["train_seconds"] = time.perf_counter() - started
        return {"status": "ok", "stage": stage, "reason": "", "outputs": outputs}
    except ContractError as exc:
        return {"status": "contract", "stage": stage, "reason": str(exc)}
    except SyntaxError as exc:
        reason, line = _describe(exc, source)
        return {"status": "parse", "stage": "parse", "reason": reason, "line": line}
    except RecursionError as exc:
        reason, line = _describe(exc, source)
        return {"status": "error", "stage": stage, "reason": "recursion without end: " + reason, "line": line}
    except BaseException as exc:  # noqa: BLE001 - candidate code may raise anything, even SystemExit
        reason, line = _describe(exc, source)
        return {"status": _status_for(exc), "stage": stage, "reason": reason, "line": line}


def execute(job_dir: Path) -> int:
    """Run the job in ``job_dir`` and write ``result.pt``; returns the process exit code."""
    import torch

    from sandbox.base import Job

    job = Job.read(job_dir)
    torch.set_num_threads(max(1, job.limits.threads))
    inputs_path = job_dir / "inputs.pt"
    inputs = torch.load(inputs_path, weights_only=True) if inputs_path.exists() else None
    result = run_candidate(job, inputs)
    tmp = job_dir / "result.pt.tmp"
    try:
        torch.save(result, tmp)
    except BaseException as exc:  # noqa: BLE001 - e.g. outputs that cannot be serialized
        torch.save({"status": "invalid", "stage": "train", "reason": f"outputs not serializable: {exc}"}, tmp)
    os.replace(tmp, job_dir / "result.pt")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m sandbox.runner JOB_DIR``: confine this fresh process, then execute."""
    args = sys.argv[1:] if argv is None else argv
    job_dir = Path(args[0])
    from sandbox.base import Job
    from sandbox.confine import apply_rlimits, install_seccomp

    job = Job.read(job_dir)
    import torch  # noqa: F401  - load before the walls go up (imports need no extra syscalls later)

    import discovery.tasks  # noqa: F401

    os.chdir(job_dir)
    lim = job.limits
    apply_rlimits(lim.cpu_seconds, 0 if job.device.startswith("cuda") else lim.memory_mb, lim.file_mb,
                  lim.max_processes)
    install_seccomp(deny_network=True)
    return execute(job_dir)


if __name__ == "__main__":
    sys.exit(main())
