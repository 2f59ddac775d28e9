"""The LLM path of `discovery run` against a real OpenAI-compatible HTTP server on 127.0.0.1,
driven through litellm: every kind of reply, and every kind of failure, is recorded and the run goes on."""

import json

from discovery.agent.loop import DiscoveryRun
from discovery.archive import Archive
from discovery.config import ModelConfig, RunConfig
from tests.openai_server import FakeOpenAIServer, Reply

SIG = "def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):"
H = "    h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)"


def program(body: str) -> str:
    return f"import torch\nimport torch.nn.functional as F\n\n\n{SIG}\n{H}\n{body}\n"


TAGGED = (
    "<thought>Smooth the hinge.</thought>\n<name>soft_hinge</name>\n<code>\n"
    + program("    return F.softplus(1 - beta * h)")
    + "</code>"
)
AS_JSON = json.dumps(
    {"thought": "Scale DPO by 1.5.", "name": "dpo_x15", "code": program("    return -1.5 * F.logsigmoid(beta * h)")}
)
FENCED = (
    "Name: ipo_half\nA gentler IPO target.\n```python\n" + program("    return (h - 1 / (4 * beta)) ** 2 * 0.5") + "```"
)
GARBAGE = "I'm sorry, I cannot help with that."
TRUNCATED = "<thought>x</thought><name>cut</name><code>\n" + program("    return -F.logsigmoid(beta * h")[:-3]
CONTRACT = (
    "<thought>mean</thought><name>scalar_dpo</name><code>\n"
    + program("    return -F.logsigmoid(beta * h).mean()")
    + "</code>"
)
LATE = (
    "<thought>after retries</thought><name>exp_loss</name><code>\n"
    + program("    return torch.exp(-beta * h)")
    + "</code>"
)


def make_config(tmp_path, server, budget: int, retries: int = 3) -> RunConfig:
    return RunConfig(
        models=[ModelConfig(name="openai/test-model", api_base=server.base_url, api_key_env="FAKE_SERVER_KEY")],
        budget=budget,
        workers=1,
        prefetch=1,  # two proposals in flight at most: the script's replies go out in a known order
        heldout_top=0,
        leaders=0,
        seeds=1,
        db=str(tmp_path / "runs.db"),
        llm_timeout=2.0,
        llm_retries=retries,
        seed=1,
    )


def test_every_reply_kind_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_SERVER_KEY", "sk-test")
    script = [
        Reply(TAGGED),
        Reply(AS_JSON),
        Reply(FENCED),
        Reply(GARBAGE),
        Reply(TRUNCATED),
        Reply(CONTRACT),
        Reply(status=429),
        Reply(status=500),
        Reply(LATE, delay=5.0),
        Reply(LATE),
    ]
    with FakeOpenAIServer(script) as server:
        run = DiscoveryRun(make_config(tmp_path, server, budget=7))
        result = run.execute()
        prompts = [json.dumps(r.json) for r in server.chat_requests]
    assert result.status == "finished", result.message
    with Archive.open_readonly(tmp_path / "runs.db") as archive:
        rows = [r for r in archive.candidates(result.run_id, order_by_fitness=False) if not r.is_baseline]
        calls = archive.llm_calls(result.run_id)
    assert len(rows) == 7
    by_name = {r.name: r for r in rows}
    for name in ("soft_hinge", "dpo_x15", "ipo_half", "exp_loss"):
        assert by_name[name].status in ("ok", "culled"), by_name[name]
        assert by_name[name].proposer == "llm:openai/test-model"
        assert "def loss(policy_chosen_logps" in by_name[name].feedback_shown
    unusable = [r for r in rows if r.failed_stage == "reply"]
    assert len(unusable) == 2
    assert any("no code block" in r.reason for r in unusable)
    assert any("does not parse" in r.reason for r in unusable)
    assert by_name["scalar_dpo"].status == "invalid" and by_name["scalar_dpo"].failed_stage == "contract"
    assert "shape ()" in by_name["scalar_dpo"].reason
    # every attempt is in the archive, failed ones with their error
    errors = [c["error"] for c in calls if c["error"]]
    assert len(calls) == len(prompts) == 10
    assert any("429" in e or "RateLimit" in e for e in errors)
    assert any("500" in e or "InternalServer" in e for e in errors)
    assert any("imeout" in e for e in errors)
    assert sum(c["prompt_tokens"] or 0 for c in calls) > 0
    # the reason an earlier reply was unusable goes back to the model in a later prompt
    assert any("no code block" in p for p in prompts[4:])


def test_unreachable_llm_stops_the_run_cleanly(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_SERVER_KEY", "sk-test")
    with FakeOpenAIServer([Reply(status=503)]) as server:
        run = DiscoveryRun(make_config(tmp_path, server, budget=5, retries=1))
        result = run.execute()
        n_requests = len(server.chat_requests)
    assert result.status == "failed"
    assert "proposer unavailable" in result.message and "\n" not in result.message
    assert n_requests <= 4  # one try and one retry per pipeline in flight, then it stops
    with Archive.open_readonly(tmp_path / "runs.db") as archive:
        run_row = archive.get_run(result.run_id)
        assert run_row["status"] == "failed" and "proposer unavailable" in run_row["message"]
        assert all(c["error"] for c in archive.llm_calls(result.run_id))
