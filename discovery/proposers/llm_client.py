"""A small, budget-aware, retrying wrapper around ``litellm.completion``.

* one or more :class:`ModelSpec`, one chosen per call by weight with a seeded ``random.Random``;
* transient failures (429, 5xx, connection errors, timeouts) are retried with exponential
  backoff and jitter; once ``max_retries`` retries are spent :class:`LLMUnavailable` is raised
  so a run can stop cleanly; permanent failures (auth, bad request, not found) raise
  :class:`LLMFatalError` at once;
* every attempt, failed or not, becomes a :class:`CallRecord` handed to ``on_call``;
* a cost budget: before each attempt an estimate is reserved (thread-safe, counting calls in
  flight) and the call is refused with :class:`BudgetExceeded` when
  ``spent + reserved + estimate > max_cost_usd``; the reservation is replaced by the actual cost.

litellm is imported lazily (it takes seconds and, unless told otherwise, fetches a price list
from the internet at import; ``LITELLM_LOCAL_MODEL_COST_MAP`` is set before importing it).
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import random  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

from sandbox.text import one_line  # noqa: E402

__all__ = [
    "BudgetExceeded",
    "CallRecord",
    "LLMClient",
    "LLMError",
    "LLMFatalError",
    "LLMUnavailable",
    "ModelSpec",
    "check_model",
]

# Providers whose API key is required unless an explicit api_base (a local/proxy server) is given.
_KEY_WORDS = ("KEY", "TOKEN", "SECRET")
# Placeholder key sent to an explicit api_base when none is configured (local OpenAI-compatible
# servers ignore it, but the openai SDK refuses to build a client without one).
_PLACEHOLDER_KEY = "sk-no-key-required"


# --------------------------------------------------------------------------------------------
# data


@dataclass
class ModelSpec:
    """One model the client may call.

    ``name`` is a litellm model string (``"openai/gpt-4o-mini"``, ``"anthropic/claude-..."``,
    ``"openai/my-model"`` with ``api_base`` for an OpenAI-compatible server). The key comes from
    ``api_key`` if set, else from the environment variable ``api_key_env``, else litellm's
    provider default (``OPENAI_API_KEY``...). ``price_in``/``price_out`` (USD per 1M tokens)
    override litellm's price list; without them and without a litellm price the cost is 0.0.
    """

    name: str
    weight: float = 1.0
    api_base: str | None = None
    api_key_env: str | None = None
    temperature: float = 1.0
    max_tokens: int = 2048
    price_in: float | None = None
    price_out: float | None = None
    api_key: str | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)  # passed through to litellm.completion

    def resolve_key(self) -> str | None:
        if self.api_key:
            return self.api_key
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        return None


@dataclass
class CallRecord:
    """One attempt (successful or not) at a completion."""

    model: str
    prompt_messages: list[dict[str, Any]]
    reply_text: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_s: float
    error: str | None
    attempt: int = 1  # 1-based attempt number within one complete() call
    finish_reason: str | None = None
    retryable: bool | None = None  # for failed attempts: whether the error was transient
    started_at: float = 0.0  # time.time() at the start of the attempt

    @property
    def ok(self) -> bool:
        return self.error is None


class LLMError(Exception):
    """Base class; ``reason`` is a single line suitable for logs and run status."""

    def __init__(self, reason: str, records: Sequence[CallRecord] = ()):
        reason = one_line(reason, 400)
        super().__init__(reason)
        self.reason = reason
        self.records = list(records)


class LLMFatalError(LLMError):
    """A permanent failure (bad key, bad request, unknown model): retrying will not help."""


class LLMUnavailable(LLMError):
    """Transient failures persisted through every retry: the provider is unavailable."""


class BudgetExceeded(LLMError):
    """The call was refused because it could push spending past ``max_cost_usd``."""


# --------------------------------------------------------------------------------------------
# helpers


def _litellm():
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True  # no "Give Feedback / Provider List" banners on errors
    return litellm


def _classify(exc: BaseException) -> bool | None:
    """True: transient (retry); False: permanent; None: not an API error (re-raise as fatal)."""
    litellm = _litellm()
    import openai

    transient = (
        litellm.RateLimitError,
        litellm.InternalServerError,
        litellm.ServiceUnavailableError,
        litellm.BadGatewayError,
        litellm.APIConnectionError,
        litellm.Timeout,
        openai.APIConnectionError,  # includes openai.APITimeoutError
        openai.RateLimitError,
        openai.InternalServerError,
        TimeoutError,
        ConnectionError,
    )
    permanent = (
        litellm.AuthenticationError,
        litellm.BadRequestError,  # includes ContextWindowExceeded, unknown provider...
        litellm.NotFoundError,
        litellm.PermissionDeniedError,
        litellm.UnprocessableEntityError,
        openai.AuthenticationError,
        openai.BadRequestError,
        openai.NotFoundError,
        openai.PermissionDeniedError,
        openai.UnprocessableEntityError,
    )
    if isinstance(exc, transient):
        return True
    if isinstance(exc, permanent):
        return False
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status in (408, 409, 425, 429) or status >= 500
    if isinstance(exc, (litellm.APIError, openai.APIError)):
        return True  # an API error without a status: most likely a garbled/failed response
    return None


_NETWORK_PHRASES = (
    ("connection refused", "connection refused"),
    ("name or service not known", "DNS lookup failed (name or service not known)"),
    ("temporary failure in name resolution", "DNS lookup failed (temporary failure in name resolution)"),
    ("nodename nor servname", "DNS lookup failed"),
    ("no route to host", "no route to host"),
    ("network is unreachable", "network is unreachable"),
    ("connection reset", "connection reset by the server"),
    ("timed out", "timed out"),
)


def network_cause(exc: BaseException) -> str | None:
    """What went wrong on the wire, in words (connection refused, DNS, timeout), from the exception
    chain; None for an error the server answered with. litellm reports every connection failure
    as an APIConnectionError with status 500, which says nothing of the cause."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, socket.gaierror):
            return f"DNS lookup failed ({current.strerror or current})"
        name = type(current).__name__
        if name in ("ConnectTimeout", "ConnectTimeoutError"):
            return "timed out connecting"
        if name in (
            "ReadTimeout",
            "ReadTimeoutError",
            "TimeoutError",
            "APITimeoutError",
            "Timeout",
            "TimeoutException",
        ):
            return "timed out waiting for the reply"
        current = current.__cause__ or current.__context__
    if not isinstance(exc, (ConnectionError, TimeoutError)) and not any(
        t in type(exc).__name__ for t in ("Connection", "Timeout", "Connect")
    ):
        return None
    text = str(exc).lower()
    for phrase, said in _NETWORK_PHRASES:
        if phrase in text:
            return said
    return None


def _error_line(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    name = type(exc).__name__
    cause = network_cause(exc)
    if cause:  # the transport failed: no HTTP status was ever received
        return one_line(f"{name}: {cause}", 300)
    msg = str(exc)
    # litellm prefixes messages with "litellm.RateLimitError: RateLimitError: OpenAIException - ...";
    # keep the useful part.
    msg = msg.strip()
    for prefix in (f"litellm.{name}:", f"{name}:", "OpenAIException -"):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :].strip()
    head = f"{name} ({status})" if isinstance(status, int) else name
    return one_line(f"{head}: {msg.strip()}" if msg.strip() else head, 300)


def _retry_after(exc: BaseException) -> float | None:
    """Seconds from a ``Retry-After`` header (litellm keeps the provider's headers aside)."""
    for headers in (
        getattr(exc, "litellm_response_headers", None),
        getattr(getattr(exc, "response", None), "headers", None),
    ):
        if not headers:
            continue
        try:
            value = headers.get("retry-after")
            if value is not None:
                return max(0.0, float(value))
        except (AttributeError, TypeError, ValueError):
            continue  # an HTTP date or garbage: ignore
    return None


def _tcp_reachable(api_base: str, timeout: float = 2.0) -> str | None:
    parts = urlsplit(api_base if "://" in api_base else f"http://{api_base}")
    host = parts.hostname
    if not host:
        return f"api_base {api_base!r} has no host"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as e:
        return f"api_base {api_base!r}: {e}"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f"api_base {api_base} unreachable ({host}:{port}): {e.strerror or e}"


def check_model(spec: ModelSpec, *, connect_timeout: float = 2.0) -> str | None:
    """Cheap pre-flight check of ``spec`` without sending a completion.

    Returns ``None`` if nothing is wrong, else a one-line error: unknown provider/model, a
    missing API key for a provider that needs one, or an ``api_base`` that refuses a TCP connect.
    """
    litellm = _litellm()
    try:
        _, provider, _, _ = litellm.get_llm_provider(model=spec.name, api_base=spec.api_base)
    except Exception as e:  # noqa: BLE001 - litellm raises BadRequestError / ValueError
        msg = str(e).replace("litellm.BadRequestError:", "").strip()
        return one_line(f"unknown provider/model {spec.name!r}: {msg.splitlines()[0] if msg else e}", 400)

    if spec.api_key_env and not spec.api_key and not os.environ.get(spec.api_key_env):
        return f"API key for {spec.name} missing: environment variable {spec.api_key_env} is not set"
    if not spec.resolve_key() and not spec.api_base:
        try:
            env = litellm.validate_environment(model=spec.name)
        except Exception:  # noqa: BLE001 - best effort only
            env = {}
        missing = [k for k in env.get("missing_keys", []) if any(w in k for w in _KEY_WORDS)]
        if missing:
            return f"API key for {spec.name} ({provider}) missing: set {' or '.join(missing)}"

    if spec.api_base:
        return _tcp_reachable(spec.api_base, timeout=connect_timeout)
    return None


# --------------------------------------------------------------------------------------------
# client


class LLMClient:
    """Call one of ``models`` (chosen by weight) with retries, cost accounting and a budget.

    ``max_retries`` is the number of *retries* after the first attempt. The backoff before
    retry ``n`` (1-based) is ``min(max_delay, base_delay * 2**(n-1))`` scaled by a jitter factor
    in [0.5, 1.0], and at least a server's ``Retry-After`` (capped at ``max_delay``).

    The budget estimate for one attempt is ``per_call_estimate_usd`` if given, else the
    prompt (~4 chars/token) at the input price plus ``max_tokens`` at the output price
    (``ModelSpec.price_in/out`` or litellm's list; an unpriced model is estimated at 0).
    """

    def __init__(
        self,
        models: Sequence[ModelSpec],
        *,
        seed: int | None = 0,
        max_retries: int = 4,
        base_delay: float = 1.0,
        max_delay: float = 30.0,
        timeout: float = 120.0,
        max_cost_usd: float | None = None,
        per_call_estimate_usd: float | None = None,
        on_call: Callable[[CallRecord], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not models:
            raise ValueError("LLMClient needs at least one ModelSpec")
        if any(m.weight < 0 for m in models) or not any(m.weight > 0 for m in models):
            raise ValueError("model weights must be >= 0 with at least one > 0")
        self.models = list(models)
        self.max_retries = max(0, int(max_retries))
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.timeout = timeout
        self.max_cost_usd = max_cost_usd
        self.per_call_estimate_usd = per_call_estimate_usd
        self.on_call = on_call
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._jitter_rng = random.Random(None if seed is None else seed + 1)
        self._lock = threading.Lock()
        self._spent = 0.0
        self._reserved = 0.0
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._calls = 0
        self.delays: list[float] = []  # every backoff slept, in order (for logs and tests)

    # ---- accounting ------------------------------------------------------------------------

    @property
    def total_cost(self) -> float:
        with self._lock:
            return self._spent

    @property
    def reserved_cost(self) -> float:
        with self._lock:
            return self._reserved

    @property
    def total_tokens(self) -> int:
        with self._lock:
            return self._prompt_tokens + self._completion_tokens

    @property
    def total_prompt_tokens(self) -> int:
        with self._lock:
            return self._prompt_tokens

    @property
    def total_completion_tokens(self) -> int:
        with self._lock:
            return self._completion_tokens

    @property
    def calls(self) -> int:
        """Attempts sent so far (including failed ones)."""
        with self._lock:
            return self._calls

    def _prices(self, spec: ModelSpec) -> tuple[float, float] | None:
        """(USD per input token, USD per output token), or None when unknown."""
        if spec.price_in is not None or spec.price_out is not None:
            return (spec.price_in or 0.0) / 1e6, (spec.price_out or 0.0) / 1e6
        try:
            info = _litellm().get_model_info(model=spec.name)
        except Exception:  # noqa: BLE001 - unknown model
            return None
        return float(info.get("input_cost_per_token") or 0.0), float(info.get("output_cost_per_token") or 0.0)

    def estimate_cost(self, spec: ModelSpec, messages: Sequence[dict[str, Any]]) -> float:
        if self.per_call_estimate_usd is not None:
            return self.per_call_estimate_usd
        prices = self._prices(spec)
        if prices is None:
            return 0.0
        prompt_chars = sum(len(str(m.get("content") or "")) for m in messages)
        return prices[0] * (prompt_chars / 4.0) + prices[1] * spec.max_tokens

    def _reserve(self, estimate: float) -> None:
        with self._lock:
            if self.max_cost_usd is not None and self._spent + self._reserved + estimate > self.max_cost_usd:
                raise BudgetExceeded(
                    f"budget exceeded: spent ${self._spent:.4f} + in flight ${self._reserved:.4f}"
                    f" + next call ~${estimate:.4f} > max ${self.max_cost_usd:.4f}"
                )
            self._reserved += estimate
            self._calls += 1

    def _settle(self, estimate: float, cost: float, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            self._reserved = max(0.0, self._reserved - estimate)
            self._spent += cost
            self._prompt_tokens += prompt_tokens
            self._completion_tokens += completion_tokens

    def _cost(self, spec: ModelSpec, response: Any, prompt_tokens: int, completion_tokens: int) -> float:
        if spec.price_in is not None or spec.price_out is not None:
            return (prompt_tokens * (spec.price_in or 0.0) + completion_tokens * (spec.price_out or 0.0)) / 1e6
        try:
            cost = _litellm().completion_cost(completion_response=response)
        except Exception:  # noqa: BLE001 - model not in litellm's price list
            return 0.0
        return float(cost or 0.0)

    # ---- model choice ----------------------------------------------------------------------

    def choose_model(self) -> ModelSpec:
        with self._lock:
            return self._rng.choices(self.models, weights=[m.weight for m in self.models], k=1)[0]

    def _backoff(self, retry: int, exc: BaseException) -> float:
        delay = min(self.max_delay, self.base_delay * (2 ** (retry - 1)))
        with self._lock:
            delay *= self._jitter_rng.uniform(0.5, 1.0)
        after = _retry_after(exc)
        if after is not None:
            delay = max(delay, min(after, self.max_delay))
        return delay

    # ---- calls -----------------------------------------------------------------------------

    def _emit(self, record: CallRecord) -> None:
        if self.on_call is not None:
            self.on_call(record)

    def _attempt(self, spec: ModelSpec, messages: list[dict[str, Any]], attempt: int) -> tuple[CallRecord, Any]:
        """One call; returns its record and the exception (None on success)."""
        litellm = _litellm()
        estimate = self.estimate_cost(spec, messages)
        self._reserve(estimate)
        api_key = spec.resolve_key()
        if api_key is None and spec.api_base:
            api_key = _PLACEHOLDER_KEY
        kwargs: dict[str, Any] = dict(
            model=spec.name,
            messages=messages,
            temperature=spec.temperature,
            max_tokens=spec.max_tokens,
            timeout=self.timeout,
            num_retries=0,
            max_retries=0,  # the openai SDK's own retries
            drop_params=True,  # e.g. temperature on models that reject it
        )
        if spec.api_base:
            kwargs["api_base"] = spec.api_base
        if api_key:
            kwargs["api_key"] = api_key
        kwargs.update(spec.extra)
        started = time.time()
        t0 = time.monotonic()
        try:
            response = litellm.completion(**kwargs)
        except BaseException as exc:
            latency = time.monotonic() - t0
            self._settle(estimate, 0.0, 0, 0)
            if not isinstance(exc, Exception):  # KeyboardInterrupt etc.: record nothing, propagate
                raise
            retryable = _classify(exc)
            record = CallRecord(
                model=spec.name,
                prompt_messages=messages,
                reply_text=None,
                prompt_tokens=0,
                completion_tokens=0,
                cost_usd=0.0,
                latency_s=latency,
                error=_error_line(exc),
                attempt=attempt,
                retryable=bool(retryable),
                started_at=started,
            )
            return record, exc
        latency = time.monotonic() - t0
        try:
            choice = response.choices[0]
            text = choice.message.content or ""
            finish = getattr(choice, "finish_reason", None)
        except (AttributeError, IndexError, TypeError):
            text, finish = "", None
        usage = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = self._cost(spec, response, prompt_tokens, completion_tokens)
        self._settle(estimate, cost, prompt_tokens, completion_tokens)
        record = CallRecord(
            model=spec.name,
            prompt_messages=messages,
            reply_text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost,
            latency_s=latency,
            error=None,
            attempt=attempt,
            finish_reason=finish,
            started_at=started,
        )
        return record, None

    def complete(
        self,
        messages: str | Sequence[dict[str, Any]],
        *,
        model: ModelSpec | str | None = None,
        attempts: list[CallRecord] | None = None,
    ) -> CallRecord:
        """Send ``messages`` (a string is one user message) and return the successful record.

        Raises :class:`BudgetExceeded` (before any attempt that would overrun the budget),
        :class:`LLMFatalError` (permanent error, not retried) or :class:`LLMUnavailable`
        (transient errors through every retry). Each exception carries ``records``: the
        attempts of this call, which were also passed to ``on_call``. ``attempts``, when
        given, receives every attempt of this call too, in order, the successful one last.
        """
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        msgs = [dict(m) for m in messages]
        spec = self._resolve_model(model)
        records: list[CallRecord] = [] if attempts is None else attempts
        for attempt in range(1, self.max_retries + 2):
            try:
                record, exc = self._attempt(spec, msgs, attempt)
            except BudgetExceeded as e:
                e.records = records
                raise
            records.append(record)
            self._emit(record)
            if exc is None:
                return record
            if not record.retryable:
                raise LLMFatalError(f"{spec.name}: {record.error}", records) from exc
            if attempt > self.max_retries:
                raise LLMUnavailable(
                    f"{spec.name} unavailable after {attempt} attempts: {record.error}", records
                ) from exc
            delay = self._backoff(attempt, exc)
            self.delays.append(delay)
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _resolve_model(self, model: ModelSpec | str | None) -> ModelSpec:
        if model is None:
            return self.choose_model()
        if isinstance(model, ModelSpec):
            return model
        for m in self.models:
            if m.name == model:
                return m
        raise ValueError(f"unknown model {model!r}; configured: {[m.name for m in self.models]}")

    def check_models(self) -> dict[str, str]:
        """``check_model`` for every configured model: name -> error (only failing ones)."""
        errors = {}
        for m in self.models:
            err = check_model(m)
            if err:
                errors[m.name] = err
        return errors

    def check_model(self, spec: ModelSpec) -> str | None:
        return check_model(spec)
