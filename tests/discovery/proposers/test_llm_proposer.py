"""LLMProposer through LLMClient and litellm against a real local OpenAI-compatible server."""

import json
import os
import random
import sys
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

_TESTS = str(Path(__file__).resolve().parents[2])
if _TESTS not in sys.path:
    sys.path.append(_TESTS)  # for tests/openai_server.py (appended: never shadows the real package)

from openai_server import FakeOpenAIServer, Reply  # noqa: E402

from discovery.prompting import messages_text  # noqa: E402
from discovery.proposers.base import ProposalContext, Proposed, ProposerUnavailable  # noqa: E402
from discovery.proposers.llm import LLMProposer  # noqa: E402
from discovery.proposers.llm_client import CallRecord, LLMClient, ModelSpec  # noqa: E402
from discovery.records import Candidate  # noqa: E402
from discovery.tasks.preference.task import TASK  # noqa: E402
from sandbox.base import Status  # noqa: E402

MODEL = "openai/test-model"

GOOD_CODE = """import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return 0.5 * torch.exp(-beta * h) + 0.5 * -F.logsigmoid(beta * h)
"""

GOOD_REPLY = f"""<thought>Average the exponential and the logistic losses (CELL).</thought>
<name>cell_blend</name>
<code>
{GOOD_CODE}
</code>"""


def parent_row(i: int, **kw) -> Candidate:
    row = {
        "id": f"c-{i:04d}",
        "run_id": "r-1",
        "name": f"cand_{i}",
        "code": TASK.baselines["dpo"],
        "status": Status.OK,
        "fitness": 0.1 * i,
        "fitness_ci_low": 0.1 * i - 0.02,
        "fitness_ci_high": 0.1 * i + 0.02,
        "n_seeds": 3,
        "per_config": {"clean": {"fitness": 0.1 * i, "ci_low": 0.0, "ci_high": 0.2, "n": 3}},
        "heldout_fitness": 123.456,
        "heldout_per_config": {"motif": {"fitness": 9.87}},
    }
    row.update(kw)
    return Candidate(**row)


def make_ctx(second: bool = False) -> ProposalContext:
    top = [parent_row(i) for i in range(1, 4)]
    return ProposalContext(
        task=TASK,
        run_id="r-1",
        parent=top[-1],
        second_parent=top[0] if second else None,
        top=top,
        diverse=[],
        failures=[],
        reference=parent_row(0, name="dpo"),
        island=0,
        generation=2,
        rng=random.Random(0),
    )


def make_client(server, records=None, **kw) -> LLMClient:
    kw.setdefault("max_retries", 2)
    kw.setdefault("base_delay", 0.001)
    kw.setdefault("max_delay", 0.01)
    kw.setdefault("timeout", 10.0)
    return LLMClient(
        [ModelSpec(MODEL, api_base=server.base_url, api_key="sk-test")],
        on_call=None if records is None else records.append,
        **kw,
    )


def sent_text(request) -> str:
    return "\n".join(str(m.get("content")) for m in request.json["messages"])


def test_good_tagged_reply():
    records: list[CallRecord] = []
    with FakeOpenAIServer([Reply(GOOD_REPLY)]) as server:
        proposer = LLMProposer(make_client(server, records))
        ctx = make_ctx(second=True)
        out = proposer.propose(ctx)
        requests = server.chat_requests
    assert isinstance(out, Proposed) and out.error is None
    assert out.code == GOOD_CODE
    assert out.name == "cell_blend" and out.thought.startswith("Average the exponential")
    assert out.proposer == "llm:openai/test-model" and proposer.name == "llm:openai/test-model"
    assert out.parents == ["c-0003", "c-0001"]
    assert len(requests) == 1
    body = requests[0].json
    assert body["model"] == "test-model"
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    text = sent_text(requests[0])
    assert TASK.slot.signature in text
    assert "123.456" not in text and "heldout" not in text
    assert out.feedback_shown == messages_text(body["messages"])
    call = out.extra["call"]
    assert isinstance(call, CallRecord) and call.ok and call.reply_text == GOOD_REPLY
    assert records == [call]
    assert out.extra["format"] == "tags"


def test_json_and_fenced_replies_accepted():
    json_reply = json.dumps({"thought": "t", "name": "json_loss", "code": GOOD_CODE})
    fenced = f"Name: fenced_loss\n\nSome reasoning.\n\n```python\n{GOOD_CODE}```\n"
    with FakeOpenAIServer([Reply(json_reply), Reply(fenced)]) as server:
        proposer = LLMProposer(make_client(server))
        first, second = proposer.propose(make_ctx()), proposer.propose(make_ctx())
    assert (first.name, first.code) == ("json_loss", GOOD_CODE)
    assert (second.name, second.code) == ("fenced_loss", GOOD_CODE)
    assert first.parents == ["c-0003"]


def test_garbage_reply_is_an_error_not_an_exception():
    with FakeOpenAIServer([Reply("I am sorry, I cannot help with that.")]) as server:
        out = LLMProposer(make_client(server)).propose(make_ctx())
    assert out.code is None
    assert out.error == "no code block or <code> tag found"
    assert out.proposer == "llm:openai/test-model"
    assert out.feedback_shown.startswith("[system]\n") and TASK.slot.signature in out.feedback_shown
    assert out.parents == ["c-0003"] and out.name
    assert out.extra["call"].reply_text.startswith("I am sorry")


def test_code_without_slot_and_truncated_reply():
    wrong = "<name>x</name><code>def something_else(a):\n    return a\n</code>"
    cut = "<thought>I will write a very long"
    with FakeOpenAIServer([Reply(wrong), Reply(cut, finish_reason="length")]) as server:
        proposer = LLMProposer(make_client(server))
        first, second = proposer.propose(make_ctx()), proposer.propose(make_ctx())
    assert first.code is None and first.error == "code does not define loss(...)"
    assert second.code is None and "cut off at the token limit" in second.error


def test_error_feedback_reaches_the_request():
    with FakeOpenAIServer([Reply(GOOD_REPLY)]) as server:
        LLMProposer(make_client(server)).propose(make_ctx(), error_feedback="code does not parse: line 3")
        text = sent_text(server.chat_requests[0])
    assert "Your previous reply could not be used" in text and "code does not parse: line 3" in text


def test_server_errors_beyond_retries_raise_unavailable():
    records: list[CallRecord] = []
    with FakeOpenAIServer([Reply(status=500)]) as server:
        proposer = LLMProposer(make_client(server, records, max_retries=2))
        with pytest.raises(ProposerUnavailable) as info:
            proposer.propose(make_ctx())
        n_requests = len(server.chat_requests)
    assert n_requests == 3 and len(records) == 3
    message = str(info.value)
    assert "\n" not in message and "LLMUnavailable" in message and "500" in message


def test_retry_then_success():
    with FakeOpenAIServer([Reply(status=503), Reply(GOOD_REPLY)]) as server:
        out = LLMProposer(make_client(server)).propose(make_ctx())
    assert out.code == GOOD_CODE and out.extra["call"].attempt == 2


def test_fatal_error_raises_unavailable():
    with FakeOpenAIServer([Reply(status=401)]) as server:
        with pytest.raises(ProposerUnavailable, match="LLMFatalError"):
            LLMProposer(make_client(server)).propose(make_ctx())
        assert len(server.chat_requests) == 1


def test_budget_exceeded_raises_unavailable():
    with FakeOpenAIServer([Reply(GOOD_REPLY)]) as server:
        client = make_client(server, max_cost_usd=0.01, per_call_estimate_usd=1.0)
        with pytest.raises(ProposerUnavailable, match="budget exceeded"):
            LLMProposer(client).propose(make_ctx())
        assert server.chat_requests == []
