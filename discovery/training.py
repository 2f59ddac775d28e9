"""One candidate's trainings, run on the trusted side against its jailed slot function.

:func:`run_job` does what a job asks: the task's contract check, then one training per
(configuration, seed). Each of them gets a fresh jailed function server (a child of the
sandbox's warm template, :meth:`Sandbox.session`) and a proxy of the slot
(:mod:`discovery.slots`); the task's own ``contract_check`` and ``train`` run here, in this
process, with the model, data and optimizer that never leave it. What comes back from the jail
is validated data; raw outputs (weights, curves) are the trainer's own and go to scoring.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

from discovery.slots import jailed_slot
from discovery.tasks import ContractError, Suite, Task, TrainingFailed, get_task
from sandbox.base import Job, Outcome, Sandbox, Status
from sandbox.host.jobfiles import input_key
from sandbox.host.session import JailEnded
from sandbox.text import one_line
from sandbox.wire import JailSpec

#: seconds the contract check's session may take at most (it calls the function a few times)
CONTRACT_SECONDS = 60.0


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


def jail_spec(job: Job, task: Task) -> JailSpec:
    """What the jail is told of ``job``: the source and the slot, nothing about the task's data."""
    return JailSpec(
        source=job.source,
        slot=task.slot.name,
        kind=task.slot.kind,
        allowed_imports=tuple(task.slot.allowed_imports),
        limits=job.limits,
        guarded=job.guarded,
    )


def _session_limits(job: Job, seconds: float) -> Any:
    """A session's limits: CPU time for its own wall-clock time, at the job's threads."""
    cpu = max(1, int(seconds * max(1, job.limits.threads)) + 10)
    return replace(job.limits, wall_seconds=seconds, cpu_seconds=min(job.limits.cpu_seconds or cpu, cpu))


def _ended(outcome: Outcome, stage: str, prefix: str = "") -> Outcome:
    if not outcome.stage or outcome.stage == "call":
        outcome.stage = stage
    if prefix:
        outcome.reason = one_line(f"{prefix}: {outcome.reason}")
    return outcome


def _training_reason(outcome: Outcome, named: str, limit: str) -> Outcome:
    """The outcome of a training that ended the job, its reason naming the training(s) (and, for a
    timeout, which limit it hit: ``limit`` says it in words)."""
    if outcome.status is Status.TIMEOUT and "wall-clock limit" in outcome.reason:
        reason = f"{named}: {limit}; process killed"
        return replace(outcome, reason=one_line(reason + outcome.reason.split("killed", 1)[1]), stage="train")
    return _ended(outcome, "train", named)


#: ``trainer_path`` of a training run alone (the batched ones say ``batched-vmap xS`` or ``batched-loop xS``)
SEQUENTIAL = "sequential"


def training_units(task: Task, suite: Suite, job: Job) -> list[list[tuple[str, int]]]:
    """The job's (configuration, seed) cells in the order they train: each unit is one training, or
    (``job.batched`` and a task that batches) the cells whose configurations share a ``batch_key``."""
    cells = [(c, s) for c in job.configs for s in job.seeds]
    if not job.batched:
        return [[cell] for cell in cells]
    units: dict[Any, list[tuple[str, int]]] = {}
    for config_name, seed in cells:
        key = task.batch_key(suite.config(config_name))
        units.setdefault(("alone", config_name, seed) if key is None else ("batch", key), []).append(
            (config_name, seed)
        )
    return list(units.values())


def _unit_name(unit: list[tuple[str, int]]) -> str:
    """``clean seed 0``, or for a batch ``clean seeds 0,1,2 + noise20 seeds 0,1,2``."""
    if len(unit) == 1:
        return f"{unit[0][0]} seed {unit[0][1]}"
    by_config: dict[str, list[int]] = {}
    for config_name, seed in unit:
        by_config.setdefault(config_name, []).append(seed)
    return " + ".join(f"{c} seeds {','.join(map(str, seeds))}" for c, seeds in by_config.items())


def run_job(
    box: Sandbox,
    job: Job,
    inputs: dict[str, Any] | None = None,
    task: Task | None = None,
    device: str = "cpu",
    call_seconds: float = 0.0,
    suite: Suite | None = None,
) -> Outcome:
    """Check the candidate's contract and (for ``stage="train"``) train it on every (configuration,
    seed) of ``job``: the trainer here, the candidate's function in ``box``. Never raises for a
    bad candidate: its outcome says what went wrong, on one line. ``inputs`` maps
    ``input_key(config, seed)`` to the task's trusted training inputs; ``device`` is where the
    trainer (not the jail) computes; ``call_seconds`` bounds a single call of the slot; ``suite``
    is the (possibly salted) suite the job's configurations come from (default: the task's own)."""
    task = task or get_task(job.task)
    spec = jail_spec(job, task)
    started = time.monotonic()
    contract_seconds = min(job.limits.wall_seconds or CONTRACT_SECONDS, CONTRACT_SECONDS)
    stage = "contract"
    try:
        with box.session(replace(spec, limits=_session_limits(job, contract_seconds)), contract_seconds) as session:
            task.contract_check(jailed_slot(task.slot.kind, session, call_seconds))
    except JailEnded as ended:
        return _ended(ended.outcome, "parse" if ended.outcome.status is Status.PARSE else stage)
    except (ContractError, TrainingFailed) as exc:
        return Outcome(Status.INVALID, one_line(str(exc)), stage=stage, seconds=time.monotonic() - started)
    outputs: dict[str, Any] = {}
    tail = ""
    if job.stage == "train":
        suite = suite or task.suite(job.suite)
        job_deadline = started + job.limits.wall_seconds if job.limits.wall_seconds > 0 else math.inf
        training = job.limits.training_seconds or math.inf
        for unit in training_units(task, suite, job):
            t0 = time.monotonic()
            seconds = min(training * len(unit), job_deadline - t0)
            limit = (
                f"training exceeded the per-training limit of {training:g} s"
                + (f" ({len(unit)} trainings batched)" if len(unit) > 1 else "")
                if seconds == training * len(unit)
                else f"wall-clock limit of {job.limits.wall_seconds:g} s exceeded"
            )
            named = _unit_name(unit)
            if seconds <= 0:
                return Outcome(Status.TIMEOUT, one_line(f"{named}: {limit}"), stage="train", seconds=t0 - started)
            try:
                with box.session(replace(spec, limits=_session_limits(job, seconds)), seconds) as session:
                    unit_inputs = [(inputs or {})[input_key(c, s)] for c, s in unit]
                    if device != "cpu":  # inputs are prepared on the CPU; the trainer owns a GPU
                        unit_inputs = [to_device(i, device) for i in unit_inputs]
                    if len(unit) == 1:
                        (config_name, seed), train_inputs = unit[0], unit_inputs[0]
                        fn = jailed_slot(task.slot.kind, session, call_seconds)
                        results = [task.train(fn, suite.config(config_name), seed, train_inputs, device)]
                        path = SEQUENTIAL
                    else:
                        fn = jailed_slot(task.slot.kind, session, call_seconds, batch=len(unit))
                        items = [(suite.config(c), s, i) for (c, s), i in zip(unit, unit_inputs, strict=True)]
                        results = task.train_batch(fn, items, device)
                        path = f"batched-{fn.mode} x{len(unit)}"
                        if fn.fallback:
                            path += f" ({fn.fallback})"
                tail = session.outcome.stderr_tail if session.outcome else tail
            except JailEnded as ended:
                return _training_reason(ended.outcome, named, limit)
            except TrainingFailed as exc:
                where = _unit_name([unit[exc.index]]) if exc.index is not None and len(unit) > 1 else named
                return Outcome(
                    Status.INVALID, one_line(f"{where}: {exc}"), stage="train", seconds=time.monotonic() - started
                )
            except Exception as exc:  # noqa: BLE001 - the trainer choked on what the jail returned
                return Outcome(
                    Status.INVALID,
                    one_line(f"{named}: training failed on the candidate's values ({type(exc).__name__}: {exc})"),
                    stage="train",
                    seconds=time.monotonic() - started,
                )
            elapsed = (time.monotonic() - t0) / len(unit)
            for (config_name, seed), result in zip(unit, results, strict=True):
                key = input_key(config_name, seed)
                outputs[key] = result
                result["train_seconds"] = elapsed
                result["trainer_path"] = path
    return Outcome(Status.OK, stage=job.stage, outputs=outputs, seconds=time.monotonic() - started, stderr_tail=tail)
