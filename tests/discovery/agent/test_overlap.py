"""Overlap in `discovery run`: no sandbox waits for the LLM, and no LLM call waits for the baselines.

Against a real OpenAI-compatible server on 127.0.0.1 (each reply a second late) and real sandboxed
evaluations, whose start and end times are observed by wrapping the run's own evaluator:

* with ``prefetch`` the first replies are asked for while the reference trains, and several
  requests are in flight at once; with ``prefetch=0`` (the control) the first request waits for
  the reference, so the observation can fail;
* once the budget is spent, a sandbox that the last candidate leaves idle scores the reference on
  the held-out suite while that candidate still trains, and the held-out phase trains nothing twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from discovery.agent.loop import DiscoveryRun
from discovery.archive import Archive
from discovery.config import ModelConfig, RunConfig
from tests.openai_server import FakeOpenAIServer, Reply

SIG = "def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):"
H = "    h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)"
BODIES = (
    "    return F.softplus(1 - beta * h)",
    "    return -1.5 * F.logsigmoid(beta * h)",
    "    return (h - 1 / (4 * beta)) ** 2 * 0.5",
    "    return -F.logsigmoid(beta * h - 0.1)",
    "    return torch.exp(-beta * h)",
    "    return -0.8 * F.logsigmoid(beta * h)",
)
LATENCY = 1.0


def _reply(i: int, body: str) -> Reply:
    """The ``i``-th scripted reply: a distinct valid loss, a second late."""
    code = f"import torch\nimport torch.nn.functional as F\n\n\n{SIG}\n{H}\n{body}\n"
    return Reply(f"<thought>variant {i}</thought>\n<name>variant_{i}</name>\n<code>\n{code}</code>", delay=LATENCY)


def _config(tmp_path, server: FakeOpenAIServer, **overrides: Any) -> RunConfig:
    settings: dict[str, Any] = dict(
        models=[ModelConfig(name="openai/test-model", api_base=server.base_url, api_key_env="FAKE_SERVER_KEY")],
        budget=len(BODIES),
        workers=1,
        heldout_top=0,
        leaders=0,
        seeds=1,
        db=str(tmp_path / "runs.db"),
        llm_timeout=20.0,
        seed=1,
    )
    return RunConfig(**{**settings, **overrides})


class EvaluationClock:
    """Wraps a run's evaluator: (candidate code, suite, start, end) of every evaluation, in wall time."""

    def __init__(self, run: DiscoveryRun):
        self.spans: list[tuple[str, str, float, float]] = []
        self._lock = threading.Lock()
        self.on_end: Callable[[], Any] = lambda: None
        evaluate: Callable[..., Any] = run.rt.evaluator.evaluate

        def timed(code: str, box: Any, suite: str = "discover", **kwargs: Any) -> Any:
            start = time.time()
            try:
                return evaluate(code, box, suite, **kwargs)
            finally:
                with self._lock:
                    self.spans.append((code, suite, start, time.time()))
                self.on_end()

        run.rt.evaluator.evaluate = timed  # type: ignore[method-assign]

    def of(self, code: str, suite: str) -> list[tuple[float, float]]:
        return [(a, b) for c, s, a, b in self.spans if c == code and s == suite]


def _first_request_and_reference_end(tmp_path, monkeypatch, prefetch: int) -> tuple[float, float, list[float]]:
    monkeypatch.setenv("FAKE_SERVER_KEY", "sk-test")
    with FakeOpenAIServer([_reply(i, b) for i, b in enumerate(BODIES)]) as server:
        run = DiscoveryRun(_config(tmp_path, server, prefetch=prefetch))
        clock = EvaluationClock(run)
        result = run.execute()
        starts = sorted(r.time for r in server.chat_requests)
    assert result.status == "finished", result.message
    reference = run.task.baselines[run.task.reference_baseline]
    reference_end = max(end for _, end in clock.of(reference, "discover"))
    with Archive.open_readonly(tmp_path / "runs.db") as archive:
        rows = [r for r in archive.candidates(result.run_id, order_by_fitness=False) if not r.is_baseline]
    assert len(rows) == len(BODIES) and all(r.status.finished for r in rows)
    return starts[0], reference_end, starts


def test_replies_are_asked_for_ahead_and_while_the_reference_trains(tmp_path, monkeypatch):
    first, reference_end, starts = _first_request_and_reference_end(tmp_path, monkeypatch, prefetch=2)
    assert first < reference_end  # the first LLM call overlapped the reference's evaluation
    # the first proposals went out together (3 pipelines, 1 sandbox), not one reply after another
    assert starts[1] - starts[0] < LATENCY / 2, starts


def test_without_prefetch_the_first_request_waits_for_the_reference(tmp_path, monkeypatch):
    first, reference_end, _ = _first_request_and_reference_end(tmp_path, monkeypatch, prefetch=0)
    assert first >= reference_end


def test_the_reference_is_scored_on_heldout_while_the_last_candidate_trains(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_SERVER_KEY", "sk-test")
    # one proposal, two sandboxes; its reply waits until the reference is scored on the discover suite
    # (its cascade and its full stage), so one sandbox is idle while the candidate trains
    reference_scored = threading.Event()
    script = [_reply(0, BODIES[0])]
    script[0].gate = reference_scored
    with FakeOpenAIServer(script) as server:
        run = DiscoveryRun(_config(tmp_path, server, budget=1, workers=2, prefetch=0, heldout_top=1))
        clock = EvaluationClock(run)
        reference = run.task.baselines[run.task.reference_baseline]
        clock.on_end = lambda: len(clock.of(reference, "discover")) == 2 and reference_scored.set()
        result = run.execute()
    assert result.status == "finished", result.message
    with Archive.open_readonly(tmp_path / "runs.db") as archive:
        rows = archive.candidates(result.run_id, order_by_fitness=False)
        candidate = next(r for r in rows if not r.is_baseline)
        ref_row = next(r for r in rows if r.is_baseline)
        assert candidate.status.value == "ok", candidate.reason
        assert candidate.heldout_fitness is not None and ref_row.heldout_fitness is not None
        assert len(archive.evaluations(ref_row.id, "heldout")) == len(run.task.suite("heldout").configs) * len(
            run.task.suite("heldout").seeds
        )
    (ref_start, _), *again = clock.of(reference, "heldout")
    assert not again  # the held-out phase found the reference done and trained nothing
    candidate_spans = clock.of(candidate.code, "discover")
    assert ref_start < max(end for _, end in candidate_spans)  # it overlapped the candidate's training
    assert len(clock.of(candidate.code, "heldout")) == 1
