"""One candidate's life as a LangGraph state graph.

    propose -> static_check -> contract_check -> cascade -> full -> extra_seeds -> END
         \\______________\\________________\\__________\\________\\_____> END (recorded)

Each node records what it learned in the archive before returning, so a run killed at any
point loses nothing that finished: evaluations are stored per (configuration, seed), once,
and a resumed candidate re-enters at ``static_check`` and evaluates only what is missing.
The state carries ids and small values only; heavy objects live in :class:`Runtime`.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph

from discovery.archive import Archive
from discovery.config import RunConfig
from discovery.evaluation import EvaluationReport, Evaluator, aggregate
from discovery.proposers.base import ProposalContext, Proposer
from discovery.proposers.codehash import normalized_hash
from discovery.selection import choose
from discovery.tasks import SeedMetrics, Task
from sandbox.base import Job, Status
from sandbox.pool import SandboxPool


class CandidateState(TypedDict, total=False):
    """What flows between the nodes of one candidate's graph."""

    candidate_id: str
    island: int
    done: bool  # recorded with a final status; go to END
    cascade_fitness: float


@dataclass
class Runtime:
    """Everything the nodes share: one per run."""

    config: RunConfig
    task: Task
    archive: Archive
    evaluator: Evaluator
    pool: SandboxPool
    proposer: Proposer
    run_id: str
    reference_id: str | None = None
    seed: int = 0
    llm_calls: threading.local = field(default_factory=threading.local)
    _counter: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def next_rng_seed(self) -> int:
        with self._lock:
            self._counter += 1
            return self.seed * 1_000_003 + self._counter


def _fail(rt: Runtime, cid: str, report: EvaluationReport | Any) -> CandidateState:
    rt.archive.update_candidate(
        cid, status=report.status.value, failed_stage=report.stage or "train", reason=report.reason,
        error_line=report.line, seconds=report.seconds,
    )
    return {"done": True}


def _record(rt: Runtime, cid: str, report: EvaluationReport, stage: str) -> None:
    for config in report.configs:
        for m in config.seeds:
            rt.archive.record_evaluation(cid, report.suite, m.config, m.seed, stage, m.fitness, m.metrics, m.curve,
                                         m.seconds)


def stored_metrics(rt: Runtime, cid: str, suite: str) -> list[SeedMetrics]:
    """The candidate's recorded evaluations of one suite, as SeedMetrics."""
    return [
        SeedMetrics(config=e["config"], seed=e["seed"], fitness=e["fitness"], metrics=e.get("metrics") or {},
                    curve=e.get("curve") or {}, seconds=e.get("seconds") or 0.0)
        for e in rt.archive.evaluations(cid, suite)
        if e.get("fitness") is not None
    ]


def summarize(rt: Runtime, cid: str, suite_name: str, status: str | None = None) -> float | None:
    """Aggregate the stored evaluations into the candidate's fitness, CI and per-config scores."""
    rows = stored_metrics(rt, cid, suite_name)
    if not rows:
        return None
    overall, configs = aggregate(rt.task.suite(suite_name), rows)
    per_config = {
        c.name: {"fitness": c.fitness.mean, "ci_low": c.fitness.low, "ci_high": c.fitness.high, "n": c.fitness.n,
                 "metrics": {k: v.mean for k, v in c.metrics.items()}}
        for c in configs
    }
    if suite_name == "heldout":
        rt.archive.update_candidate(cid, heldout_fitness=overall.mean, heldout_ci_low=overall.low,
                                    heldout_ci_high=overall.high, heldout_n_seeds=overall.n,
                                    heldout_per_config=per_config)
        return overall.mean
    curve = {}
    for c in configs:
        first = min(c.seeds, key=lambda m: m.seed)
        curve[c.name] = first.curve
    fields: dict[str, Any] = dict(fitness=overall.mean, fitness_ci_low=overall.low, fitness_ci_high=overall.high,
                                  n_seeds=overall.n, per_config=per_config, curve=curve,
                                  seconds=sum(m.seconds for m in rows))
    if status:
        fields["status"] = status
    rt.archive.update_candidate(cid, **fields)
    return overall.mean


def evaluate_missing(rt: Runtime, cid: str, code: str, suite: str, configs: list[str], seeds: list[int],
                     stage: str) -> EvaluationReport | None:
    """Evaluate the (config, seed) pairs not yet stored; None when there was nothing to do."""
    done = rt.archive.done_keys(cid, suite)
    todo_configs = [c for c in configs if any((c, s) not in done for s in seeds)]
    todo_seeds = [s for s in seeds if any((c, s) not in done for c in configs)]
    if not todo_configs:
        return None
    with rt.pool.borrow() as box:
        report = rt.evaluator.evaluate(code, box, suite, configs=todo_configs, seeds=todo_seeds)
    if report.ok:
        _record(rt, cid, report, stage)
    return report


# -- nodes ----------------------------------------------------------------------------------------
def propose(rt: Runtime, state: CandidateState) -> CandidateState:
    """Select parents from the archive, ask the proposer, store the proposal."""
    import random

    if state.get("candidate_id"):  # resuming a stored candidate
        rt.archive.update_candidate(state["candidate_id"], status="evaluating")
        return {}
    cfg = rt.config
    rng = random.Random(rt.next_rng_seed())
    island = state.get("island", 0)
    rows = rt.archive.candidates(rt.run_id, order_by_fitness=False)
    parent, second, top, diverse, failures = choose(rows, island, rng, cfg.top_k, cfg.diverse, cfg.failures_shown)
    reference = rt.archive.get_candidate(rt.reference_id) if rt.reference_id else None
    ctx = ProposalContext(task=rt.task, run_id=rt.run_id, parent=parent, second_parent=second, top=top,
                          diverse=diverse, failures=failures, reference=reference, island=island,
                          generation=(parent or {}).get("generation", 0) + 1, rng=rng)
    rt.llm_calls.pending = []
    proposal = rt.proposer.propose(ctx)  # ProposerUnavailable propagates: the run stops cleanly
    common = dict(name=proposal.name or "unnamed", thought=proposal.thought or "", parents=proposal.parents,
                  generation=ctx.generation, island=island, proposer=proposal.proposer,
                  feedback_shown=proposal.feedback_shown)
    if proposal.code is None:
        added = rt.archive.add_candidate(rt.run_id, code="", code_hash=f"unusable:{uuid.uuid4().hex}", **common)
        rt.archive.update_candidate(added.id, status="parse", failed_stage="reply",
                                    reason=f"unusable reply: {proposal.error}")
        _flush_llm_calls(rt, added.id)
        return {"candidate_id": added.id, "done": True}
    code_hash = normalized_hash(proposal.code)
    added = rt.archive.add_candidate(rt.run_id, code=proposal.code, code_hash=code_hash, **common)
    if added.duplicate:
        original = added.id
        added = rt.archive.add_candidate(rt.run_id, code=proposal.code,
                                         code_hash=f"duplicate:{code_hash}:{uuid.uuid4().hex}", **common)
        name = (rt.archive.get_candidate(original) or {}).get("name", original)
        rt.archive.update_candidate(added.id, status="duplicate", failed_stage="dedup",
                                    reason=f"same normalized syntax tree as {original} ({name}); not evaluated")
        _flush_llm_calls(rt, added.id)
        return {"candidate_id": added.id, "done": True}
    rt.archive.update_candidate(added.id, status="evaluating")
    _flush_llm_calls(rt, added.id)
    return {"candidate_id": added.id}


def _flush_llm_calls(rt: Runtime, candidate_id: str | None) -> None:
    for record in getattr(rt.llm_calls, "pending", []):
        record_llm_call(rt, record, candidate_id)
    rt.llm_calls.pending = []


def record_llm_call(rt: Runtime, record: Any, candidate_id: str | None) -> None:
    """Persist one LLM attempt (successful or not)."""
    rt.archive.record_llm_call(
        rt.run_id, candidate_id, record.model, record.prompt_messages, record.reply_text, record.prompt_tokens,
        record.completion_tokens, record.cost_usd, record.latency_s, record.error,
    )


def static_check(rt: Runtime, state: CandidateState) -> CandidateState:
    row = rt.archive.get_candidate(state["candidate_id"]) or {}
    rejected = rt.evaluator.static_check(row.get("code", ""))
    if rejected is not None:
        return _fail(rt, state["candidate_id"], rejected)
    return {}


def contract_check(rt: Runtime, state: CandidateState) -> CandidateState:
    cid = state["candidate_id"]
    row = rt.archive.get_candidate(cid) or {}
    if rt.archive.done_keys(cid, "discover"):
        return {}  # it trained before (resume): the contract held
    job = Job(task=rt.evaluator.task_ref, source=row["code"], stage="contract", device=rt.evaluator.device,
              limits=rt.evaluator.limits_for(0))
    with rt.pool.borrow() as box:
        outcome = rt.evaluator.run(job, box)
    if not outcome.ok:
        report = EvaluationReport(task=rt.task.name, suite="discover", status=outcome.status,
                                  stage=outcome.stage or "contract", reason=outcome.reason, line=outcome.line,
                                  seconds=outcome.seconds)
        return _fail(rt, cid, report)
    return {}


def cascade(rt: Runtime, state: CandidateState) -> CandidateState:
    """The cheap stage: a few configurations, one seed. Weak candidates stop here."""
    cid, cfg = state["candidate_id"], rt.config
    row = rt.archive.get_candidate(cid) or {}
    suite = rt.task.suite("discover")
    seeds = list(suite.seeds[: cfg.cascade_seeds])
    report = evaluate_missing(rt, cid, row["code"], "discover", cfg.cascade_configs, seeds, "cascade")
    if report is not None and not report.ok:
        return _fail(rt, cid, report)
    scores = [m for m in stored_metrics(rt, cid, "discover") if m.config in cfg.cascade_configs and m.seed in seeds]
    value = sum(m.fitness for m in scores) / max(1, len(scores))
    if row.get("is_baseline"):
        return {"cascade_fitness": value}
    best = best_cascade(rt, exclude=cid)
    if best is not None and value < best - cfg.cascade_margin:
        summarize(rt, cid, "discover", status="culled")
        rt.archive.update_candidate(cid, failed_stage="cascade",
                                    reason=f"cascade fitness {value:.3f} < best {best:.3f} - margin "
                                           f"{cfg.cascade_margin:g}; full suite not run")
        return {"cascade_fitness": value, "done": True}
    return {"cascade_fitness": value}


def best_cascade(rt: Runtime, exclude: str | None = None) -> float | None:
    """Best cascade-stage score among fully evaluated candidates of this run."""
    cfg = rt.config
    seeds = set(rt.task.suite("discover").seeds[: cfg.cascade_seeds])
    best = None
    for row in rt.archive.candidates(rt.run_id, status="ok"):
        if row["id"] == exclude:
            continue
        evals = [e for e in rt.archive.evaluations(row["id"], "discover")
                 if e["config"] in cfg.cascade_configs and e["seed"] in seeds and e["fitness"] is not None]
        if evals:
            value = sum(e["fitness"] for e in evals) / len(evals)
            best = value if best is None else max(best, value)
    return best


def full(rt: Runtime, state: CandidateState) -> CandidateState:
    """Every configuration and seed of the discover suite."""
    cid = state["candidate_id"]
    row = rt.archive.get_candidate(cid) or {}
    suite = rt.task.suite("discover").with_seeds(rt.config.seeds)
    report = evaluate_missing(rt, cid, row["code"], "discover", [c.name for c in suite.configs],
                              list(suite.seeds), "full")
    if report is not None and not report.ok:
        return _fail(rt, cid, report)
    summarize(rt, cid, "discover", status="ok")
    return {}


def extra_seeds(rt: Runtime, state: CandidateState) -> CandidateState:
    """Leaders get more seeds: scores are noisy, and the best so far deserves a tighter interval."""
    cid, cfg = state["candidate_id"], rt.config
    if cfg.leaders == 0 or cfg.extra_seeds == 0:
        return {"done": True}
    ranked = [r for r in rt.archive.candidates(rt.run_id, status="ok") if not r.get("is_baseline")]
    ranked.sort(key=lambda r: r["fitness"], reverse=True)
    if cid not in [r["id"] for r in ranked[: cfg.leaders]]:
        return {"done": True}
    row = rt.archive.get_candidate(cid) or {}
    base = rt.task.suite("discover").with_seeds(cfg.seeds)
    suite = base.with_seeds(len(base.seeds) + cfg.extra_seeds)
    report = evaluate_missing(rt, cid, row["code"], "discover", [c.name for c in suite.configs], list(suite.seeds),
                              "extra")
    if report is not None and not report.ok:  # noisy on new seeds: keep the scores it has, say why
        rt.archive.update_candidate(cid, reason=f"extra seeds failed: {report.one_line()}")
    summarize(rt, cid, "discover", status="ok")
    return {"done": True}


def _next(node_after: str):  # noqa: ANN202
    def route(state: CandidateState) -> str:
        return END if state.get("done") else node_after

    return route


def build_pipeline(rt: Runtime):  # noqa: ANN201 - a compiled LangGraph graph
    """The compiled graph for one candidate; invoke with ``{"island": i}`` or ``{"candidate_id": id}``."""
    graph = StateGraph(CandidateState)
    steps = [("propose", propose), ("static_check", static_check), ("contract_check", contract_check),
             ("cascade", cascade), ("full", full), ("extra_seeds", extra_seeds)]
    for name, fn in steps:
        graph.add_node(name, lambda state, fn=fn: fn(rt, state))
    graph.add_edge(START, "propose")
    for (name, _), (following, _) in zip(steps, steps[1:], strict=False):
        graph.add_conditional_edges(name, _next(following), {following: following, END: END})
    graph.add_edge("extra_seeds", END)
    return graph.compile()


__all__ = ["CandidateState", "Runtime", "build_pipeline", "summarize", "evaluate_missing", "Status"]
