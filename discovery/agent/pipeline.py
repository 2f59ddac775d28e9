"""One candidate's life as a LangGraph state graph, with the branches it really has.

A new slot enters at ``propose``; a stored candidate (a baseline, or one left unfinished
by a killed run) enters at ``reopen``. The conditional edges are the decisions:

* ``store`` -> ``static_check`` when the proposal holds code; -> ``propose`` again when an
  LLM's reply held no usable code (at most :data:`MAX_REPLY_RETRIES` times per slot, the
  reason going into the next prompt); -> END for a duplicate or a reply not retried.
* ``static_check`` and ``contract_check`` -> ``record_failure`` -> END when the code is
  rejected (policy, parse, contract); ``cascade`` and ``full`` too when training fails.
* ``cascade`` -> ``cull`` -> END when the cheap stage scores too far below the best.
* ``full`` -> ``extra_seeds`` when the candidate is among the ``leaders`` after its full
  suite; ``extra_seeds`` loops one seed per round (each round stored before the next starts)
  until the config's ``extra_seeds`` are done or a round fails, then END. Leadership is
  decided once, after ``full``, as the fixed "top-k get more seeds" rule always did.

The drawing (``discovery.agent.graph_drawing``) is LangGraph's own, of this graph; the
routers are pure functions of the state, so what it shows is what runs.

Every node records what it learned in the archive before returning, so a run killed at any
point loses nothing that finished: evaluations are stored per (configuration, seed), once.

**State and Runtime.** The state holds what flows between the nodes of one candidate: ids,
small values, the proposal and the records of the LLM calls behind it (plain dataclasses),
written to the archive by ``store``. The heavy objects (the archive's SQLite connection, the
evaluator with its cached training tensors, the pool of sandbox processes, the proposer
with its HTTP client, locks and counters) are shared by every pipeline of a run and hold
OS resources that cannot be serialized or copied; they live in :class:`Runtime`, bound
to each node by :func:`functools.partial`.

**Budget.** Every stored proposal, an unusable reply included, is one unit of the run's
``budget`` (as before): a retry takes its unit through :meth:`Runtime.take_proposal`, like
the loop starting a slot, so a retry never exceeds the budget nor starts after a stop.

**Resume, and why not LangGraph's checkpointer.** A resumed run re-enters unfinished
candidates at ``reopen`` and evaluates only the (configuration, seed) cells the archive
lacks (:func:`evaluate_missing`). A checkpointer would save this graph's state per thread
in a second store beside the archive, which already holds every finished cell and status;
the two could disagree after a kill between their writes. Checkpoints are also coarser:
they are taken between nodes, so a node killed mid-evaluation would rerun its whole
stage, where the archive keeps each cell that finished. And the only saver shipped with
``langgraph-checkpoint`` keeps state in memory (gone with the process); a durable one is the
separate ``langgraph-checkpoint-sqlite`` package with its own tables, while the Runtime
cannot be checkpointed at all. So no resume code would go away: none is used.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, TypedDict

from langgraph.graph import END, START, StateGraph

from discovery.archive import Archive
from discovery.config import RunConfig
from discovery.evaluation import EvaluationReport, Evaluator, aggregate
from discovery.proposers.base import ProposalContext, Proposed, Proposer, ProposerUnavailable
from discovery.proposers.codehash import normalized_hash
from discovery.records import Candidate
from discovery.selection import choose
from discovery.tasks import SeedMetrics, Task
from discovery.tasks.version import device_kind, task_version
from sandbox.base import Job, Outcome, Status
from sandbox.host.pool import SandboxPool

#: unusable LLM replies retried per slot: a slot asks at most 1 + this many times. Two retries
#: give a model that broke the format twice a third chance, and bound what a broken model costs.
MAX_REPLY_RETRIES = 2


class Failure(TypedDict):
    """Why a candidate failed, as ``record_failure`` stores it."""

    status: str
    failed_stage: str
    reason: str
    error_line: int | None
    error_class: str | None  # the exception's class, when the candidate raised one
    error_message: str | None
    seconds: float


class CandidateState(TypedDict, total=False):
    """What flows between the nodes of one candidate's graph."""

    island: int
    candidate_id: str
    proposal: Proposed  # what the proposer returned
    generation: int
    llm_calls: list[Any]  # the proposal's LLM attempts (CallRecord), in order; written by ``store``
    stored: Literal["usable", "retry", "not evaluated"]  # what ``store`` made of the proposal
    retries: int  # unusable replies retried in this slot so far
    retry_reason: str  # why the last reply could not be used, for the next prompt
    failure: Failure  # set by a check or a stage that failed; ``record_failure`` writes it
    cascade_fitness: float
    culled: str  # why the cascade stopped the candidate
    extra_rounds: int  # extra seed rounds done
    more_seeds: bool  # still a leader with seeds to add


@dataclass
class Runtime:
    """Everything the nodes share: one per run (see the module docstring for why not in the state)."""

    config: RunConfig
    task: Task
    archive: Archive
    evaluator: Evaluator
    pool: SandboxPool
    proposer: Proposer
    run_id: str
    reference_id: str | None = None
    seed: int = 0
    task_version: str = ""  # discovery.tasks.version.task_version(task); "" computes it when needed
    stop: threading.Event = field(default_factory=threading.Event)
    proposed: int = 0  # units of the budget taken (stored proposals and those in flight)
    _counter: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def next_rng_seed(self) -> int:
        with self._lock:
            self._counter += 1
            return self.seed * 1_000_003 + self._counter

    def take_proposal(self) -> bool:
        """Take one unit of the proposal budget; False when it is spent or the run is stopping."""
        with self._lock:
            if self.stop.is_set() or self.proposed >= self.config.budget:
                return False
            self.proposed += 1
            return True


# -- archive reads (small helpers, so the record type is read in one place) -----------------------
def _code(rt: Runtime, cid: str) -> str:
    row = rt.archive.get_candidate(cid)
    return row.code if row else ""


def _is_baseline(rt: Runtime, cid: str) -> bool:
    row = rt.archive.get_candidate(cid)
    return bool(row and row.is_baseline)


def stored_metrics(rt: Runtime, cid: str, suite: str) -> list[SeedMetrics]:
    """The candidate's recorded evaluations of one suite, as SeedMetrics."""
    return [
        SeedMetrics(
            config=e.config,
            seed=e.seed,
            fitness=e.fitness,
            metrics=e.metrics or {},
            curve=e.curve or {},
            seconds=e.seconds or 0.0,
        )
        for e in rt.archive.evaluations(cid, suite)
        if e.fitness is not None
    ]


def best_cascade(rt: Runtime, exclude: str | None = None) -> float | None:
    """Best cascade-stage score among fully evaluated candidates of this run."""
    cfg = rt.config
    seeds = set(rt.task.suite("discover").seeds[: cfg.cascade_seeds])
    cascade_configs = cfg.cascade_configs or []  # resolved to the task's when the run starts
    best = None
    for row in rt.archive.candidates(rt.run_id, status="ok"):
        if row.id == exclude:
            continue
        values = [
            e.fitness
            for e in rt.archive.evaluations(row.id, "discover")
            if e.config in cascade_configs and e.seed in seeds and e.fitness is not None
        ]
        if values:
            value = sum(values) / len(values)
            best = value if best is None else max(best, value)
    return best


def ranked(rt: Runtime) -> list[Candidate]:
    """The run's evaluated (status ok) candidates but the baselines, best first."""
    rows = [r for r in rt.archive.candidates(rt.run_id, status="ok") if not r.is_baseline]
    rows.sort(key=lambda r: r.fitness if r.fitness is not None else float("-inf"), reverse=True)
    return rows


# -- archive writes -------------------------------------------------------------------------------
def _reuse_key(rt: Runtime, code: str) -> dict[str, str]:
    """What a result of ``code`` in this run is a pure function of, besides its suite and cell."""
    return {
        "task_version": rt.task_version or task_version(rt.task),
        "code_hash": normalized_hash(code),
        "device_kind": device_kind(rt.evaluator.device),
    }


def _trained_before(rt: Runtime, cid: str) -> bool:
    """Whether identical code trained before for this task version and device kind, so that its
    contract held (every job checks the contract before it trains); only when results are reused."""
    return rt.config.reuse and rt.archive.has_reusable(rt.task.name, **_reuse_key(rt, _code(rt, cid)))


def _record(rt: Runtime, cid: str, report: EvaluationReport, stage: str, key: dict[str, str]) -> None:
    for config in report.configs:
        for m in config.seeds:
            rt.archive.record_evaluation(
                cid,
                report.suite,
                m.config,
                m.seed,
                stage,
                m.fitness,
                m.metrics,
                m.curve,
                m.seconds,
                trainer_path=m.path,
                **key,
            )


def record_llm_calls(rt: Runtime, records: list[Any], candidate_id: str | None) -> None:
    """Persist LLM attempts (successful or not), tied to ``candidate_id`` when there is one."""
    for record in records:
        rt.archive.record_llm_call(
            rt.run_id,
            candidate_id,
            record.model,
            record.prompt_messages,
            record.reply_text,
            record.prompt_tokens,
            record.completion_tokens,
            record.cost_usd,
            record.latency_s,
            record.error,
        )


def summarize(rt: Runtime, cid: str, suite_name: str, status: str | None = None) -> float | None:
    """Aggregate the stored evaluations into the candidate's fitness, CI and per-config scores."""
    rows = stored_metrics(rt, cid, suite_name)
    if not rows:
        return None
    overall, configs = aggregate(rt.task.suite(suite_name), rows)
    per_config = {
        c.name: {
            "fitness": c.fitness.mean,
            "ci_low": c.fitness.low,
            "ci_high": c.fitness.high,
            "n": c.fitness.n,
            "metrics": {k: v.mean for k, v in c.metrics.items()},
        }
        for c in configs
    }
    if suite_name == "heldout":
        rt.archive.update_candidate(
            cid,
            heldout_fitness=overall.mean,
            heldout_ci_low=overall.low,
            heldout_ci_high=overall.high,
            heldout_n_seeds=overall.n,
            heldout_per_config=per_config,
        )
        return overall.mean
    curve = {}
    for c in configs:
        first = min(c.seeds, key=lambda m: m.seed)
        curve[c.name] = first.curve
    fields: dict[str, Any] = dict(
        fitness=overall.mean,
        fitness_ci_low=overall.low,
        fitness_ci_high=overall.high,
        n_seeds=overall.n,
        per_config=per_config,
        curve=curve,
        seconds=sum(m.seconds for m in rows),
    )
    if status:
        fields["status"] = status
    rt.archive.update_candidate(cid, **fields)
    return overall.mean


def evaluate_missing(
    rt: Runtime, cid: str, code: str, suite: str, configs: list[str], seeds: list[int], stage: str
) -> EvaluationReport | None:
    """Evaluate the (config, seed) pairs not yet stored; None when there was nothing to do.

    With ``reuse`` on, a pair that another candidate (of any run of the archive) trained with the same
    normalized code, task version and device kind is copied first, marked with the evaluation it came
    from; only the rest trains, and no sandbox is borrowed when every pair was copied."""
    key = _reuse_key(rt, code)
    done = rt.archive.done_keys(cid, suite)
    if rt.config.reuse:
        missing = [(c, s) for c in configs for s in seeds if (c, s) not in done]
        found = rt.archive.reusable(
            rt.task.name, key["task_version"], key["code_hash"], suite, key["device_kind"], missing, exclude=cid
        )
        for cell, source in found.items():
            rt.archive.reuse_evaluation(cid, source, stage)
            done.add(cell)
    todo_configs = [c for c in configs if any((c, s) not in done for s in seeds)]
    todo_seeds = [s for s in seeds if any((c, s) not in done for c in configs)]
    if not todo_configs:
        return None
    with rt.pool.borrow() as box:
        report = rt.evaluator.evaluate(code, box, suite, configs=todo_configs, seeds=todo_seeds)
    if report.ok:
        _record(rt, cid, report, stage, key)
    return report


def _failure(report: EvaluationReport | Outcome, default_stage: str = "train") -> Failure:
    return Failure(
        status=report.status.value,
        failed_stage=report.stage or default_stage,
        reason=report.reason,
        error_line=report.line,
        error_class=report.error_class or None,
        error_message=report.message or None,
        seconds=report.seconds,
    )


# -- nodes ----------------------------------------------------------------------------------------
def propose(rt: Runtime, state: CandidateState) -> CandidateState:
    """Select parents from the archive and ask the proposer (again with the reason, on a retry)."""
    cfg = rt.config
    rng = random.Random(rt.next_rng_seed())
    island = state.get("island", 0)
    rows = rt.archive.candidates(rt.run_id, order_by_fitness=False)
    parent, second, top, diverse, failures = choose(rows, island, rng, cfg.top_k, cfg.diverse, cfg.failures_shown)
    reference = rt.archive.get_candidate(rt.reference_id) if rt.reference_id else None
    ctx = ProposalContext(
        task=rt.task,
        run_id=rt.run_id,
        parent=parent,
        second_parent=second,
        top=top,
        diverse=diverse,
        failures=failures,
        reference=reference,
        island=island,
        generation=(parent.generation if parent else 0) + 1,
        rng=rng,
    )
    reason = state.get("retry_reason") if state.get("retries") else None
    try:
        if reason is None:
            proposal = rt.proposer.propose(ctx)
        else:  # only LLM proposers are retried (see ``store``), and they take the reason
            proposal = rt.proposer.propose(ctx, error_feedback=reason)  # type: ignore[call-arg]
    except ProposerUnavailable as exc:  # the run stops; its failed attempts stay on record
        record_llm_calls(rt, exc.records, None)
        raise
    return {"proposal": proposal, "generation": ctx.generation, "llm_calls": list(proposal.extra.get("calls") or [])}


def store(rt: Runtime, state: CandidateState) -> CandidateState:
    """Store the proposal (usable, unusable or duplicate) with its LLM calls; decide on a retry."""
    proposal = state["proposal"]
    calls = state.get("llm_calls") or []
    common: dict[str, Any] = dict(
        name=proposal.name or "unnamed",
        thought=proposal.thought or "",
        parents=proposal.parents,
        generation=state["generation"],
        island=state.get("island", 0),
        proposer=proposal.proposer,
        feedback_shown=proposal.feedback_shown,
    )
    if proposal.code is None:
        cid = rt.archive.add_unusable(rt.run_id, reason=f"unusable reply: {proposal.error}", **common)
        record_llm_calls(rt, calls, cid)
        retries = state.get("retries", 0)
        if calls and retries < MAX_REPLY_RETRIES and rt.take_proposal():
            return {
                "candidate_id": cid,
                "stored": "retry",
                "retries": retries + 1,
                "retry_reason": proposal.error or "the reply held no usable code",
            }
        return {"candidate_id": cid, "stored": "not evaluated"}
    code_hash = normalized_hash(proposal.code)
    added = rt.archive.add_candidate(rt.run_id, code=proposal.code, code_hash=code_hash, **common)
    if added.duplicate:
        cid = rt.archive.add_duplicate(
            rt.run_id, original_id=added.id, code=proposal.code, code_hash=code_hash, **common
        )
        record_llm_calls(rt, calls, cid)
        return {"candidate_id": cid, "stored": "not evaluated"}
    rt.archive.update_candidate(added.id, status="evaluating")
    record_llm_calls(rt, calls, added.id)
    return {"candidate_id": added.id, "stored": "usable"}


def reopen(rt: Runtime, state: CandidateState) -> CandidateState:
    """A stored candidate (a baseline, or one a killed run left unfinished) starts evaluating."""
    rt.archive.update_candidate(state["candidate_id"], status="evaluating")
    return {}


def static_check(rt: Runtime, state: CandidateState) -> CandidateState:
    """The static policy and the slot's signature; nothing runs."""
    rejected = rt.evaluator.static_check(_code(rt, state["candidate_id"]))
    return {} if rejected is None else {"failure": _failure(rejected)}


def contract_check(rt: Runtime, state: CandidateState) -> CandidateState:
    """The task's contract check, sandboxed."""
    cid = state["candidate_id"]
    if rt.archive.done_keys(cid, "discover") or _trained_before(rt, cid):
        return {}  # it trained before (resume, or the same code in this archive): the contract held
    job = Job(
        task=rt.evaluator.task_ref,
        source=_code(rt, cid),
        stage="contract",
        device=rt.evaluator.device,
        limits=rt.evaluator.limits_for(0),
    )
    with rt.pool.borrow() as box:
        outcome = rt.evaluator.run(job, box)
    return {} if outcome.ok else {"failure": _failure(outcome, "contract")}


def cascade(rt: Runtime, state: CandidateState) -> CandidateState:
    """The cheap stage: a few configurations, one seed. Weak candidates stop here."""
    cid, cfg = state["candidate_id"], rt.config
    suite = rt.task.suite("discover")
    seeds = list(suite.seeds[: cfg.cascade_seeds])
    cascade_configs = cfg.cascade_configs or []  # resolved to the task's when the run starts
    report = evaluate_missing(rt, cid, _code(rt, cid), "discover", cascade_configs, seeds, "cascade")
    if report is not None and not report.ok:
        return {"failure": _failure(report)}
    scores = [m for m in stored_metrics(rt, cid, "discover") if m.config in cascade_configs and m.seed in seeds]
    value = sum(m.fitness for m in scores) / max(1, len(scores))
    if _is_baseline(rt, cid):
        return {"cascade_fitness": value}
    best = best_cascade(rt, exclude=cid)
    if best is not None and value < best - cfg.cascade_margin:
        why = f"cascade fitness {value:.3f} < best {best:.3f} - margin {cfg.cascade_margin:g}; full suite not run"
        return {"cascade_fitness": value, "culled": why}
    return {"cascade_fitness": value}


def cull(rt: Runtime, state: CandidateState) -> CandidateState:
    """Keep the cascade scores and say why the full suite was not run."""
    cid = state["candidate_id"]
    summarize(rt, cid, "discover", status="culled")
    rt.archive.update_candidate(cid, failed_stage="cascade", reason=state["culled"])
    return {}


def _is_leader(rt: Runtime, cid: str) -> bool:
    cfg = rt.config
    return cfg.leaders > 0 and cfg.extra_seeds > 0 and cid in [r.id for r in ranked(rt)[: cfg.leaders]]


def full(rt: Runtime, state: CandidateState) -> CandidateState:
    """Every configuration and seed of the discover suite."""
    cid = state["candidate_id"]
    suite = rt.task.suite("discover").with_seeds(rt.config.seeds)
    report = evaluate_missing(
        rt, cid, _code(rt, cid), "discover", [c.name for c in suite.configs], list(suite.seeds), "full"
    )
    if report is not None and not report.ok:
        return {"failure": _failure(report)}
    summarize(rt, cid, "discover", status="ok")
    return {"extra_rounds": 0, "more_seeds": _is_leader(rt, cid)}


def extra_seeds(rt: Runtime, state: CandidateState) -> CandidateState:
    """One more seed for a leader: scores are noisy, and the best so far deserves a tighter interval.

    Loops (one round per seed) until the config's ``extra_seeds`` are evaluated or a round fails."""
    cid, cfg = state["candidate_id"], rt.config
    rounds = state.get("extra_rounds", 0) + 1
    base = rt.task.suite("discover").with_seeds(cfg.seeds)
    suite = base.with_seeds(len(base.seeds) + rounds)
    report = evaluate_missing(
        rt, cid, _code(rt, cid), "discover", [c.name for c in suite.configs], list(suite.seeds), "extra"
    )
    failed = report is not None and not report.ok
    if failed and report is not None:  # noisy on new seeds: keep the scores it has, say why
        rt.archive.update_candidate(cid, reason=f"extra seeds failed: {report.one_line()}")
    summarize(rt, cid, "discover", status="ok")
    return {"extra_rounds": rounds, "more_seeds": not failed and rounds < cfg.extra_seeds}


def record_failure(rt: Runtime, state: CandidateState) -> CandidateState:
    """Store the failure a check or a stage found: status, stage, reason, line."""
    f = state["failure"]
    rt.archive.update_candidate(
        state["candidate_id"],
        status=f["status"],
        failed_stage=f["failed_stage"],
        reason=f["reason"],
        error_line=f["error_line"],
        error_class=f["error_class"],
        error_message=f["error_message"],
        seconds=f["seconds"],
    )
    return {}


# -- routers: pure functions of the state, so the drawing is what runs ----------------------------
def _entry(state: CandidateState) -> str:
    return "resume" if state.get("candidate_id") else "new"


def _after_store(state: CandidateState) -> str:
    return state["stored"]


def _checked(state: CandidateState) -> str:
    return "failed" if "failure" in state else "ok"


def _after_cascade(state: CandidateState) -> str:
    if "failure" in state:
        return "failed"
    return "culled" if state.get("culled") else "promoted"


def _after_full(state: CandidateState) -> str:
    if "failure" in state:
        return "failed"
    return "leader" if state.get("more_seeds") else "not leader"


def _after_extra(state: CandidateState) -> str:
    return "seeds left" if state.get("more_seeds") else "done"


NODES = {
    "propose": propose,
    "store": store,
    "reopen": reopen,
    "static_check": static_check,
    "contract_check": contract_check,
    "cascade": cascade,
    "cull": cull,
    "full": full,
    "extra_seeds": extra_seeds,
    "record_failure": record_failure,
}


def pipeline_graph(rt: Runtime | None) -> StateGraph:
    """The uncompiled graph; with ``rt=None`` its nodes cannot run, but it can be drawn."""
    graph = StateGraph(CandidateState)
    for name, fn in NODES.items():
        graph.add_node(name, partial(fn, rt))  # type: ignore[arg-type]  # rt None: drawn only, never run
    graph.add_conditional_edges(START, _entry, {"new": "propose", "resume": "reopen"})
    graph.add_edge("propose", "store")
    graph.add_conditional_edges(
        "store", _after_store, {"usable": "static_check", "retry": "propose", "not evaluated": END}
    )
    graph.add_edge("reopen", "static_check")
    graph.add_conditional_edges("static_check", _checked, {"ok": "contract_check", "failed": "record_failure"})
    graph.add_conditional_edges("contract_check", _checked, {"ok": "cascade", "failed": "record_failure"})
    graph.add_conditional_edges(
        "cascade", _after_cascade, {"promoted": "full", "culled": "cull", "failed": "record_failure"}
    )
    graph.add_edge("cull", END)
    graph.add_conditional_edges(
        "full", _after_full, {"leader": "extra_seeds", "not leader": END, "failed": "record_failure"}
    )
    graph.add_conditional_edges("extra_seeds", _after_extra, {"seeds left": "extra_seeds", "done": END})
    graph.add_edge("record_failure", END)
    return graph


def build_pipeline(rt: Runtime):  # noqa: ANN201 - a compiled LangGraph graph
    """The compiled graph for one candidate; invoke with ``{"island": i}`` or ``{"candidate_id": id}``
    and ``{"recursion_limit": step_limit(config)}``."""
    return pipeline_graph(rt).compile()


def step_limit(config: RunConfig) -> int:
    """Node steps one candidate can take: the proposal with its retries, the stages, the seed rounds."""
    return 2 * (1 + MAX_REPLY_RETRIES) + 6 + config.extra_seeds + 4


__all__ = [
    "CandidateState",
    "MAX_REPLY_RETRIES",
    "Runtime",
    "build_pipeline",
    "evaluate_missing",
    "pipeline_graph",
    "ranked",
    "step_limit",
    "summarize",
    "Status",
]
