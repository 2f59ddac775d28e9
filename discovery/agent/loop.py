"""The discovery run: keeps ``workers`` candidate pipelines in flight until the budget is spent.

Proposals and evaluations overlap: each pipeline proposes, then borrows a sandbox only
while it evaluates. When an LLM proposes, the loop runs ``prefetch`` pipelines more than there
are sandboxes (so replies are being written while every sandbox is busy, and no sandbox waits
for the LLM while the budget lasts), and the first proposals are asked for while the baselines
train. Once the budget is spent, a sandbox that the last candidates leave idle starts the
held-out scoring of the reference and of the best candidates so far; the held-out phase then
scores only what the final ranking still lacks. Ctrl-C stops
starting new candidates and lets the running ones finish; a second Ctrl-C stops at once.
Either way, and after a SIGKILL, ``--resume`` continues without losing or repeating a
finished evaluation.

Each candidate is one invocation of the graph of :mod:`discovery.agent.pipeline` in a
worker thread; the run's budget is the count of stored proposals (unusable replies
included), taken one unit at a time through :meth:`Runtime.take_proposal` by the loop when it
starts a slot and by the graph when it retries an unusable reply.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from discovery.agent.pipeline import Runtime, build_pipeline, evaluate_missing, ranked, step_limit, summarize
from discovery.archive import Archive
from discovery.config import ConfigError, RunConfig
from discovery.devices import DeviceError, resolve_device
from discovery.evaluation import Evaluator
from discovery.proposers.base import Proposer, ProposerUnavailable
from discovery.proposers.codehash import normalized_hash
from discovery.records import Candidate
from discovery.tasks import Task, get_task
from discovery.tasks.version import task_version


@contextmanager
def abortable_executor(workers: int, prefix: str) -> Iterator[ThreadPoolExecutor]:
    """A thread pool that waits for its work on the way out, except when a second Ctrl-C
    (KeyboardInterrupt) leaves: an abort waits for nothing (the sandboxes are killed next)."""
    executor = ThreadPoolExecutor(workers, thread_name_prefix=prefix)
    aborted = False
    try:
        yield executor
    except KeyboardInterrupt:
        aborted = True
        raise
    finally:
        executor.shutdown(wait=not aborted, cancel_futures=aborted)


#: internal errors (bugs, a broken installation) in a row after which a run stops as failed
MAX_INTERNAL_ERRORS_IN_A_ROW = 3


@dataclass
class Progress:
    """What the terminal shows while a run goes on."""

    budget: int
    proposed: int = 0
    finished: int = 0
    best: float | None = None
    best_name: str = ""
    statuses: Counter = field(default_factory=Counter)
    cost: float = 0.0
    started: float = field(default_factory=time.monotonic)
    phase: str = "baselines"

    @property
    def rate_per_minute(self) -> float:
        minutes = (time.monotonic() - self.started) / 60
        return self.finished / minutes if minutes > 0 else 0.0


@dataclass
class RunResult:
    run_id: str
    status: str
    message: str
    db: str


def build_proposer(config: RunConfig, task: Task) -> Proposer:
    """The LLM proposer when models are configured, the offline mutation proposer otherwise.

    The LLM proposer returns the records of its calls with each proposal (and a
    ``ProposerUnavailable`` carries those of the call that failed); the graph stores them."""
    if config.proposer == "random":
        from discovery.proposers.offline import RandomMutationProposer

        return RandomMutationProposer()
    if not config.uses_llm:
        from discovery.proposers.offline import MutationProposer

        return MutationProposer(crossover_rate=config.crossover_rate)
    from discovery.proposers.llm import LLMProposer
    from discovery.proposers.llm_client import LLMClient, ModelSpec

    specs = [
        ModelSpec(
            name=m.name,
            weight=m.weight,
            api_base=m.api_base,
            api_key_env=m.api_key_env,
            temperature=m.temperature,
            max_tokens=m.max_tokens,
            price_in=m.price_in,
            price_out=m.price_out,
        )
        for m in config.models
    ]

    client = LLMClient(
        specs,
        seed=config.seed,
        max_retries=config.llm_retries,
        timeout=config.llm_timeout,
        max_cost_usd=config.max_cost,
    )
    return LLMProposer(client)


def preflight(config: RunConfig, task: Task) -> None:
    """Everything that can be checked before any work starts; ConfigError with one line."""
    names = {c.name for c in task.suite("discover").configs}
    unknown = [c for c in config.cascade_configs or () if c not in names]  # resolved by the caller
    if unknown:
        raise ConfigError(
            f"cascade_configs {unknown} are not configurations of {task.name}'s discover suite "
            f"({', '.join(sorted(names))})"
        )
    if config.uses_llm:
        if not config.models:
            raise ConfigError("--proposer llm needs at least one --model")
        from discovery.prompting import missing_templates
        from discovery.proposers.llm_client import ModelSpec, check_model

        missing = missing_templates()
        if missing:
            raise ConfigError(
                f"this installation lacks the prompt templates {', '.join(missing)} "
                "(reinstall discovery: its wheel ships them as discovery.prompts)"
            )
        for m in config.models:
            problem = check_model(ModelSpec(name=m.name, api_base=m.api_base, api_key_env=m.api_key_env))
            if problem:
                raise ConfigError(f"model {m.name}: {problem}")


class DiscoveryRun:
    """Owns a run's archive, sandboxes and proposer; :meth:`execute` drives it to the end."""

    def __init__(
        self,
        config: RunConfig,
        resume: str | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        explicit: set[str] | None = None,
    ):
        from discovery.sandboxes import make_pool

        self.task = get_task(config.task)
        if not resume or "device" in (explicit or set()):  # refuse before the archive is touched
            try:
                resolve_device(config.device)
            except DeviceError as exc:
                raise ConfigError(str(exc)) from None
        self.archive = Archive(config.db)
        if resume:
            row = self.archive.get_run(resume)
            if row is None:
                raise ConfigError(f"no run {resume} in {config.db}")
            stored = RunConfig(**row["config"])
            # the stored config wins, except what a resume may change when asked to explicitly
            changeable = {"budget", "workers", "max_cost", "sandbox", "docker_image", "device", "limits", "reuse"} & (
                explicit or set()
            )
            update = {key: getattr(config, key) for key in changeable}
            config = stored.model_copy(update={**update, "db": config.db})
            self.task = get_task(config.task)
        if config.task.endswith(".py"):  # a user's task file: stored by absolute path, so resume works anywhere
            config = config.model_copy(update={"task": getattr(self.task, "ref", config.task)})
        if config.cascade_configs is None:
            config = config.model_copy(update={"cascade_configs": list(self.task.cascade_configs)})
        try:
            config = config.model_copy(update={"device": resolve_device(config.device)})
        except DeviceError as exc:
            raise ConfigError(str(exc)) from None
        preflight(config, self.task)
        self.config = config
        self.on_progress = on_progress or (lambda p: None)
        #: called once, from the signal handler, at the first Ctrl-C with the evaluations still running
        self.on_stop_requested: Callable[[int], None] = lambda running: None
        self.aborted = False
        self._running_count = 0
        self._internal_errors = 0
        self.pool = make_pool(config.sandbox, config.workers, config.docker_image, config.device)
        if resume:
            self.run_id = resume
            self.archive.reopen_run(resume)
        else:
            self.run_id = self.archive.create_run(
                self.task.name, config.model_dump(), config.seed, self.pool.isolation_notes
            )
        self.proposer = build_proposer(config, self.task)
        evaluator = Evaluator(
            self.task,
            device=config.device,
            limits=config.limits.to_limits(),
            job_seconds=config.limits.job_seconds,
            cpu_seconds=config.limits.cpu_seconds,
            heldout_secret=self.archive.heldout_secret(),
        )
        self.stop = threading.Event()
        self.rt = Runtime(
            config=config,
            task=self.task,
            archive=self.archive,
            evaluator=evaluator,
            pool=self.pool,
            proposer=self.proposer,
            run_id=self.run_id,
            seed=config.seed,
            task_version=task_version(self.task),
            stop=self.stop,
        )
        self.graph = build_pipeline(self.rt)
        self.progress = Progress(budget=config.budget)
        self.failed = False
        self.message = ""

    # -- pieces ------------------------------------------------------------------------------------
    def _seed_baselines(self) -> list[str]:
        """Baseline candidates (the reference, or the whole library) as generation 0."""
        library = self.task.baselines
        names = list(library) if self.config.baselines == "all" else [self.task.reference_baseline]
        ids = []
        for i, name in enumerate(names):
            code = library[name]
            added = self.archive.add_candidate(
                self.run_id,
                name=name,
                code=code,
                code_hash=normalized_hash(code),
                proposer="baseline",
                thought=f"baseline {name}",
                generation=0,
                island=i % self.config.islands,
                is_baseline=True,
            )
            if name == self.task.reference_baseline:
                self.rt.reference_id = added.id
            ids.append(added.id)
        return ids

    def _stored_proposals(self) -> int:
        """Proposals stored so far (every candidate but the baselines): the budget spent."""
        return sum(1 for r in self.archive.candidates(self.run_id, order_by_fitness=False) if not r.is_baseline)

    def _refresh_progress(self) -> None:
        rows = self.archive.candidates(self.run_id, order_by_fitness=False)
        finished = [r for r in rows if not r.is_baseline and r.status.finished]
        p = self.progress
        p.proposed = self.rt.proposed  # retries of unusable replies take budget inside the graph
        p.finished = len(finished)
        p.statuses = Counter(r.status.value for r in finished)
        ok = [r for r in rows if r.scored]
        if ok:
            best = max(ok, key=lambda r: r.fitness if r.fitness is not None else float("-inf"))  # all scored
            p.best, p.best_name = best.fitness, best.name
        p.cost = self.archive.run_cost(self.run_id)
        self.on_progress(p)

    def _run_pipeline(self, state: dict[str, Any]) -> dict[str, Any]:
        return self.graph.invoke(state, {"recursion_limit": step_limit(self.config)})

    def _handle_done(self, fut: Future, state: dict[str, Any]) -> None:
        try:
            fut.result()
            self._internal_errors = 0
        except ProposerUnavailable as exc:
            self.message = f"proposer unavailable, stopping: {exc}"
            self.failed = True
            self.stop.set()
        except Exception as exc:  # a bug must not end a days-long run: record it and go on
            cid = state.get("candidate_id")
            line = f"internal error: {type(exc).__name__}: {exc}"[:300]
            if cid:
                self.archive.update_candidate(cid, status="error", failed_stage="internal", reason=line)
            self.message = line
            self._internal_errors += 1
            if self._internal_errors >= MAX_INTERNAL_ERRORS_IN_A_ROW:  # not bad luck: our own bug
                self.message = f"{self._internal_errors} internal errors in a row, stopping; last: {line}"
                self.failed = True
                self.stop.set()

    def _heldout_choice(self) -> list[Candidate]:
        """The candidates the held-out suite scores: the best ``heldout_top`` so far, and the reference."""
        chosen: list[Candidate | None] = list(ranked(self.rt)[: self.config.heldout_top])
        if self.rt.reference_id:
            chosen.append(self.archive.get_candidate(self.rt.reference_id))
        return [r for r in chosen if r is not None]

    def _score_heldout(self, row: Candidate) -> None:
        """Score one candidate on the held-out suite (only the cells it lacks), never shown to proposers."""
        suite = self.task.suite("heldout")
        report = evaluate_missing(
            self.rt, row.id, row.code, "heldout", [c.name for c in suite.configs], list(suite.seeds), "heldout"
        )
        if report is not None and not report.ok:
            self.archive.update_candidate(row.id, reason=f"held-out failed: {report.one_line()}")
        summarize(self.rt, row.id, "heldout")

    def _heldout(self) -> None:
        """Score the top candidates (and the reference) on the held-out suite; those started early
        (:meth:`_start_heldout_early`) have nothing left to train."""
        self.progress.phase = "held-out"
        self.on_progress(self.progress)
        with abortable_executor(self.config.workers, "heldout") as ex:
            list(ex.map(self._score_heldout, self._heldout_choice()))

    def _start_heldout_early(
        self, launch: Callable[[Callable[[], Any], dict[str, Any]], None], started: set[str]
    ) -> bool:
        """The budget is spent and a sandbox is idle: start scoring the next of the current held-out
        choice (the reference first); False when none is left. A candidate that a late one pushes out
        of the top keeps its held-out scores."""
        for row in sorted(self._heldout_choice(), key=lambda r: r.id != self.rt.reference_id):
            if row.id not in started:
                started.add(row.id)
                launch(partial(self._score_heldout, row), {"heldout": row.id})
                return True
        return False

    # -- the loop ----------------------------------------------------------------------------------
    def execute(self) -> RunResult:
        """Run to the budget (or a stop), then the held-out phase; always leaves the archive consistent."""
        previous = signal.getsignal(signal.SIGINT)
        interrupts = 0

        def on_sigint(signum: int, frame: Any) -> None:
            nonlocal interrupts
            interrupts += 1
            if interrupts > 1:
                raise KeyboardInterrupt
            self.stop.set()
            if not self.failed:
                self.message = "stopped by Ctrl-C"
            self.on_stop_requested(self._running_count)

        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            signal.signal(signal.SIGINT, on_sigint)
        status = "failed"
        try:
            status = self._loop()
        except KeyboardInterrupt:
            # an abort: running jobs are killed, not waited for; their candidates stay unfinished
            # (pending/evaluating), so --resume evaluates them again, as after a SIGKILL
            status, self.message, self.aborted = "stopped", "aborted by a second Ctrl-C", True
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)
            if self.aborted:
                self.pool.kill()
            else:
                self.pool.close()
            self.archive.finish_run(self.run_id, status, self.message)
            if not self.aborted:  # pipeline threads still running after an abort may use it
                self.archive.close()
        return RunResult(self.run_id, status, self.message, self.config.db)

    def _loop(self) -> str:
        cfg = self.config
        baseline_ids = self._seed_baselines()
        # an LLM's replies are asked for ahead of free sandboxes; offline proposals are instant and
        # wait for the baselines' scores (they mutate the scored candidates)
        ahead = cfg.prefetch if cfg.uses_llm else 0
        concurrency = cfg.workers + ahead
        with abortable_executor(concurrency, "candidate") as executor:
            running: dict[Future, dict[str, Any]] = {}

            def launch(work: Callable[[], Any], state: dict[str, Any]) -> None:
                running[executor.submit(work)] = state

            def launch_pipeline(state: dict[str, Any]) -> None:
                launch(partial(self._run_pipeline, state), state)

            # baselines first (the reference is needed for feedback), then unfinished candidates
            for cid in baseline_ids:
                row = self.archive.get_candidate(cid)
                if row and not row.status.finished:
                    launch_pipeline({"candidate_id": cid})
            if not cfg.uses_llm:
                self._drain(running, until_empty=True)
            self.progress.phase = "search"
            for row in self.archive.unfinished_candidates(self.run_id):
                if row.id not in baseline_ids:
                    launch_pipeline({"candidate_id": row.id})
            self.rt.proposed = self._stored_proposals()
            self.progress.proposed = self.rt.proposed
            island = self.rt.proposed % cfg.islands
            heldout_started: set[str] = set()
            while not self.stop.is_set():
                while len(running) < concurrency and self.rt.take_proposal():
                    launch_pipeline({"island": island})
                    island = (island + 1) % cfg.islands
                    self.progress.proposed = self.rt.proposed
                if not running:
                    break
                while self.rt.proposed >= cfg.budget and len(running) < cfg.workers:
                    if not self._start_heldout_early(launch, heldout_started):
                        break
                self._drain(running, until_empty=False)
            self._drain(running, until_empty=True)
        self._refresh_progress()
        if self.stop.is_set():
            return "failed" if self.failed else "stopped"
        self._heldout()
        self._refresh_progress()
        return "finished"

    def _drain(self, running: dict[Future, dict[str, Any]], until_empty: bool) -> None:
        while running:
            self._running_count = len(running)
            done, _ = wait(list(running), timeout=1.0, return_when=FIRST_COMPLETED)
            for fut in done:
                self._handle_done(fut, running.pop(fut))
            self._refresh_progress()
            if done and not until_empty:
                return
