"""A real, scripted OpenAI-compatible HTTP server on 127.0.0.1 for tests.

    with FakeOpenAIServer([Reply(status=429), Reply("hello")]) as server:
        litellm.completion(model="openai/test-model", api_base=server.base_url, api_key="sk-test", ...)
        assert len(server.requests) == 2

Each ``POST /v1/chat/completions`` consumes the next scripted :class:`Reply` (the last one
repeats once the script is exhausted). ``GET /v1/models`` lists the models seen so far.
A reply's ``delay`` makes the handler wait (capped at ``MAX_DELAY``); closing the server wakes
every waiting handler, so a test never hangs on shutdown.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOST = "127.0.0.1"
MAX_DELAY = 30.0

_ERROR_TYPES = {
    400: ("invalid_request_error", "bad request"),
    401: ("invalid_request_error", "Incorrect API key provided: sk-test. (fake server)"),
    403: ("permission_denied", "permission denied"),
    404: ("invalid_request_error", "The model does not exist or you do not have access to it."),
    429: ("rate_limit_exceeded", "Rate limit reached for requests (fake server)"),
    500: ("server_error", "The server had an error while processing your request (fake server)"),
    502: ("server_error", "bad gateway (fake server)"),
    503: ("server_error", "The engine is currently overloaded (fake server)"),
}


@dataclass
class Reply:
    """One scripted answer.

    ``content``: the assistant message (status 200). ``status``: HTTP status; errors get an
    OpenAI-style ``{"error": {...}}`` body. ``delay``: seconds to wait before answering. ``gate``: an
    event the answer waits for first (at most ``MAX_DELAY``), so a test can order it after its own events.
    ``body``: a raw response body overriding everything else (e.g. malformed JSON).
    """

    content: str = ""
    status: int = 200
    delay: float = 0.0
    gate: threading.Event | None = None
    body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    json: Any
    time: float


def _count_tokens(text: str) -> int:
    return max(1, len(text.split())) if text else 0


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr logging
        pass

    # ---- helpers ---------------------------------------------------------------------------

    def _read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw or b"null")
        except ValueError:
            return raw.decode("utf-8", "replace")

    def _log(self, payload: Any) -> None:
        # HTTP header names are case-insensitive (httpx sends them lower-case): keep them canonical
        headers = {"-".join(w.capitalize() for w in k.split("-")): v for k, v in self.headers.items()}
        req = Request(self.command, self.path, headers, payload, time.time())
        with self.server.lock:
            self.server.requests.append(req)

    def _send(self, status: int, body: str | bytes, headers: dict[str, str] | None = None) -> None:
        data = body.encode() if isinstance(body, str) else body
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, OSError):
            self.close_connection = True  # the client gave up (e.g. its timeout fired)

    # ---- routes ----------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._log(None)
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            with self.server.lock:
                names = sorted(self.server.models_seen) or ["test-model"]
            data = [{"id": n, "object": "model", "created": 0, "owned_by": "fake"} for n in names]
            self._send(200, json.dumps({"object": "list", "data": data}))
        else:
            self._send(404, json.dumps({"error": {"message": f"no route {self.path}", "type": "not_found"}}))

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        payload = self._read_json()
        self._log(payload)
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._send(404, json.dumps({"error": {"message": f"no route {self.path}", "type": "not_found"}}))
            return
        reply = self.server.next_reply()
        give_up = time.monotonic() + MAX_DELAY
        while reply.gate is not None and not reply.gate.is_set() and time.monotonic() < give_up:
            if self.server.stopping.wait(0.05):  # wake at once when the server closes
                self.close_connection = True
                return
        if reply.delay > 0:
            # Wait, but wake at once when the server closes.
            self.server.stopping.wait(min(reply.delay, MAX_DELAY))
            if self.server.stopping.is_set():
                self.close_connection = True
                return
        if reply.body is not None:
            self._send(reply.status, reply.body, reply.headers)
            return
        if reply.status != 200:
            etype, message = _ERROR_TYPES.get(reply.status, ("server_error", f"error {reply.status}"))
            err = {"error": {"message": message, "type": etype, "param": None, "code": etype}}
            self._send(reply.status, json.dumps(err), reply.headers)
            return
        model = payload.get("model", "test-model") if isinstance(payload, dict) else "test-model"
        with self.server.lock:
            self.server.models_seen.add(model)
        messages = payload.get("messages", []) if isinstance(payload, dict) else []
        prompt_text = " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        prompt_tokens = reply.prompt_tokens if reply.prompt_tokens is not None else _count_tokens(prompt_text)
        completion_tokens = (
            reply.completion_tokens if reply.completion_tokens is not None else _count_tokens(reply.content)
        )
        body = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.content},
                    "logprobs": None,
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        self._send(200, json.dumps(body), reply.headers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, script: list[Reply]):
        super().__init__((HOST, 0), _Handler)
        self.script = list(script) or [Reply("")]
        self.index = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.requests: list[Request] = []
        self.models_seen: set[str] = set()

    def next_reply(self) -> Reply:
        with self.lock:
            reply = self.script[min(self.index, len(self.script) - 1)]
            self.index += 1
            return reply


class FakeOpenAIServer:
    """Context manager running a scripted OpenAI chat-completions server on 127.0.0.1:<free port>."""

    def __init__(self, script: list[Reply] | None = None):
        self._script = list(script or [])
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._last_requests: list[Request] = []

    def start(self) -> FakeOpenAIServer:
        self._server = _Server(self._script)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._server is None:
            return
        self._server.stopping.set()  # wake delayed handlers
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._server.lock:
            self._last_requests = list(self._server.requests)
        self._server = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    @property
    def requests(self) -> list[Request]:
        """Every request received so far (method, path, headers, decoded JSON body)."""
        server = self._server
        if server is None:
            return list(self._last_requests)
        with server.lock:
            return list(server.requests)

    @property
    def chat_requests(self) -> list[Request]:
        return [r for r in self.requests if r.method == "POST"]

    def set_script(self, script: list[Reply]) -> None:
        """Replace the script (and restart it from its first reply)."""
        assert self._server is not None, "server not started"
        with self._server.lock:
            self._server.script = list(script) or [Reply("")]
            self._server.index = 0
