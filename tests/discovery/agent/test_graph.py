"""The candidate pipeline as a graph: its branches, its drawing, and each branch taken.

The branches run against a real archive with a scripted proposer and a fake evaluator (no
sandbox: fitness is a function of the code's marker, the configuration and the seed), so
every route (retry, duplicate, rejection, cull, the extra-seed loop) is exercised in
milliseconds. ``test_run.py`` runs the same graph end to end with real sandboxes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from discovery.agent import graph_drawing
from discovery.agent.pipeline import MAX_REPLY_RETRIES, Runtime, build_pipeline, step_limit
from discovery.archive import Archive
from discovery.config import RunConfig
from discovery.evaluation import EvaluationReport, aggregate
from discovery.proposers.base import ProposalContext, Proposed, ProposerUnavailable
from discovery.proposers.llm_client import CallRecord
from discovery.tasks import SeedMetrics, get_task
from sandbox.base import Limits, Outcome, Status

ROOT = Path(__file__).resolve().parents[3]
TASK = get_task("preference")
SIG = "def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):\n"


def program(marker: float) -> str:
    """A valid loss whose fake fitness is ``marker`` on the suite's own seeds."""
    body = f"    return -F.logsigmoid(beta * {marker!r} * policy_chosen_logps)\n"
    return f"import torch.nn.functional as F\n\n\n{SIG}{body}"


def marker_of(code: str) -> float:
    return float(re.search(r"beta \* ([-0-9.e]+) \*", code)[1])


class FakeEvaluator:
    """Fitness = the code's marker on the suite's seeds; on seeds beyond them, ``extra_fitness`` if set."""

    task_ref = "preference"
    device = "cpu"

    def __init__(self, reject: set[float] = frozenset(), extra_fitness: dict[float, float] | None = None):
        self.reject = reject
        self.extra_fitness = extra_fitness or {}
        self.evaluated: list[tuple[float, list[str], list[int]]] = []

    def static_check(self, source: str) -> EvaluationReport | None:
        if marker_of(source) in self.reject:
            return EvaluationReport(
                task="preference",
                suite="",
                status=Status.POLICY,
                stage="policy",
                reason="import of os is not allowed",
                line=1,
            )
        return None

    def limits_for(self, n_runs: int) -> Limits:
        return Limits()

    def run(self, job, box) -> Outcome:  # noqa: ANN001 - the contract check
        return Outcome(status=Status.OK)

    def evaluate(self, code: str, box, suite: str, configs: list[str], seeds: list[int]) -> EvaluationReport:  # noqa: ANN001
        marker = marker_of(code)
        self.evaluated.append((marker, list(configs), list(seeds)))
        own = set(TASK.suite(suite).seeds)
        rows = [
            SeedMetrics(
                config=c, seed=s, seconds=0.1, fitness=marker if s in own else self.extra_fitness.get(marker, marker)
            )
            for c in configs
            for s in seeds
        ]
        overall, per_config = aggregate(TASK.suite(suite), rows)
        return EvaluationReport(task="preference", suite=suite, status=Status.OK, fitness=overall, configs=per_config)


class FakePool:
    @contextmanager
    def borrow(self) -> Iterator[None]:
        yield None


def call(reply: str, error: str | None = None) -> CallRecord:
    return CallRecord(
        model="openai/test",
        prompt_messages=[{"role": "user", "content": "p"}],
        reply_text=reply,
        prompt_tokens=10,
        completion_tokens=5,
        cost_usd=0.001,
        latency_s=0.1,
        error=error,
    )


class ScriptedProposer:
    """Replies from a script; an item is a marker (usable code), None (an unusable LLM reply) or an exception."""

    name = "llm:scripted"

    def __init__(self, script: list):
        self.script = list(script)
        self.feedback: list[str | None] = []

    def propose(self, ctx: ProposalContext, error_feedback: str | None = None) -> Proposed:
        self.feedback.append(error_feedback)
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        if item is None:
            return Proposed(
                code=None,
                name="unusable-reply",
                thought="",
                parents=[],
                proposer="llm:openai/test",
                error="no code block in the reply",
                extra={"calls": [call("I cannot")]},
            )
        attempts = [call("", error="RateLimitError (429)"), call(f"code {item}")]
        return Proposed(
            code=program(item),
            name=f"m{item}",
            thought="t",
            parents=[],
            proposer="llm:openai/test",
            extra={"calls": attempts},
        )


@pytest.fixture
def make_rt(tmp_path):
    archives = []

    def make(script: list, evaluator: FakeEvaluator | None = None, **config) -> Runtime:
        cfg = RunConfig(
            db=str(tmp_path / "runs.db"),
            cascade_configs=list(TASK.cascade_configs),
            **{"budget": 10, "leaders": 1, "extra_seeds": 2, **config},
        )
        archive = Archive(cfg.db)
        archives.append(archive)
        run_id = archive.create_run("preference", cfg.model_dump(), 0, [])
        return Runtime(
            config=cfg,
            task=TASK,
            archive=archive,
            evaluator=evaluator or FakeEvaluator(),
            pool=FakePool(),
            proposer=ScriptedProposer(script),
            run_id=run_id,
        )

    yield make
    for archive in archives:
        archive.close()


def slot(rt: Runtime, island: int = 0) -> list[str]:
    """Run one new slot as the loop does; the nodes it went through, in order."""
    assert rt.take_proposal()
    graph = build_pipeline(rt)
    steps = graph.stream({"island": island}, {"recursion_limit": step_limit(rt.config)}, stream_mode="updates")
    return [node for update in steps for node in update]


def rows(rt: Runtime) -> list:
    return rt.archive.candidates(rt.run_id, order_by_fitness=False)


# -- the shape --------------------------------------------------------------------------------------
def test_the_graph_has_its_branches_as_conditional_edges():
    edges = {(e.source, e.target): e for e in graph_drawing.edges()}
    branches = {(s, t, e.label) for (s, t), e in edges.items() if e.conditional}
    assert {
        ("store", "propose", "retry"),
        ("store", "static_check", "usable"),
        ("store", "__end__", "not evaluated"),
        ("static_check", "record_failure", "failed"),
        ("contract_check", "record_failure", "failed"),
        ("cascade", "cull", "culled"),
        ("cascade", "full", "promoted"),
        ("full", "extra_seeds", "leader"),
        ("extra_seeds", "extra_seeds", "seeds left"),
        ("__start__", "reopen", "resume"),
        ("__start__", "propose", "new"),
    } <= branches
    assert not edges[("propose", "store")].conditional and not edges[("record_failure", "__end__")].conditional
    assert set(graph_drawing.nodes()) == {
        "__start__",
        "__end__",
        "propose",
        "store",
        "reopen",
        "static_check",
        "contract_check",
        "cascade",
        "cull",
        "full",
        "extra_seeds",
        "record_failure",
    }


def test_the_architecture_doc_shows_what_the_code_draws():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = doc.split("## The agent graph", 1)[1]
    block = re.search(r"```mermaid\n(.*?)\n```", section, re.S)
    assert block, "no mermaid block under '## The agent graph'"
    assert block[1] == graph_drawing.mermaid().strip(), (
        "docs/architecture.md is out of date: paste the output of "
        "python -c 'from discovery.agent.graph_drawing import mermaid; print(mermaid())'"
    )


# -- the branches -----------------------------------------------------------------------------------
def test_an_unusable_reply_goes_back_to_the_proposer_with_the_reason_a_bounded_number_of_times(make_rt):
    rt = make_rt([None] * (MAX_REPLY_RETRIES + 2))
    steps = slot(rt)
    assert steps == ["propose", "store"] * (1 + MAX_REPLY_RETRIES)
    stored = rows(rt)
    assert len(stored) == 1 + MAX_REPLY_RETRIES == rt.proposed  # each reply is stored and spends the budget
    assert all(r.status is Status.PARSE and r.failed_stage == "reply" and not r.code for r in stored)
    assert all(r.reason == "unusable reply: no code block in the reply" for r in stored)
    assert rt.proposer.feedback == [None] + ["no code block in the reply"] * MAX_REPLY_RETRIES
    calls = rt.archive.llm_calls(rt.run_id)  # each reply's call, on its own candidate
    assert [c["candidate_id"] for c in calls] == [r.id for r in stored]


def test_a_retry_needs_budget_left_and_no_stop(make_rt):
    rt = make_rt([None, None, None], budget=2)
    slot(rt)
    assert len(rows(rt)) == 2 == rt.proposed
    rt = make_rt([None, None])
    assert rt.take_proposal()
    rt.stop.set()  # Ctrl-C while the reply was being written: it is stored, not retried
    list(build_pipeline(rt).stream({"island": 0}, {"recursion_limit": 30}))
    assert [r.status for r in rows(rt)] == [Status.PARSE]


def test_a_usable_reply_after_an_unusable_one_is_evaluated_with_every_attempt_recorded(make_rt):
    rt = make_rt([None, 0.5], leaders=0)
    steps = slot(rt)
    assert steps == ["propose", "store", "propose", "store", "static_check", "contract_check", "cascade", "full"]
    unusable, good = rows(rt)
    assert unusable.status is Status.PARSE and good.status is Status.OK and good.fitness == pytest.approx(0.5)
    calls = rt.archive.llm_calls(rt.run_id)
    assert [c["candidate_id"] for c in calls] == [unusable.id, good.id, good.id]
    assert calls[1]["error"] and not calls[2]["error"]  # the failed attempt before the reply, too


def test_a_duplicate_is_stored_pointing_at_the_original_and_not_evaluated(make_rt):
    rt = make_rt([0.5, 0.5], leaders=0)
    slot(rt)
    assert slot(rt) == ["propose", "store"]
    first, second = rows(rt)
    assert second.status is Status.DUPLICATE and second.duplicate_of == first.id and second.failed_stage == "dedup"
    assert [c["candidate_id"] for c in rt.archive.llm_calls(rt.run_id)][2:] == [second.id, second.id]


def test_a_rejected_candidate_goes_to_record_failure(make_rt):
    rt = make_rt([0.7], FakeEvaluator(reject={0.7}))
    assert slot(rt) == ["propose", "store", "static_check", "record_failure"]
    (row,) = rows(rt)
    assert (row.status, row.failed_stage, row.reason, row.error_line) == (
        Status.POLICY,
        "policy",
        "import of os is not allowed",
        1,
    )


def test_the_cascade_culls_a_weak_candidate(make_rt):
    rt = make_rt([0.9, 0.1], leaders=0)
    slot(rt)
    assert slot(rt) == ["propose", "store", "static_check", "contract_check", "cascade", "cull"]
    weak = rows(rt)[1]
    assert weak.status is Status.CULLED and weak.failed_stage == "cascade" and "cascade fitness 0.100" in weak.reason
    evaluated = {(e.config, e.seed) for e in rt.archive.evaluations(weak.id)}
    assert evaluated == {(c, TASK.suite("discover").seeds[0]) for c in TASK.cascade_configs}


def test_a_leader_gets_its_extra_seeds_one_round_at_a_time(make_rt):
    seeds = TASK.suite("discover").seeds
    rt = make_rt([0.5, 0.6, 0.1], FakeEvaluator(extra_fitness={0.6: -5.0}), cascade_margin=10)
    assert slot(rt)[-3:] == ["full", "extra_seeds", "extra_seeds"]  # the first leader: both rounds
    first = rows(rt)[0]
    assert first.n_seeds == len(seeds) + 2
    # the second leads after its full suite: leadership is decided once, so a bad first extra seed
    # does not stop it (as the fixed "top-k get more seeds" rule did)
    assert slot(rt)[-3:] == ["full", "extra_seeds", "extra_seeds"]
    second = rows(rt)[1]
    assert second.n_seeds == len(seeds) + 2 and second.status is Status.OK
    assert {e.stage for e in rt.archive.evaluations(second.id) if e.seed not in seeds} == {"extra"}
    assert slot(rt)[-1] == "full"  # the third is not the leader (leaders=1): no extra seeds
    assert rows(rt)[2].n_seeds == len(seeds)


def test_a_stored_candidate_resumes_at_the_checks_and_evaluates_only_what_is_missing(make_rt):
    rt = make_rt([], leaders=0)
    added = rt.archive.add_candidate(rt.run_id, name="left", code=program(0.4), code_hash="h", proposer="test")
    cell = (TASK.cascade_configs[0], TASK.suite("discover").seeds[0])
    rt.archive.record_evaluation(added.id, "discover", cell[0], cell[1], "cascade", 0.4)
    steps = list(build_pipeline(rt).stream({"candidate_id": added.id}, {"recursion_limit": 30}))
    assert [node for update in steps for node in update] == [
        "reopen",
        "static_check",
        "contract_check",
        "cascade",
        "full",
    ]
    assert rt.evaluator.evaluated[0] == (0.4, [TASK.cascade_configs[1]], [cell[1]])  # the cascade's missing cell
    kept = [e for e in rt.archive.evaluations(added.id) if (e.config, e.seed) == cell]
    assert [(e.stage, e.fitness) for e in kept] == [("cascade", 0.4)]
    assert rt.archive.get_candidate(added.id).status is Status.OK


def test_an_unavailable_proposer_stops_the_slot_and_its_failed_attempts_are_kept(make_rt):
    rt = make_rt([ProposerUnavailable("llm: LLMUnavailable: 503", records=[call("", error="503"), call("", "503")])])
    with pytest.raises(ProposerUnavailable):
        slot(rt)
    assert rows(rt) == []
    assert [(c["candidate_id"], c["error"]) for c in rt.archive.llm_calls(rt.run_id)] == [(None, "503"), (None, "503")]
