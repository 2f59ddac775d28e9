"""The jailed side of a slot: load the candidate, then answer calls of its function, nothing else.

A function server is one process, forked from the warm template for one training (or one
contract check) and confined before the candidate's first line runs. It receives only the
slot's arguments, as tensors copied over a pipe (:mod:`sandbox.wire`), and returns only the
function's outputs and, for a differentiable slot, the gradient with respect to its inputs.
It never sees the model, the data, the configuration, the seed or any file of the trainer's:
the trusted trainer (``discovery/slots.py``) holds them and keeps them.

Requests (one reply each):

* ``{"op": "call", "args": [...], "grad": [i, ...], "seed": s}``: ``fn(*args)`` with the
  arguments at positions ``grad`` made leaf tensors that require a gradient. Reply
  ``{"out": value, "graph": bool}``; with ``seed`` (a float, or ``"mean"`` for 1 / out.numel()), also the gradient of
  ``out.sum() * seed`` with respect to those arguments (a mean's backward, sent along so that
  the usual ``loss.mean().backward()`` costs one round trip), and the graph is kept.
* ``{"op": "backward", "grad_output": tensor}``: the vector-Jacobian product of the last call.
* ``{"op": "update", "params": [...], "grads": [...], "lr": float, "step": int}``: an update
  rule applied to every parameter of one step; each parameter's state dict stays here.
* ``{"op": "reset", "seed": n}``: a fresh copy of the candidate (new module, no state), for a task that
  trains several times within one configuration and seed (a learning-rate grid).

Batched trainings (:mod:`sandbox.batching`): ``call`` and ``update`` with ``"batch": S`` carry
tensors with a leading dimension of S, one slice per training, and the function is applied per
training (under ``vmap``, or one copy per training when it cannot run under it); ``"seed": "mean"``
is then the backward of each training's own mean. The reply's ``"mode"`` says which path ran, and
``"fallback"`` why ``vmap`` was given up. ``{"op": "reset", "seeds": [n, ...]}`` starts S fresh
trainings, training ``s``'s random numbers seeded with ``seeds[s]``.

A failure of the candidate's code is a reply ``{"failure": {status, stage, reason, line}}``
(after which the server exits); anything else ends the process.
"""

from __future__ import annotations

import builtins
import os
import sys
from pathlib import Path
from typing import Any

from sandbox.batching import BatchedSlot
from sandbox.jail.runner import (
    _arm_diagnostics,
    _describe,
    _failure,
    confine_job,
    job_uid,
    redirect_output,
    release_descriptors,
    reserve_descriptors,
)
from sandbox.text import one_line
from sandbox.wire import (
    CANDIDATE_FILE,
    FAILURE_FIELDS,
    FROM_JAIL,
    TO_JAIL,
    Channel,
    JailSpec,
    ProtocolError,
    enlarge_pipe,
)


class Failed(Exception):
    """The candidate's code failed; ``result`` is the failure reply."""

    def __init__(self, result: dict[str, Any]):
        super().__init__(result.get("reason", ""))
        self.result = result


class Slot:
    """The loaded candidate, callable the ways the requests ask for."""

    def __init__(self, spec: JailSpec):
        self.spec = spec
        if spec.guarded:
            from sandbox.jail.guard import compile_guarded

            self.code, self.base = compile_guarded(spec.source, CANDIDATE_FILE, spec.allowed_imports)
        else:  # only a trusted-side test opts out (the hostile corpus reaches the OS walls with it)
            self.code, self.base = compile(spec.source, CANDIDATE_FILE, "exec"), {"__builtins__": builtins}
        self.reset()

    def reset(self, seed: int = 0, seeds: list[int] | None = None) -> None:
        """A fresh copy: the module runs again (new globals, new defaults), every state is dropped,
        and torch's random numbers start again from ``seed``; with ``seeds``, S fresh batched trainings."""
        import torch

        torch.manual_seed(seed if not seeds else seeds[0])
        self.fn = self._load()
        self.states: dict[int, dict[str, Any]] = {}
        self.graph: tuple[Any, list[Any]] | None = None
        self.batched = BatchedSlot(self._load, len(seeds), seeds) if seeds else None

    def _load(self) -> Any:
        """The candidate's function from a fresh run of its module."""
        namespace: dict[str, Any] = {"__name__": "candidate", **self.base}
        exec(self.code, namespace)  # the jail is the wall: this process is disposable
        fn = namespace.get(self.spec.slot)
        if not callable(fn):
            raise Failed(
                {"status": "parse", "stage": "parse", "reason": f"no function named {self.spec.slot!r}", "line": -1}
            )
        return fn

    def _batch(self, size: int) -> BatchedSlot:
        """The batched slot of ``size`` trainings (made at the first batched request, as fresh trainings)."""
        if self.batched is None:
            self.batched = BatchedSlot(self._load, size, [0] * size)
        if self.batched.batch != size:
            raise ProtocolError(f"a batch of {size} trainings in a session of {self.batched.batch}")
        return self.batched

    def _mode(self) -> dict[str, Any]:
        assert self.batched is not None
        return {"mode": self.batched.mode, "fallback": self.batched.fallback}

    def call(self, args: list[Any], grad: list[int], seed: float | str | None, batch: int = 0) -> dict[str, Any]:
        import torch

        self.graph = None
        leaves = []
        for i in grad:
            leaf = args[i].detach().requires_grad_(True)
            args[i] = leaf
            leaves.append(leaf)
        with torch.enable_grad():
            out = self._batch(batch).call(args) if batch else self.fn(*args)
        graph = isinstance(out, torch.Tensor) and out.requires_grad and bool(leaves)
        if isinstance(out, list):
            sent: Any = [o.detach() if isinstance(o, torch.Tensor) else o for o in out]
        else:
            sent = out.detach() if isinstance(out, torch.Tensor) else out
        reply: dict[str, Any] = {"out": sent, "graph": graph, **(self._mode() if batch else {})}
        if graph:
            self.graph = (out, leaves)
            if seed is not None:  # "mean": the backward of out.mean() (of each training's mean, batched)
                per_training = out.numel() // max(1, batch) if batch else out.numel()
                value = 1.0 / max(1, per_training) if seed == "mean" else float(seed)
                reply["grads"] = self._vjp(torch.full_like(out, value), keep=True)
        return reply

    def _vjp(self, grad_output: Any, keep: bool) -> list[Any]:
        import torch

        if self.graph is None:
            raise ProtocolError("backward without a differentiable call before it")
        out, leaves = self.graph
        grads = torch.autograd.grad(out, leaves, grad_output, retain_graph=keep, allow_unused=True)
        return [g.detach() if g is not None else None for g in grads]

    def backward(self, grad_output: Any) -> dict[str, Any]:
        return {"grads": self._vjp(grad_output, keep=False)}

    def update(self, params: list[Any], grads: list[Any], lr: float, step: int, batch: int = 0) -> dict[str, Any]:
        import torch

        if batch:
            with torch.no_grad():
                values = self._batch(batch).update(params, grads, lr, step)
            sent = [p.detach() if isinstance(p, torch.Tensor) else p for p in values]
            return {"params": sent, **self._mode()}
        new = []
        with torch.no_grad():
            for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
                new.append(self.fn(param, grad, self.states.setdefault(i, {}), lr, step))
        return {"params": [p.detach() if isinstance(p, torch.Tensor) else p for p in new]}


def answer(slot: Slot, request: dict[str, Any]) -> dict[str, Any]:
    """The reply to one request (raises Failed for the candidate's own errors)."""
    op = request.get("op")
    batch = int(request.get("batch") or 0)
    if op == "call":
        return slot.call(list(request["args"]), list(request.get("grad", [])), request.get("seed"), batch)
    if op == "backward":
        return slot.backward(request["grad_output"])
    if op == "update":
        return slot.update(request["params"], request["grads"], float(request["lr"]), int(request["step"]), batch)
    if op == "reset":
        seeds = request.get("seeds")
        slot.reset(int(request.get("seed", 0)), [int(s) for s in seeds] if seeds else None)
        return {"ok": True}
    raise ProtocolError(f"unknown request {str(op)[:40]!r}")


def serve(channel: Channel, spec: JailSpec) -> int:
    """Load the candidate, say ready, answer requests until ``close``; the exit code."""
    stage = "parse"
    try:
        slot = Slot(spec)
        channel.send({"ready": True})
        stage = "call"
        while True:
            request = channel.receive()
            if request.get("op") == "close":
                return 0
            try:
                reply = answer(slot, request)
            except (Failed, ProtocolError):
                raise
            except BaseException as exc:  # noqa: BLE001 - candidate code may raise anything
                raise Failed(_failure(exc, spec.source, stage, spec.limits.memory_mb, spec.limits.file_mb)) from None
            try:
                channel.send(reply)
            except ProtocolError as exc:
                raise Failed(
                    {
                        "status": "invalid",
                        "stage": stage,
                        "line": -1,
                        "reason": one_line(f"returned a value that cannot leave the sandbox: {exc}"),
                    }
                ) from None
    except Failed as exc:
        _send_failure(channel, exc.result)
        return 0
    except SyntaxError as exc:
        reason, line = _describe(exc, spec.source)
        _send_failure(
            channel,
            {
                "status": "parse",
                "stage": "parse",
                "reason": reason,
                "line": line,
                "error_class": type(exc).__name__,
                "message": one_line(exc.msg or "", 200),
            },
        )
        return 0
    except BaseException as exc:  # noqa: BLE001 - the module's own top level raised
        _send_failure(channel, _failure(exc, spec.source, stage, spec.limits.memory_mb, spec.limits.file_mb))
        return 0


def _send_failure(channel: Channel, result: dict[str, Any]) -> None:
    release_descriptors()
    try:
        channel.send({"failure": {k: result.get(k) for k in FAILURE_FIELDS if result.get(k) is not None}})
    except BaseException:  # noqa: BLE001 - the trusted side classifies a silent exit itself
        pass


WARMUP_SOURCE = """\
import torch
import torch.nn.functional as F


def f(x, y):
    return -F.logsigmoid(x - y) + torch.relu(x).square().mean()
"""


def warmup() -> None:
    """Run one guarded call and its backward in this process (the template's), single-threaded, so
    that lazy imports and first-call initialisation happen once instead of in every session."""
    import torch

    slot = Slot(JailSpec(source=WARMUP_SOURCE, slot="f"))
    x = torch.linspace(-1.0, 1.0, 4)
    slot.call([x, x.flip(0)], [0, 1], 0.25)
    slot.backward(torch.ones(4))
    from sandbox.jail.guard import vetted

    vetted()  # the allow-list tables, built once before the fork (~30 ms per session saved)


def open_channel(directory: Path) -> Channel:
    """The jail's end of a session's FIFOs (the trusted side holds both open already)."""
    read_fd = os.open(os.path.join(directory, TO_JAIL), os.O_RDONLY)
    write_fd = os.open(os.path.join(directory, FROM_JAIL), os.O_WRONLY)
    enlarge_pipe(write_fd)
    return Channel(read_fd, write_fd)


def run_session(directory: Path, uid: int) -> int:
    """In a fresh child: open the channel, put up the walls, serve. The exit code."""
    import faulthandler

    import torch

    spec = JailSpec.read(directory)
    channel = open_channel(directory)
    confine_job(directory, spec, uid)
    torch.set_num_threads(max(1, spec.limits.threads))
    _arm_diagnostics(directory)
    reserve_descriptors()
    code = serve(channel, spec)
    faulthandler.cancel_dump_traceback_later()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - a full log must not matter
            pass
    return code


def main(argv: list[str] | None = None) -> int:
    """``python -m sandbox.jail.function_server DIR``: a session in a fresh interpreter (no warm template)."""
    directory = Path((sys.argv[1:] if argv is None else argv)[0])
    redirect_output(directory)
    import torch  # noqa: F401 - loaded before the walls go up

    import sandbox.jail.guard  # noqa: F401

    os.chdir(directory)
    code = run_session(Path("."), job_uid())
    os._exit(code)  # nothing the candidate left behind runs at interpreter shutdown


if __name__ == "__main__":
    sys.exit(main())
