"""End-to-end throughput of ``discovery run`` with an LLM proposer: candidates evaluated per hour.

    python bench/throughput.py [--replies N] [--latency 2] [--workers 2] [--keep]
    python bench/throughput.py --tree /tmp/base             # another checkout's code instead
    python bench/throughput.py --compare /tmp/base [--repeats N]
    python bench/throughput.py --check-stream               # what the current tree makes of each reply

Method. A scripted OpenAI-compatible server (stdlib ``ThreadingHTTPServer`` on 127.0.0.1:
``POST /v1/chat/completions``, ``GET /v1/models``) answers every chat request after a fixed
latency (``--latency``, 2 s) with the next reply of a FIXED stream, in the order the requests
arrive (a counter under a lock), whatever the prompt says. The stream (``STREAM``, 45 replies,
the same for every run) mixes, in the reply formats the proposer parses (tags, JSON, markdown):

* 27 valid preference losses, each a distinct program (DPO with other beta scalings, hinge and
  squared hinge, IPO variants, label smoothing, robust DPO, exponential, focal, Huber, mixes...);
* 9 failing programs: one raises, NaN output, wrong shape, wrong dtype, no gradient, a
  TypeError (a bad keyword), ``import os`` (the static policy), a syntax error (which the reply
  parser already rejects, so the archive records it as an unusable reply), and one that raises
  only at ``beta > 0.3`` (passes the contract check, fails in training);
* 7 duplicates of earlier replies (one of the reference baseline, DPO) differing in comments,
  docstrings, local names, annotations, ``2`` vs ``2.0`` or reply format, so that the
  normalised code hash matches;
* 2 malformed replies with no usable code.

Requests beyond the stream (there should be none: the budget is the stream's length and every
reply, usable or not, spends one) get a no-code reply and are counted.

The bench then runs the real command line as a subprocess, ``python -m discovery run --task
preference --workers 2 --model openai/bench-model --api-base http://127.0.0.1:PORT/v1 --budget
<len(stream)> --db <fresh file> --seed 0 --quiet``, with a fresh archive, a fresh
``DISCOVERY_CACHE`` (reference policies and scores are rebuilt: a cold start, as on a new
machine; ``--warm-cache`` primes one cache per tree first, untimed, with ``discovery baselines
--only dpo``, as on a machine that has run the task before: the held-out suite's environments,
salted by each archive's secret, are built afresh either way) and a temporary working
directory (so a checkout in the current directory is never imported: by default the
interpreter's installed ``discovery`` runs, an editable checkout or a wheel). ``--tree PATH``
runs another checkout instead (``PYTHONPATH=PATH``, with the
interpreter's editable-install finder removed so nothing of the installed tree leaks in; the
bench checks where ``discovery`` was imported from). Wall time is from process start to exit:
start-up, the reference baseline, every proposal, the cascade and full suites, extra seeds for
the leaders and the held-out phase at the end.

What is printed, from the archive (plain SQL on ``runs``, ``candidates`` and ``llm_calls``, so
an older checkout's archive reads the same):

* **fully evaluated**: proposals (baselines excluded) whose evaluation reached a terminal verdict
  by running in the sandbox: status ``ok`` or ``culled``, or a failure at the contract,
  cascade, full or held-out stage (error, invalid, timeout, memory, output, crashed).
  Duplicates, unusable replies (``parse``), static-policy rejections (``policy``: nothing ran)
  and anything still pending are excluded. ``ok`` is also counted on its own;
* **distinct programs**: proposals with code that were not duplicates (different normalised
  hashes; policy rejections and failures included);
* **evaluated per hour** = fully evaluated / wall seconds x 3600;
* the best ``ok`` candidate's fitness with its 95% CI and number of seeds (the columns
  ``fitness``, ``fitness_ci_low``, ``fitness_ci_high``, ``n_seeds``), and the reference's;
* when the first LLM request arrived (seen by the server) and, from ``llm_calls``
  (``created_at`` minus ``latency_s``), when the first call started, relative to process start.

``--compare PATH`` runs the current tree and PATH alternately (``--repeats`` times each, the
order swapped every repeat so that load drifts hit both alike) and prints the ratio
current/before of the median candidates evaluated per hour and the best fitness of each. The
last line is always a one-line summary. The machine's load average is printed at the start
and end of each run: on shared cores it moves the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
MODEL = "bench-model"

# ============================================================================================
# the reply stream

SIG = "def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):"
H = "    h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)"
A = "    a = policy_chosen_logps - reference_chosen_logps"
B = "    b = policy_rejected_logps - reference_rejected_logps"
IMPORTS = "import torch\nimport torch.nn.functional as F"
IMPORTS_MATH = "import math\n\nimport torch\nimport torch.nn.functional as F"

#: what a reply should become in the archive (``--check-stream`` checks the first four here)
VALID, DUPLICATE, UNUSABLE, POLICY, CONTRACT, TRAIN = "valid", "duplicate", "unusable", "policy", "contract", "train"


@dataclass(frozen=True)
class Entry:
    """One scripted reply: its kind in the mix, a short name, the reply text and what it should become."""

    kind: str  # valid | failing | duplicate | malformed
    name: str
    reply: str
    expect: str  # VALID | DUPLICATE | UNUSABLE | POLICY | CONTRACT | TRAIN
    duplicate_of: str = ""  # the earlier entry (or "baseline:dpo") with the same normalised code


def program(*body: str, imports: str = IMPORTS) -> str:
    """A candidate program: imports, the slot's signature, ``h = a - b``, then ``body`` lines."""
    return "\n".join([imports, "", "", SIG, *body]) + "\n"


def tags(name: str, thought: str, code: str) -> str:
    """A reply in the format the system prompt asks for."""
    return f"<thought>{thought}</thought>\n<name>{name}</name>\n<code>\n{code}</code>\n"


def as_json(name: str, thought: str, code: str) -> str:
    """A reply as one JSON object, some prose around it."""
    return "Here is my proposal.\n" + json.dumps({"thought": thought, "name": name, "code": code}) + "\n"


def markdown(name: str, thought: str, code: str) -> str:
    """A reply as prose with a Name line and a fenced Python block."""
    return f"Name: {name}\n\n{thought}\n\n```python\n{code}```\n"


def _valid(name: str, thought: str, *body: str, fmt: Any = tags, imports: str = IMPORTS) -> Entry:
    return Entry("valid", name, fmt(name, thought, program(*body, imports=imports)), VALID)


def _failing(name: str, expect: str, *body: str, imports: str = IMPORTS) -> Entry:
    return Entry("failing", name, tags(name, "A bolder variant.", program(*body, imports=imports)), expect)


def _duplicate(of: str, name: str, code: str, fmt: Any = tags) -> Entry:
    return Entry("duplicate", name, fmt(name, "Revisit a good idea.", code), DUPLICATE, duplicate_of=of)


def build_stream() -> list[Entry]:
    """The fixed stream, in serving order (27 valid, 9 failing, 7 duplicates, 2 malformed).

    Its first 12 replies are themselves a mix (7 valid, 2 failing, 2 duplicates, 1 malformed),
    for ``--replies 12`` smoke runs. A duplicate comes at least 4 replies after its original,
    so that the original is stored first even with several requests in flight.
    """
    logistic = "    return -F.logsigmoid(beta * h)"
    s: list[Entry] = [
        _valid(
            "dpo_beta2", "Sharper logistic: double the effective beta.", H, "    return -F.logsigmoid(2 * beta * h)"
        ),
        _valid("soft_hinge", "A smooth hinge: softplus of the margin.", H, "    return F.softplus(1 - beta * h)"),
        _failing("margin_todo", CONTRACT, H, '    raise NotImplementedError("TODO: the margin schedule")'),
        _valid(
            "ipo_quarter",
            "IPO with a smaller target margin.",
            H,
            "    return (h - 1 / (4 * beta)) ** 2",
            fmt=as_json,
        ),
        _valid(
            "cdpo_01",
            "Label smoothing 0.1 against noisy preferences.",
            H,
            "    eps = 0.1",
            "    return -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)",
        ),
        Entry("malformed", "refusal", "I'm sorry, but I can't write that loss function right now.", UNUSABLE),
        _duplicate(
            "baseline:dpo",
            "plain_dpo",
            "import math\n\nimport torch\nimport torch.nn.functional as F\n\n\n"
            f"{SIG}\n"
            "    # back to basics: the DPO loss\n"
            "    margin = (policy_chosen_logps - reference_chosen_logps) - "
            "(policy_rejected_logps - reference_rejected_logps)\n"
            "    return -F.logsigmoid(beta * margin)\n",
        ),
        _valid("exp_loss", "An exponential loss, as in boosting.", H, "    return torch.exp(-beta * h)", fmt=markdown),
        _failing("nan_guard", CONTRACT, H, '    return -F.logsigmoid(beta * h) * float("nan")'),
        _valid(
            "squared_hinge", "Square the hinge for a smoother gradient.", H, "    return torch.relu(1 - beta * h) ** 2"
        ),
        _duplicate(
            "dpo_beta2",
            "dpo_double_beta",
            f"{IMPORTS}\n\n\n{SIG}\n"
            '    """Twice the usual beta."""\n'
            "    log_ratio = (policy_chosen_logps - reference_chosen_logps) - (\n"
            "        policy_rejected_logps - reference_rejected_logps\n"
            "    )\n"
            "    return -F.logsigmoid(2.0 * beta * log_ratio)  # a sharper sigmoid\n",
        ),
        _valid("dpo_margin", "Ask for a fixed margin of 0.5 nats.", H, "    return -F.logsigmoid(beta * h - 0.5)"),
        # ---- 12 above: the smoke mix
        _failing("env_scaled", POLICY, H, logistic, imports="import os\n\n" + IMPORTS),
        _valid("ipo_scaled", "IPO scaled down by 10.", H, "    return 0.1 * (h - 1 / (2 * beta)) ** 2"),
        _valid(
            "cdpo_03",
            "Heavier label smoothing for the noisy configurations.",
            H,
            "    eps = 0.3",
            "    return -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)",
        ),
        _valid(
            "dpo_ipo_mix",
            "Logistic loss plus a small IPO regulariser.",
            H,
            "    return -F.logsigmoid(beta * h) + 0.01 * (h - 1 / (2 * beta)) ** 2",
        ),
        _duplicate(
            "soft_hinge",
            "smooth_hinge",
            f"{IMPORTS}\n\n\n{SIG}\n"
            '    """softplus(1 - beta * h): a hinge without the kink."""\n'
            f"{H}\n"
            "    return F.softplus(1 - beta * h)\n",
            fmt=as_json,
        ),
        _failing("column_loss", CONTRACT, H, "    return -F.logsigmoid(beta * h).unsqueeze(1)"),
        _valid(
            "cell_03",
            "Blend 30% exponential and 70% logistic.",
            H,
            "    x = beta * h",
            "    return 0.3 * torch.exp(-x) + 0.7 * -F.logsigmoid(x)",
        ),
        _valid("sigmoid_loss", "A bounded sigmoid loss.", H, "    return 1 - torch.sigmoid(beta * h)"),
        _valid(
            "robust_01",
            "Robust DPO with a 10% flip rate.",
            H,
            "    eps = 0.1",
            "    return (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)",
        ),
        _failing("broken_paren", UNUSABLE, H, "    return -F.logsigmoid(beta * h"),
        _valid(
            "clipped_logistic",
            "Stop pushing pairs that are already well separated.",
            H,
            "    return -F.logsigmoid(torch.clamp(beta * h, max=5.0))",
        ),
        _valid("tanh_loss", "A tanh-shaped bounded loss.", H, "    return 1 - torch.tanh(beta * h)"),
        _duplicate(
            "ipo_quarter",
            "ipo_small_target",
            f"{IMPORTS}\n\n\n{SIG}\n"
            "    diff: torch.Tensor = (policy_chosen_logps - reference_chosen_logps) - "
            "(policy_rejected_logps - reference_rejected_logps)\n\n"
            "    return (diff - 1/(4*beta))**2\n",
        ),
        _valid(
            "anchor_chosen",
            "Logistic loss plus a pull on the chosen log-ratio.",
            A,
            B,
            "    return -F.logsigmoid(beta * (a - b)) - 0.1 * F.logsigmoid(beta * a)",
        ),
        _failing("double_precision", CONTRACT, H, "    return (-F.logsigmoid(beta * h)).double()"),
        _valid(
            "nca_quarter",
            "NCA with lighter rejected terms.",
            A,
            B,
            "    return -F.logsigmoid(beta * a) - 0.25 * F.logsigmoid(-beta * a) - 0.25 * F.logsigmoid(-beta * b)",
        ),
        _valid(
            "sppo_quarter",
            "SPPO-hard with a smaller target.",
            A,
            B,
            "    return (a - 1 / (4 * beta)) ** 2 + (b + 1 / (4 * beta)) ** 2",
        ),
        Entry(
            "malformed",
            "wrong_function",
            markdown(
                "objective",
                "An objective written as a separate function.",
                f"{IMPORTS}\n\n\ndef objective(chosen, rejected, beta):\n"
                "    return -F.logsigmoid(beta * (chosen - rejected))\n",
            ),
            UNUSABLE,
        ),
        _valid(
            "dpo_sqrt_beta",
            "Scale the margin by sqrt(beta) rather than beta.",
            H,
            "    return -F.logsigmoid(math.sqrt(beta) * h)",
            imports=IMPORTS_MATH,
        ),
        _duplicate(
            "exp_loss",
            "exponential",
            f"{IMPORTS}\n\n\n{SIG}\n"
            "    # exponential loss\n"
            "    z = (policy_chosen_logps - reference_chosen_logps) - "
            "(policy_rejected_logps - reference_rejected_logps)\n"
            "    return torch.exp(-beta * z)\n",
            fmt=as_json,
        ),
        _valid(
            "focal_dpo",
            "Focal weighting: down-weight easy pairs.",
            H,
            "    p = torch.sigmoid(beta * h)",
            "    return -((1 - p) ** 2) * F.logsigmoid(beta * h)",
        ),
        _failing("frozen_loss", CONTRACT, H, "    return (-F.logsigmoid(beta * h)).detach()"),
        _valid(
            "huber_ipo",
            "A Huber version of IPO, robust to outlying margins.",
            H,
            "    target = torch.full_like(h, 1 / (2 * beta))",
            '    return F.smooth_l1_loss(h, target, reduction="none")',
        ),
        _valid(
            "reweighted_logistic",
            "Weight hard pairs up, without a gradient through the weight.",
            H,
            "    w = 1 + 0.5 * torch.sigmoid(-beta * h).detach()",
            "    return w * -F.logsigmoid(beta * h)",
        ),
        _duplicate(
            "cdpo_01",
            "smoothed_dpo",
            f"{IMPORTS}\n\n\n{SIG}\n"
            f"{H}\n"
            "    smoothing = 0.10  # conservative DPO\n"
            "    return -(1 - smoothing) * F.logsigmoid(beta * h) - smoothing * F.logsigmoid(-beta * h)\n",
            fmt=markdown,
        ),
        _valid("dpo_beta3", "Even sharper: three times beta.", H, "    return -F.logsigmoid(3 * beta * h)"),
        _failing("logsigmoid_dim", CONTRACT, H, "    return -F.logsigmoid(beta * h, dim=0)"),
        _valid(
            "gated_exp_01",
            "DiscoPOP's gate with a wider temperature.",
            H,
            "    x = beta * h",
            "    gate = torch.sigmoid(x / 0.1)",
            "    return (1 - gate) * -F.logsigmoid(x) + gate * torch.exp(-x)",
        ),
        _valid(
            "kto_nomean",
            "Paired KTO without the batch KL term.",
            A,
            B,
            "    return (1 - torch.sigmoid(beta * a)) + (1 - torch.sigmoid(-beta * b))",
        ),
        _duplicate(
            "squared_hinge",
            "hinge_squared",
            f"{IMPORTS}\n\n\n{SIG}\n"
            "    gap = (policy_chosen_logps - reference_chosen_logps) - "
            "(policy_rejected_logps - reference_rejected_logps)\n"
            "    return torch.relu(1 - beta * gap)**2  # the hinge, squared\n",
        ),
        _failing(
            "beta_guard",
            TRAIN,
            H,
            "    if beta > 0.3:",
            '        raise ValueError("beta above 0.3 is not supported")',
            logistic,
        ),
        _valid("dpo_beta_half", "Softer logistic: half the beta.", H, "    return -F.logsigmoid(0.5 * beta * h)"),
        _valid(
            "logistic_hinge",
            "Logistic loss plus a hinge on small margins.",
            H,
            "    return -F.logsigmoid(beta * h) + 0.5 * torch.relu(0.5 - beta * h)",
        ),
    ]
    return s


STREAM: list[Entry] = build_stream()

#: the reply to a request beyond the stream (counted; there should be none)
OVERFLOW_REPLY = "The stream of scripted replies is exhausted."


def check_stream(stream: Sequence[Entry]) -> int:
    """What the current tree makes of each reply (parser, normalised hash, static policy, the contract
    check in this process); prints one line per reply and returns the number of mismatches."""
    from discovery.evaluation import Evaluator
    from discovery.proposers.codehash import normalized_hash
    from discovery.proposers.reply_parser import ReplyError, parse_reply
    from discovery.tasks import get_task

    task = get_task("preference")
    evaluator = Evaluator(task)
    hashes = {f"baseline:{n}": normalized_hash(src) for n, src in task.baselines.items()}
    seen: dict[str, str] = {h: n for n, h in hashes.items()}
    bad = 0
    for i, e in enumerate(stream, 1):
        try:
            code = parse_reply(e.reply, task.slot.name).code
        except ReplyError as exc:
            got, why = UNUSABLE, exc.reason
        else:
            h = normalized_hash(code)
            hashes[e.name] = h
            if h in seen:
                got, why = DUPLICATE, f"same hash as {seen[h]}"
            elif (rejected := evaluator.static_check(code)) is not None:
                got, why = POLICY, rejected.reason
            else:
                seen[h] = e.name
                namespace: dict[str, Any] = {}
                exec(code, namespace)  # our own scripted programs
                try:
                    task.contract_check(namespace[task.slot.name])
                    got, why = (TRAIN, "passes the contract") if e.expect == TRAIN else (VALID, "passes the contract")
                except Exception as exc:  # noqa: BLE001 - any failure is the finding
                    got, why = CONTRACT, f"{type(exc).__name__}: {exc}"
        if e.kind == "duplicate" and hashes.get(e.duplicate_of) != hashes.get(e.name):
            got, why = "not-duplicate", f"hash differs from {e.duplicate_of}"
        ok = got == e.expect
        bad += not ok
        print(f"{i:3d} {'ok ' if ok else 'BAD'} {e.kind:9s} {e.name:20s} expect {e.expect:9s} got {got}: {why[:70]}")
    counts = Counter(e.kind for e in stream)
    print(
        f"{len(stream)} replies: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f"; {bad} mismatch(es)"
    )
    return bad


# ============================================================================================
# the scripted server


class _Handler(BaseHTTPRequestHandler):
    server: ScriptedServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep stderr quiet
        pass

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._send(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        try:
            request = json.loads(raw or b"{}")
        except ValueError:
            request = None
        if not isinstance(request, dict):
            request = {}
        content = self.server.next_reply()
        if self.server.stopping.wait(self.server.latency):  # closing: answer nothing
            self.close_connection = True
            return
        prompt = " ".join(str(m.get("content", "")) for m in request.get("messages", []) if isinstance(m, dict))
        prompt_tokens, completion_tokens = max(1, len(prompt.split())), max(1, len(content.split()))
        self._send(
            200,
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": request.get("model", MODEL),
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )


class ScriptedServer(ThreadingHTTPServer):
    """An OpenAI-compatible chat server on 127.0.0.1:<free port> serving ``replies`` in request order.

    Every chat request waits ``latency`` seconds, then gets the next reply (requests beyond the
    stream get :data:`OVERFLOW_REPLY`). ``arrivals`` holds the ``time.monotonic()`` of each
    chat request. Use as a context manager: it serves from a thread and closing wakes waiting
    handlers.
    """

    daemon_threads = True

    def __init__(self, replies: Sequence[str], latency: float):
        super().__init__((HOST, 0), _Handler)
        self.replies = list(replies)
        self.latency = latency
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.arrivals: list[float] = []
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/v1"

    @property
    def overflow(self) -> int:
        """Requests beyond the stream."""
        with self.lock:
            return max(0, len(self.arrivals) - len(self.replies))

    def next_reply(self) -> str:
        """The next reply in the stream (thread-safe), noting when the request arrived."""
        with self.lock:
            index = len(self.arrivals)
            self.arrivals.append(time.monotonic())
        return self.replies[index] if index < len(self.replies) else OVERFLOW_REPLY

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


# ============================================================================================
# the runner

#: run a checkout given on PYTHONPATH: drop the interpreter's editable-install finders first, or
#: modules the checkout lacks on disk (discovery.prompting.templates) would come from the installed tree
TREE_BOOT = (
    "import sys\nsys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in getattr(f, '__module__', '')]\n"
)
RUN_MODULE = "import runpy\nrunpy.run_module('discovery', run_name='__main__', alter_sys=True)\n"
PROBE = "import discovery\nprint(discovery.__file__)\n"


@dataclass
class Measurement:
    """One run of the command line and what its archive says."""

    label: str
    imported_from: str
    wall_s: float
    returncode: int
    load: tuple[float, float]
    requests: int
    overflow: int
    first_request_s: float | None
    log_tail: str
    run_status: str = ""
    run_message: str = ""
    by_status: Counter[str] = field(default_factory=Counter)
    evaluated: int = 0
    ok: int = 0
    distinct: int = 0
    proposals: int = 0
    best: dict[str, Any] | None = None
    reference: dict[str, Any] | None = None
    llm_calls: int = 0
    llm_errors: int = 0
    first_call_s: float | None = None

    @property
    def per_hour(self) -> float:
        return self.evaluated / self.wall_s * 3600 if self.wall_s > 0 else 0.0


def _command(python: str, tree: Path | None, code: str = RUN_MODULE) -> list[str]:
    """The command line that runs ``code`` (default: ``python -m discovery``), with a tree's boot prefix."""
    if tree is None and code == RUN_MODULE:
        return [python, "-m", "discovery"]
    return [python, "-c", (TREE_BOOT if tree is not None else "") + code]


def _environment(tree: Path | None, cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        OPENAI_API_KEY="sk-bench-dummy",
        DISCOVERY_CACHE=str(cache),
        PYTHONUNBUFFERED="1",
    )
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _imported_from(python: str, tree: Path | None, env: dict[str, str], cwd: Path) -> str:
    """Where the run's ``discovery`` package comes from (checked against ``tree`` when one is given)."""
    out = subprocess.run(_command(python, tree, PROBE), env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        sys.exit(f"cannot import discovery: {out.stderr.strip().splitlines()[-1:]}")
    path = Path(out.stdout.strip()).resolve().parent
    if tree is not None and tree.resolve() not in path.parents:
        sys.exit(f"--tree {tree}: discovery was imported from {path}, not from the tree")
    return str(path)


def warm_cache(label: str, args: argparse.Namespace, tree: Path | None) -> Path:
    """A cache directory primed as on a machine that has run the task before: the discover suite's
    reference policies and scores built by ``discovery baselines --only dpo`` (untimed)."""
    cache = Path(tempfile.mkdtemp(prefix=f"throughput-cache-{label}-"))
    work = cache / "work"
    work.mkdir()
    env = _environment(tree, cache)
    cmd = _command(args.python, tree) + ["baselines", "--task", "preference", "--only", "dpo", "--suite", "discover"]
    start = time.monotonic()
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=args.timeout)
    shutil.rmtree(work, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"[{label}] priming the cache failed: {(done.stderr or done.stdout)[-500:]}")
    print(f"[{label}] cache {cache} primed in {time.monotonic() - start:.1f} s (untimed)", flush=True)
    return cache


def run_once(
    label: str, stream: Sequence[Entry], args: argparse.Namespace, tree: Path | None, cache: Path | None = None
) -> Measurement:
    """One ``discovery run`` against a fresh scripted server and archive, and a fresh cache unless
    ``cache`` (a primed one, :func:`warm_cache`) is given; the archive read back."""
    root = Path(tempfile.mkdtemp(prefix="throughput-"))
    work, db, log = root / "work", root / "runs.db", root / "run.log"
    cache = cache or root / "cache"
    work.mkdir()
    env = _environment(tree, cache)
    imported = _imported_from(args.python, tree, env, work)
    with ScriptedServer([e.reply for e in stream], args.latency) as server:
        cmd = _command(args.python, tree) + [
            "run",
            "--task",
            "preference",
            "--workers",
            str(args.workers),
            "--model",
            f"openai/{MODEL}",
            "--api-base",
            server.base_url,
            "--budget",
            str(len(stream)),
            "--db",
            str(db),
            "--seed",
            "0",
            "--quiet",
        ]
        load0 = os.getloadavg()[0]
        print(f"[{label}] discovery from {imported}; load average {load0:.2f}; archive {db}", flush=True)
        with open(log, "w") as out:
            start_wall, start = time.time(), time.monotonic()
            proc = subprocess.Popen(
                cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                code = proc.wait(timeout=args.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the run and its sandboxes: our own process group
                code = proc.wait()
            wall = time.monotonic() - start
        arrivals = list(server.arrivals)
        overflow = server.overflow
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    m = Measurement(
        label=label,
        imported_from=imported,
        wall_s=wall,
        returncode=code,
        load=(load0, os.getloadavg()[0]),
        requests=len(arrivals),
        overflow=overflow,
        first_request_s=(arrivals[0] - start) if arrivals else None,
        log_tail=tail,
    )
    if db.exists():
        read_archive(db, m, start_wall)
    if args.keep:
        print(f"[{label}] kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return m


# ============================================================================================
# the report

#: statuses of a proposal that ran in the sandbox and ended in a failure of its code
RAN_AND_FAILED = ("error", "invalid", "timeout", "memory", "output", "crashed", "contract")  # contract: a v3 archive
#: stages where nothing ran (an unusable reply, the static policy, the duplicate check)
NOT_RUN_STAGES = ("reply", "static", "dedup")


def _utc(text: str) -> float:
    """An archive timestamp (``2026-01-02T03:04:05.678Z``) as seconds since the epoch."""
    text = text.rstrip("Z").replace(" ", "T")
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def _fitness(row: sqlite3.Row | None) -> dict[str, Any] | None:
    return None if row is None else {k: row[k] for k in row.keys()}


def read_archive(db: Path, m: Measurement, start_wall: float) -> None:
    """Fill ``m`` from the archive with plain SQL (see the module docstring for the definitions)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        run = conn.execute("SELECT id, status, message FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
        if run is None:
            return
        rid = run["id"]
        m.run_status, m.run_message = run["status"], run["message"] or ""
        mine = "FROM candidates WHERE run_id = ? AND is_baseline = 0"
        for row in conn.execute(f"SELECT status, COUNT(*) AS n {mine} GROUP BY status", [rid]):
            m.by_status[row["status"]] = row["n"]
        m.proposals = sum(m.by_status.values())
        failed, stages = ",".join("?" * len(RAN_AND_FAILED)), ",".join("?" * len(NOT_RUN_STAGES))
        m.evaluated = conn.execute(
            f"SELECT COUNT(*) {mine} AND (status IN ('ok', 'culled') OR (status IN ({failed}) "
            f"AND COALESCE(failed_stage, '') NOT IN ({stages})))",
            [rid, *RAN_AND_FAILED, *NOT_RUN_STAGES],
        ).fetchone()[0]
        m.ok = m.by_status.get("ok", 0)
        m.distinct = conn.execute(
            f"SELECT COUNT(DISTINCT code_hash) {mine} AND status != 'duplicate' AND code != '' "
            "AND code_hash IS NOT NULL AND code_hash NOT LIKE 'unusable:%' AND code_hash NOT LIKE 'duplicate:%'",
            [rid],
        ).fetchone()[0]
        columns = "name, fitness, fitness_ci_low, fitness_ci_high, n_seeds"
        m.best = _fitness(
            conn.execute(
                f"SELECT {columns} {mine} AND status = 'ok' AND fitness IS NOT NULL ORDER BY fitness DESC LIMIT 1",
                [rid],
            ).fetchone()
        )
        m.reference = _fitness(
            conn.execute(
                f"SELECT {columns} FROM candidates WHERE run_id = ? AND is_baseline = 1 AND fitness IS NOT NULL "
                "ORDER BY fitness DESC LIMIT 1",
                [rid],
            ).fetchone()
        )
        calls = conn.execute("SELECT created_at, latency_s, error FROM llm_calls WHERE run_id = ?", [rid]).fetchall()
        m.llm_calls = len(calls)
        m.llm_errors = sum(1 for c in calls if c["error"])
        starts = [_utc(c["created_at"]) - (c["latency_s"] or 0.0) for c in calls if c["created_at"]]
        m.first_call_s = min(starts) - start_wall if starts else None
    finally:
        conn.close()


def _ci(best: dict[str, Any] | None) -> str:
    if best is None:
        return "none"
    lo, hi = best["fitness_ci_low"], best["fitness_ci_high"]
    ci = f" [{lo:.4f}, {hi:.4f}]" if lo is not None and hi is not None else ""
    return f"{best['fitness']:.4f}{ci} n={best['n_seeds']} ({best['name']})"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def print_measurement(m: Measurement) -> None:
    """The figures of one run."""
    message = f" ({m.run_message})" if m.run_message else ""
    print(
        f"[{m.label}] wall {m.wall_s:.1f} s, exit {m.returncode}, run {m.run_status or '?'}{message}; "
        f"load average {m.load[0]:.2f} -> {m.load[1]:.2f}"
    )
    if m.returncode != 0 or not m.run_status:
        print(f"[{m.label}] log tail:\n{m.log_tail}")
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(m.by_status.items()))
    print(f"  proposals {m.proposals} ({statuses})")
    print(f"  fully evaluated {m.evaluated} (ok {m.ok}); distinct programs {m.distinct}")
    print(f"  evaluated per hour {m.per_hour:.1f}")
    print(f"  best fitness {_ci(m.best)}; reference {_ci(m.reference)}")
    print(
        f"  LLM: {m.requests} requests served ({m.overflow} beyond the stream), {m.llm_calls} calls archived "
        f"({m.llm_errors} errors); first request at {_seconds(m.first_request_s)} after start "
        f"(archive: first call started at {_seconds(m.first_call_s)})"
    )


def _best(m: Measurement) -> str:
    return f"{m.best['fitness']:.4f}" if m.best else "none"


def _one_line(m: Measurement) -> str:
    return f"{m.per_hour:.1f}/h ({m.evaluated} evaluated, ok {m.ok}, in {m.wall_s:.0f} s), best {_best(m)}"


def compare(current: list[Measurement], before: list[Measurement]) -> str:
    """Print the comparison; return its one-line summary."""
    cur = statistics.median(m.per_hour for m in current)
    old = statistics.median(m.per_hour for m in before)
    ratio = cur / old if old > 0 else float("inf")
    for label, ms in (("current", current), ("before", before)):
        per_hour = ", ".join(f"{m.per_hour:.1f}" for m in ms)
        walls = ", ".join(f"{m.wall_s:.0f}" for m in ms)
        bests = "; ".join(_ci(m.best) for m in ms)
        print(f"{label}: evaluated per hour {per_hour} (wall {walls} s); best {bests}")
    print(f"ratio current/before of candidates evaluated per hour (medians): {ratio:.2f}x")
    return (
        f"SUMMARY throughput current {cur:.1f}/h vs before {old:.1f}/h = {ratio:.2f}x "
        f"(medians of {len(current)}); best fitness current {', '.join(_best(m) for m in current)} "
        f"vs before {', '.join(_best(m) for m in before)}"
    )


# ============================================================================================


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replies", type=int, default=None, help="use only the first N replies (smoke runs)")
    parser.add_argument("--latency", type=float, default=2.0, help="seconds the server waits before each reply")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tree", type=Path, default=None, help="run this checkout's code instead")
    parser.add_argument("--compare", type=Path, default=None, help="run the current tree and this checkout")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each tree with --compare")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs discovery")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds one run may take")
    parser.add_argument("--keep", action="store_true", help="keep each run's archive, cache and log")
    parser.add_argument("--check-stream", action="store_true", help="check the stream against this tree and exit")
    parser.add_argument(
        "--warm-cache",
        action="store_true",
        help="prime each tree's cache first (untimed), as on a machine that ran the task before",
    )
    args = parser.parse_args()
    stream = STREAM[: args.replies] if args.replies else STREAM
    if args.check_stream:
        sys.exit(1 if check_stream(stream) else 0)
    mix = ", ".join(f"{k} {v}" for k, v in sorted(Counter(e.kind for e in stream).items()))
    print(
        f"{len(stream)} scripted replies ({mix}), "
        f"latency {args.latency:g} s, {args.workers} worker(s), {os.cpu_count()} cores"
    )
    if args.compare is not None:
        runs: dict[str, list[Measurement]] = {"current": [], "before": []}
        caches: dict[str, Path | None] = {"current": None, "before": None}
        if args.warm_cache:
            caches = {"current": warm_cache("current", args, None), "before": warm_cache("before", args, args.compare)}
        for i in range(args.repeats):
            order = [("current", None), ("before", args.compare)]
            for label, tree in order if i % 2 == 0 else order[::-1]:
                m = run_once(label, stream, args, tree, caches[label])
                print_measurement(m)
                runs[label].append(m)
        summary = compare(runs["current"], runs["before"])
    else:
        label = "tree" if args.tree is not None else "current"
        m = run_once(label, stream, args, args.tree, warm_cache(label, args, args.tree) if args.warm_cache else None)
        print_measurement(m)
        summary = f"SUMMARY throughput {label} {_one_line(m)}"
    print(summary)


if __name__ == "__main__":
    main()
