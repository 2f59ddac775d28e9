"""LLMClient against a real local HTTP server speaking the OpenAI API, driven through litellm."""

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

_TESTS = str(Path(__file__).resolve().parents[2])
if _TESTS not in sys.path:
    sys.path.append(_TESTS)  # for tests/openai_server.py (appended: never shadows the real package)

from openai_server import FakeOpenAIServer, Reply  # noqa: E402

from discovery.proposers.llm_client import (  # noqa: E402
    BudgetExceeded,
    CallRecord,
    LLMClient,
    LLMFatalError,
    LLMUnavailable,
    ModelSpec,
    check_model,
    network_cause,
)

MODEL = "openai/test-model"


def spec(server, **kw) -> ModelSpec:
    kw.setdefault("api_key", "sk-test")
    return ModelSpec(MODEL, api_base=server.base_url, **kw)


def client(server, *, records=None, sleeps=None, models=None, **kw) -> LLMClient:
    kw.setdefault("max_retries", 2)
    kw.setdefault("timeout", 5.0)
    kw.setdefault("base_delay", 0.01)
    if sleeps is not None:
        kw["sleep"] = sleeps.append
    return LLMClient(
        models or [spec(server)],
        on_call=None if records is None else records.append,
        **kw,
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- successful calls ------------------------------------------------------------------------


def test_good_reply():
    records: list[CallRecord] = []
    with FakeOpenAIServer([Reply("<code>def loss(): pass</code>", prompt_tokens=11, completion_tokens=7)]) as srv:
        c = client(srv, records=records)
        rec = c.complete([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
        reqs = srv.chat_requests
    assert rec.ok and rec.error is None
    assert rec.reply_text == "<code>def loss(): pass</code>"
    assert (rec.prompt_tokens, rec.completion_tokens) == (11, 7)
    assert rec.model == MODEL and rec.finish_reason == "stop" and rec.attempt == 1
    assert rec.cost_usd == 0.0  # litellm has no price for test-model
    assert rec.latency_s > 0
    assert rec.prompt_messages[1] == {"role": "user", "content": "hi"}
    assert records == [rec]
    assert c.total_tokens == 18 and c.total_cost == 0.0 and c.reserved_cost == 0.0
    assert len(reqs) == 1
    body = reqs[0].json
    assert body["model"] == "test-model"
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    assert body["max_tokens"] == 2048 and body["temperature"] == 1.0
    assert reqs[0].headers.get("Authorization") == "Bearer sk-test"


def test_cost_from_model_prices_and_key_from_env(monkeypatch):
    monkeypatch.setenv("FAKE_LLM_KEY", "sk-from-env")
    with FakeOpenAIServer([Reply("ok", prompt_tokens=1000, completion_tokens=500)]) as srv:
        m = ModelSpec(MODEL, api_base=srv.base_url, api_key_env="FAKE_LLM_KEY", price_in=2.0, price_out=10.0)
        c = client(srv, models=[m])
        rec = c.complete("hello")
        auth = srv.chat_requests[0].headers.get("Authorization")
    assert rec.cost_usd == pytest.approx((1000 * 2.0 + 500 * 10.0) / 1e6)
    assert c.total_cost == pytest.approx(rec.cost_usd)
    assert auth == "Bearer sk-from-env"


def test_openai_sdk_directly_against_fake_server():
    import openai

    with FakeOpenAIServer([Reply("direct hello"), Reply(status=429)]) as srv:
        oc = openai.OpenAI(base_url=srv.base_url, api_key="sk-test", max_retries=0, timeout=5)
        resp = oc.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "hi"}])
        assert resp.choices[0].message.content == "direct hello"
        assert resp.choices[0].finish_reason == "stop"
        assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
        assert resp.id.startswith("chatcmpl-") and resp.model == "test-model"
        with pytest.raises(openai.RateLimitError):
            oc.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "again"}])
        with pytest.raises(openai.RateLimitError):  # script exhausted: the last reply repeats
            oc.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "again"}])
        assert [m.id for m in oc.models.list()] == ["test-model"]
        assert len(srv.chat_requests) == 3


# ---- retries ---------------------------------------------------------------------------------


def test_429_then_200_is_retried_with_backoff():
    records: list[CallRecord] = []
    with FakeOpenAIServer([Reply(status=429), Reply("second time lucky")]) as srv:
        c = client(srv, records=records, base_delay=0.2, max_delay=1.0)  # real sleep
        rec = c.complete("hi")
        times = [r.time for r in srv.chat_requests]
    assert rec.reply_text == "second time lucky" and rec.attempt == 2
    assert len(records) == 2 and records[1] is rec
    assert records[0].error and "429" in records[0].error and "RateLimit" in records[0].error
    assert records[0].retryable is True and records[0].reply_text is None
    assert len(c.delays) == 1 and 0.1 <= c.delays[0] <= 0.2  # base_delay * jitter in [0.5, 1]
    assert times[1] - times[0] >= 0.09  # the backoff really happened between the requests


def test_500_until_unavailable():
    records: list[CallRecord] = []
    sleeps: list[float] = []
    with FakeOpenAIServer([Reply(status=500)]) as srv:
        c = client(srv, records=records, sleeps=sleeps, max_retries=3, base_delay=1.0, max_delay=3.0)
        with pytest.raises(LLMUnavailable) as info:
            c.complete("hi")
        n_requests = len(srv.chat_requests)
    assert n_requests == 4
    assert len(records) == 4 and [r.attempt for r in records] == [1, 2, 3, 4]
    assert all(r.error and "500" in r.error for r in records)
    assert info.value.records == records
    assert "unavailable after 4 attempts" in info.value.reason and "\n" not in info.value.reason
    # exponential backoff with jitter, capped at max_delay
    assert len(sleeps) == 3
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0 and 1.5 <= sleeps[2] <= 3.0
    assert c.total_tokens == 0 and c.calls == 4


def test_retry_after_header_is_honoured():
    sleeps: list[float] = []
    with FakeOpenAIServer([Reply(status=429, headers={"Retry-After": "2"}), Reply("ok")]) as srv:
        c = client(srv, sleeps=sleeps, base_delay=0.01, max_delay=5.0)
        assert c.complete("hi").reply_text == "ok"
    assert sleeps == [2.0]


def test_hanging_request_times_out_then_unavailable():
    records: list[CallRecord] = []
    sleeps: list[float] = []
    t0 = time.monotonic()
    with FakeOpenAIServer([Reply("too late", delay=20)]) as srv:
        c = client(srv, records=records, sleeps=sleeps, max_retries=1, timeout=0.5)
        with pytest.raises(LLMUnavailable) as info:
            c.complete("hi")
        n_requests = len(srv.chat_requests)
    elapsed = time.monotonic() - t0
    assert n_requests == 2 and len(records) == 2 and len(sleeps) == 1
    assert all("Timeout" in r.error for r in records)
    assert all(0.4 <= r.latency_s < 3 for r in records)
    assert "Timeout" in info.value.reason
    assert elapsed < 5  # includes shutting the server down while its handlers are still waiting


def test_401_is_fatal_without_retry():
    records: list[CallRecord] = []
    sleeps: list[float] = []
    with FakeOpenAIServer([Reply(status=401), Reply("never")]) as srv:
        c = client(srv, records=records, sleeps=sleeps)
        with pytest.raises(LLMFatalError) as info:
            c.complete("hi")
        n_requests = len(srv.chat_requests)
    assert n_requests == 1 and len(records) == 1 and sleeps == []
    assert records[0].retryable is False
    assert "Authentication" in info.value.reason and "401" in info.value.reason


@pytest.mark.parametrize("status", [400, 404])
def test_client_errors_are_fatal(status):
    with FakeOpenAIServer([Reply(status=status)]) as srv:
        with pytest.raises(LLMFatalError):
            client(srv, sleeps=[]).complete("hi")
        assert len(srv.chat_requests) == 1


def test_garbled_body_is_transient():
    with FakeOpenAIServer([Reply(body="this is not json")]) as srv:
        with pytest.raises(LLMUnavailable):
            client(srv, sleeps=[], max_retries=1).complete("hi")
        assert len(srv.chat_requests) == 2


# ---- budget ----------------------------------------------------------------------------------


def test_budget_refuses_when_estimate_exceeds_budget():
    records: list[CallRecord] = []
    with FakeOpenAIServer([Reply("ok")]) as srv:
        m = spec(srv, price_in=0.0, price_out=1e6, max_tokens=10)  # $1 per output token -> ~$10 a call
        c = client(srv, models=[m], records=records, max_cost_usd=5.0)
        with pytest.raises(BudgetExceeded) as info:
            c.complete("hi")
        assert srv.chat_requests == []
    assert records == [] and "budget" in info.value.reason
    assert c.total_cost == 0.0 and c.reserved_cost == 0.0


def test_budget_counts_calls_in_flight():
    with FakeOpenAIServer([Reply("slow", delay=0.5, completion_tokens=2), Reply("fast", completion_tokens=2)]) as srv:
        m = spec(srv, price_in=0.0, price_out=1e6, max_tokens=10)  # estimate $10, actual $2 a call
        c = client(srv, models=[m], max_cost_usd=15.0)
        results: list = []
        first = threading.Thread(target=lambda: results.append(c.complete("one")))
        first.start()
        deadline = time.monotonic() + 5
        while not srv.chat_requests and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.reserved_cost == pytest.approx(10.0)
        with pytest.raises(BudgetExceeded):  # 0 spent + 10 in flight + 10 > 15
            c.complete("two")
        first.join(5)
        assert results[0].reply_text == "slow"
        assert c.reserved_cost == 0.0 and c.total_cost == pytest.approx(2.0)
        assert c.complete("three").reply_text == "fast"  # 2 + 10 <= 15
        assert c.complete("four").reply_text == "fast"  # 4 + 10 <= 15
        with pytest.raises(BudgetExceeded):  # 6 + 10 > 15
            c.complete("five")
        assert len(srv.chat_requests) == 3
    assert c.total_cost == pytest.approx(6.0) and c.reserved_cost == 0.0


def test_per_call_estimate_and_concurrent_accounting():
    with FakeOpenAIServer([Reply("ok", prompt_tokens=3, completion_tokens=4)]) as srv:
        c = client(srv, max_cost_usd=1.0, per_call_estimate_usd=0.01)
        errors: list[BaseException] = []

        def work():
            try:
                c.complete("hi")
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    assert errors == []
    assert c.total_tokens == 8 * 7 and c.calls == 8 and c.reserved_cost == 0.0


# ---- model choice ----------------------------------------------------------------------------


def test_weighted_model_choice_is_deterministic():
    with FakeOpenAIServer([Reply("ok")]) as srv:
        models = [
            ModelSpec("openai/model-a", weight=3.0, api_base=srv.base_url, api_key="sk-test"),
            ModelSpec("openai/model-b", weight=1.0, api_base=srv.base_url, api_key="sk-test"),
            ModelSpec("openai/model-never", weight=0.0, api_base=srv.base_url, api_key="sk-test"),
        ]
        c1, c2 = LLMClient(models, seed=7), LLMClient(models, seed=7)
        seq1 = [c1.choose_model().name for _ in range(400)]
        seq2 = [c2.choose_model().name for _ in range(400)]
        assert seq1 == seq2
        assert seq1 != [LLMClient(models, seed=8).choose_model().name for _ in range(400)]
        assert "openai/model-never" not in seq1
        assert 240 <= seq1.count("openai/model-a") <= 360  # ~300 expected
        # end to end: the models the server sees follow the seeded sequence
        c3 = LLMClient(models, seed=7, timeout=5)
        used = [c3.complete("hi").model for _ in range(5)]
        seen = ["openai/" + r.json["model"] for r in srv.chat_requests]
    assert used == seq1[:5] == seen


def test_bad_weights_rejected():
    with pytest.raises(ValueError):
        LLMClient([])
    with pytest.raises(ValueError):
        LLMClient([ModelSpec("openai/x", weight=0.0)])


# ---- pre-flight check ------------------------------------------------------------------------


def test_check_model_unknown_provider():
    err = check_model(ModelSpec("nosuchprovider/x"))
    assert err and "nosuchprovider/x" in err and "\n" not in err


def test_check_model_closed_port():
    port = closed_port()
    err = check_model(ModelSpec(MODEL, api_base=f"http://127.0.0.1:{port}/v1", api_key="sk-test"))
    assert err and "unreachable" in err and f"127.0.0.1:{port}" in err


def test_check_model_ok_and_missing_keys(monkeypatch):
    with FakeOpenAIServer([Reply("unused")]) as srv:
        assert check_model(spec(srv)) is None
        assert check_model(ModelSpec(MODEL, api_base=srv.base_url)) is None  # local server: no key needed
        assert srv.chat_requests == []  # no completion was sent
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    err = check_model(ModelSpec("openai/gpt-4o-mini"))
    assert err and "OPENAI_API_KEY" in err
    monkeypatch.delenv("MY_MISSING_KEY", raising=False)
    err = check_model(ModelSpec("openai/gpt-4o-mini", api_key_env="MY_MISSING_KEY"))
    assert err and "MY_MISSING_KEY" in err
    monkeypatch.setenv("OPENAI_API_KEY", "sk-whatever")
    assert check_model(ModelSpec("openai/gpt-4o-mini")) is None


# ---- misc ------------------------------------------------------------------------------------


def test_import_does_not_load_litellm():
    code = "import sys, discovery.proposers.llm_client; assert 'litellm' not in sys.modules"
    root = str(Path(__file__).resolve().parents[3])
    env = {**os.environ, "PYTHONPATH": root}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env, timeout=60)


def test_fake_server_shutdown_interrupts_delays():
    srv = FakeOpenAIServer([Reply("x", delay=25)]).start()
    import urllib.request

    def hit():
        try:
            urllib.request.urlopen(
                urllib.request.Request(
                    srv.base_url + "/chat/completions", data=b'{"model": "m", "messages": []}', method="POST"
                ),
                timeout=10,
            )
        except Exception:
            pass

    t = threading.Thread(target=hit)
    t.start()
    while not srv.requests:
        time.sleep(0.01)
    t0 = time.monotonic()
    srv.close()
    t.join(5)
    assert time.monotonic() - t0 < 2 and not t.is_alive()
    assert len(srv.requests) == 1  # the log survives close()


# ---- what a failed connection says ------------------------------------------------------------


def test_connection_refused_says_so_not_500():
    records: list[CallRecord] = []
    c = LLMClient(
        [ModelSpec(MODEL, api_base=f"http://127.0.0.1:{closed_port()}/v1", api_key="sk-test")],
        on_call=records.append,
        max_retries=1,
        timeout=5.0,
        base_delay=0.01,
        sleep=lambda s: None,
    )
    with pytest.raises(LLMUnavailable) as info:
        c.complete("hi")
    assert "connection refused" in info.value.reason and "500" not in info.value.reason
    assert records and all("connection refused" in r.error for r in records)


def test_timeout_says_so():
    with FakeOpenAIServer([Reply("too late", delay=20)]) as srv:
        c = client(srv, max_retries=0, timeout=0.5)
        with pytest.raises(LLMUnavailable) as info:
            c.complete("hi")
    assert "timed out" in info.value.reason


def test_dns_failure_is_named_from_the_exception_chain():
    """Built, not sent: a lookup here would leave the machine. The chain is how httpx/openai wrap it."""
    try:
        try:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        except socket.gaierror as inner:
            raise ConnectionError("Connection error.") from inner
    except ConnectionError as outer:
        assert network_cause(outer) == "DNS lookup failed (Name or service not known)"
    assert network_cause(ValueError("a 400 from the server")) is None
