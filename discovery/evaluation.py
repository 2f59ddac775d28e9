"""Trusted orchestration of one candidate's evaluation: policy, sandboxed training, scoring.

The flow is: static policy (no code runs) -> the contract check and one training per
(configuration, seed), each run here by the task's trainer against the candidate's function
jailed in a fresh sandboxed process (``discovery.training``) -> scoring of the raw outputs,
here too -> aggregation with confidence intervals over seeds.
"""

from __future__ import annotations

import ast
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from discovery.devices import trainer_device, trusted_device
from discovery.stats import Estimate, mean_ci
from discovery.tasks import SeedMetrics, Suite, Task
from discovery.training import run_job
from sandbox.base import Job, Limits, Outcome, Sandbox, Status
from sandbox.host.jobfiles import input_key
from sandbox.static.policy import Policy, check_source

#: wall-clock seconds a job gets beyond its trainings: start, imports, the contract check
JOB_OVERHEAD_SECONDS = 60
#: points one training curve (``curve_<name>``) may have: curves are digests, not data
MAX_CURVE_ELEMENTS = 100_000


def _tensors(value: Any) -> Iterator[tuple[str, Any]]:
    """(key path, tensor) of every tensor in nested dicts, lists and tuples."""
    import torch

    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, torch.Tensor):
            yield path, item
        elif isinstance(item, dict):
            stack.extend((f"{path}/{k}" if path else str(k), v) for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(item))


def output_problem(raw: dict[str, Any], max_elements: int) -> str:
    """Why a training's raw outputs are not what an honest trainer returns (bounded size, bounded
    curves, a sane train time), or "". Checked before any scoring work is spent on them."""
    seconds = raw.get("train_seconds")
    if seconds is not None and (not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0):
        return f"train_seconds {seconds!r} is not a non-negative number"
    total = 0
    for path, tensor in _tensors(raw):
        total += tensor.numel()
        if path.startswith("curve_") and tensor.numel() > MAX_CURVE_ELEMENTS:
            return f"{path} has {tensor.numel()} points (at most {MAX_CURVE_ELEMENTS})"
        if total > max_elements:
            return f"outputs hold more than {max_elements} tensor elements"
    return ""


def _positional_params(fn: ast.FunctionDef) -> list[str]:
    return [a.arg for a in fn.args.posonlyargs + fn.args.args]


def signature_problem(source: str, slot_name: str, signature: str) -> tuple[int, str] | None:
    """(line, reason) when the slot function's parameters differ from the pinned signature."""
    expected_fn = ast.parse(signature.split("->")[0].rstrip() + ":\n    pass").body[0]
    assert isinstance(expected_fn, ast.FunctionDef)
    expected = _positional_params(expected_fn)
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == slot_name:
            got = _positional_params(node)
            required_kwonly = [
                a.arg for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True) if d is None
            ]
            if len(got) != len(expected) or required_kwonly:
                return node.lineno, (
                    f"{slot_name} must take {len(expected)} arguments "
                    f"({', '.join(expected)}), it takes {len(got)} ({', '.join(got)})"
                    + (f" and requires {', '.join(required_kwonly)}" if required_kwonly else "")
                )
            return None
    return 1, f"no top-level function named {slot_name!r}"


@dataclass
class ConfigResult:
    """One configuration: fitness and metrics over seeds."""

    name: str
    fitness: Estimate
    metrics: dict[str, Estimate]
    seeds: list[SeedMetrics]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.name,
            "fitness": self.fitness.as_dict(),
            "metrics": {k: v.as_dict() for k, v in self.metrics.items()},
            "per_seed": [{"seed": s.seed, "fitness": s.fitness, **s.metrics} for s in self.seeds],
            "seconds": self.seconds,
        }


@dataclass
class EvaluationReport:
    """Everything one evaluation established about a candidate on one suite."""

    task: str
    suite: str
    status: Status
    stage: str = ""
    reason: str = ""
    line: int | None = None
    error_class: str = ""  # the exception's class, when the candidate raised one
    message: str = ""  # the exception's own message
    fitness: Estimate | None = None
    configs: list[ConfigResult] = field(default_factory=list)
    seconds: float = 0.0
    log_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def one_line(self) -> str:
        """``ok: fitness ...`` or ``<status> at <stage>: <reason>``."""
        if self.ok and self.fitness is not None:
            return f"ok: fitness {self.fitness}"
        where = f" at {self.stage}" if self.stage else ""
        return f"{self.status.value}{where}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "suite": self.suite,
            "status": self.status.value,
            "stage": self.stage,
            "reason": self.reason,
            "line": self.line,
            "error_class": self.error_class,
            "message": self.message,
            "fitness": self.fitness.as_dict() if self.fitness else None,
            "configs": [c.to_dict() for c in self.configs],
            "seconds": self.seconds,
        }


def aggregate(suite: Suite, per_seed: list[SeedMetrics]) -> tuple[Estimate, list[ConfigResult]]:
    """Per-configuration estimates, and the overall fitness: mean over configurations,
    with its interval over seeds (each seed's configurations averaged first)."""
    configs: list[ConfigResult] = []
    for cfg in suite.configs:
        rows = [m for m in per_seed if m.config == cfg.name]
        if not rows:
            continue
        keys = sorted({k for r in rows for k in r.metrics})
        configs.append(
            ConfigResult(
                name=cfg.name,
                fitness=mean_ci([r.fitness for r in rows]),
                metrics={k: mean_ci([r.metrics[k] for r in rows if k in r.metrics]) for k in keys},
                seeds=rows,
                seconds=sum(r.seconds for r in rows),
            )
        )
    seeds = sorted({m.seed for m in per_seed})
    weights = {cfg.name: cfg.weight for cfg in suite.configs}
    per_seed_overall = []
    for seed in seeds:
        rows = [m for m in per_seed if m.seed == seed]
        total = sum(weights[m.config] for m in rows)
        per_seed_overall.append(sum(weights[m.config] * m.fitness for m in rows) / total)
    return mean_ci(per_seed_overall), configs


def score_outcome(
    task: Task,
    device: str,
    outcome: Outcome,
    suite: Suite,
    configs: list[str],
    seeds: list[int],
    inputs: dict[str, Any],
) -> EvaluationReport:
    """Trusted: a job's ``outcome`` scored on ``device`` into the report of its (configuration, seed)
    cells; outputs that are missing, too large or unscorable make the candidate INVALID, never an
    error here. Runs in the agent, or in a worker's trusted trainer process (workers score in parallel)."""
    report = EvaluationReport(
        task=task.name,
        suite=suite.name,
        status=outcome.status,
        stage=outcome.stage,
        reason=outcome.reason,
        line=outcome.line,
        error_class=outcome.error_class,
        message=outcome.message,
        log_tail=outcome.stderr_tail,
    )
    if not outcome.ok:
        if not report.stage:
            report.stage = "train"
        return report
    per_seed: list[SeedMetrics] = []
    for config in configs:
        for seed in seeds:
            key = input_key(config, seed)
            raw = outcome.outputs.get(key)
            if not isinstance(raw, dict):
                report.status, report.stage = Status.INVALID, "train"
                report.reason = f"no outputs for {config} seed {seed}"
                return report
            problem = output_problem(raw, task.max_output_elements)
            if problem:
                report.status, report.stage = Status.INVALID, "train"
                report.reason = f"{config} seed {seed}: unusable outputs: {problem}"[:300]
                return report
            t0 = time.monotonic()
            try:
                metrics = task.score(suite.config(config), seed, inputs[key], raw, device)
            except Exception as exc:  # outputs are untrusted data: any failure is the candidate's
                report.status, report.stage = Status.INVALID, "score"
                report.reason = f"{config} seed {seed}: unusable outputs ({type(exc).__name__}: {exc})"[:300]
                return report
            train_seconds = raw.get("train_seconds")
            metrics.seconds = (float(train_seconds) if train_seconds is not None else 0.0) + (time.monotonic() - t0)
            path = raw.get("trainer_path")
            metrics.path = path[:300] if isinstance(path, str) else ""
            per_seed.append(metrics)
    report.fitness, report.configs = aggregate(suite, per_seed)
    return report


class Evaluator:
    """Evaluates candidate sources of one task through a sandbox; scores on the trusted side."""

    def __init__(
        self,
        task: Task,
        device: str = "cpu",
        limits: Limits | None = None,
        job_seconds: float | None = None,
        cpu_seconds: int | None = None,
        heldout_secret: str = "",
        batched: bool = True,
    ):
        """``device``: resolved (``cpu``, ``cuda``, ``cuda:N``; see :mod:`discovery.devices`).
        ``limits``: per job; its ``training_seconds`` defaults to the task's. ``job_seconds``: the
        wall of a whole job, else JOB_OVERHEAD_SECONDS + training_seconds per training;
        ``cpu_seconds``: a job's CPU time, else its wall times its threads. ``heldout_secret``: mixed
        into the held-out suite's environment seeds (the archive's own, :meth:`Archive.heldout_secret`),
        so that its environments cannot be rebuilt from the public code and seeds; "" leaves them public.
        ``batched``: train the cells a task batches as one vectorised training each (``Job.batched``)."""
        import torch

        # trusted scoring is small; one thread keeps the cores for the sandboxed trainings
        torch.set_num_threads(1)
        self.task = task
        self.device = device
        self.trusted_device = trusted_device(device)
        limits = limits or Limits()
        if not limits.training_seconds:
            limits = replace(limits, training_seconds=task.training_seconds)
        self.limits = limits
        self.job_seconds = job_seconds
        self.cpu_seconds = cpu_seconds
        self.heldout_secret = heldout_secret
        self.batched = batched
        self.policy = Policy(allowed_imports=task.slot.allowed_imports, slot_name=task.slot.name)
        self._inputs: dict[tuple[str, str, int], dict[str, Any]] = {}
        self._inputs_lock = threading.Lock()
        self._input_locks: dict[tuple[str, str, int], threading.Lock] = {}

    def static_check(self, source: str) -> EvaluationReport | None:
        """A report (status policy, parse or contract) when the source is rejected before running."""
        violations = check_source(source, self.policy)
        if not violations:
            problem = signature_problem(source, self.task.slot.name, self.task.slot.signature)
            if problem is None:
                return None
            line, reason = problem
            return EvaluationReport(
                task=self.task.name, suite="", status=Status.INVALID, stage="contract", reason=reason, line=line
            )
        first = violations[0]
        more = f" (+{len(violations) - 1} more)" if len(violations) > 1 else ""
        syntax = first.reason.startswith("syntax error")
        return EvaluationReport(
            task=self.task.name,
            suite="",
            status=Status.PARSE if syntax else Status.POLICY,
            stage="parse" if syntax else "policy",
            reason=first.one_line() + more,
            line=first.line,
        )

    def inputs_for(self, suite: Suite, config: str, seed: int) -> dict[str, Any]:
        """Trusted training inputs for one (configuration, seed), built once and cached."""
        key = (suite.name, config, seed)
        with self._inputs_lock:
            if key in self._inputs:
                return self._inputs[key]
            lock = self._input_locks.setdefault(key, threading.Lock())
        # one lock per cell: two workers build different cells at once (torch ops release the GIL)
        with lock:
            if key not in self._inputs:
                self._inputs[key] = self.task.prepare(suite.config(config), seed, self.trusted_device)
            return self._inputs[key]

    def evaluate(
        self,
        source: str,
        sandbox: Sandbox,
        suite_name: str = "discover",
        n_seeds: int | None = None,
        configs: list[str] | None = None,
        seeds: list[int] | None = None,
    ) -> EvaluationReport:
        """Check, train in the sandbox, score here. Never raises for a bad candidate."""
        start = time.monotonic()
        rejected = self.static_check(source)
        if rejected is not None:
            rejected.suite = suite_name
            return rejected
        suite = self.suite(suite_name).with_seeds(n_seeds)
        config_names = configs or [c.name for c in suite.configs]
        seed_list = seeds or list(suite.seeds)
        inputs = {input_key(c, s): self.inputs_for(suite, c, s) for c in config_names for s in seed_list}
        # the suite may have grown seeds beyond its definition: the sandbox needs the same suite
        job = Job(
            task=self.task_ref,
            source=source,
            stage="train",
            suite=suite_name,
            configs=config_names,
            seeds=seed_list,
            device=self.device,
            limits=self.limits_for(len(inputs)),
            batched=self.batched,
        )
        if hasattr(sandbox, "evaluate_job"):  # a worker's trusted trainer process trains and scores
            report = sandbox.evaluate_job(job, inputs, self.task_ref, self.device, suite)
        else:
            outcome = self.run(job, sandbox, inputs, suite)
            report = self._score(outcome, suite, config_names, seed_list, inputs)
        report.seconds = time.monotonic() - start
        return report

    def suite(self, name: str) -> Suite:
        """The task's suite ``name``; the held-out one salted with this evaluator's secret."""
        suite = self.task.suite(name)
        return suite.salted(self.heldout_secret) if name == "heldout" else suite

    def run(
        self, job: Job, sandbox: Sandbox, inputs: dict[str, Any] | None = None, suite: Suite | None = None
    ) -> Outcome:
        """``job`` trained here, on this worker's device, with the candidate's function jailed in ``sandbox``
        (``suite``: the one its configurations come from, salted where held out)."""
        from sandbox.host.pool import visible_gpus

        if hasattr(sandbox, "run_job"):  # a worker with a trusted trainer process of its own
            return sandbox.run_job(job, inputs, self.task_ref, self.device, suite)
        gpu = getattr(sandbox, "gpu", None)
        device = trainer_device(self.device, gpu, visible_gpus() if gpu is not None else [])
        return run_job(sandbox, job, inputs, self.task, device, suite=suite)

    @property
    def task_ref(self) -> str:
        return getattr(self.task, "ref", self.task.name)

    def limits_for(self, n_runs: int) -> Limits:
        """The limits of a job with ``n_runs`` trainings (0: the contract check alone)."""
        base = self.limits
        wall = self.job_seconds or JOB_OVERHEAD_SECONDS + base.training_seconds * n_runs
        cpu = self.cpu_seconds or int(wall * max(1, base.threads)) + JOB_OVERHEAD_SECONDS
        return replace(base, wall_seconds=wall, cpu_seconds=cpu)

    def _score(
        self, outcome: Outcome, suite: Suite, configs: list[str], seeds: list[int], inputs: dict[str, Any]
    ) -> EvaluationReport:
        return score_outcome(self.task, self.trusted_device, outcome, suite, configs, seeds, inputs)
