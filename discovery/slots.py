"""The trusted side of a jailed slot: proxies a task's trainer calls as if they were the candidate.

The trainer (model, optimizer, data, curves) runs here; the candidate's function runs in a
jailed function server (:mod:`sandbox.jail.function_server`) that gets copies of the slot's
arguments and nothing else. Two kinds of slot:

* :class:`JailedFunction` (losses): ``fn(*args)`` returns the jail's output as a tensor of the
  trainer's graph. Its backward is the jail's vector-Jacobian product with respect to the
  arguments that require a gradient, so ``loss.mean().backward()`` reaches the model's
  parameters here without the candidate ever holding them. The gradient of a mean comes back
  with the forward reply (one round trip per step); any other upstream gradient asks again.
* :class:`JailedUpdateRule` (optimizers): ``step(params, grads, lr, step)`` sends copies of one
  step's parameters and gradients and returns the new values; each parameter's state dict
  lives in the jail, where only the rule reads it.

Every reply is validated before the trainer uses it: types, shapes, dtypes and the number of
values; a reply that breaks them ends training with status ``invalid`` and a one-line reason.

**Batched trainings.** With ``batch=S`` (a task's ``train_batch``), one proxy serves S trainings
of equal shapes: every tensor argument has a leading dimension of S, and the jail applies the
candidate's function per training (:mod:`sandbox.batching`: ``vmap``, or a copy per training).
:attr:`JailedFunction.mode` then says which path the jail took. ``discovery.tasks.base.local_slot``
gives the same interface for a trusted function run in this process (references, tests).
"""

from __future__ import annotations

from typing import Any

import torch

from discovery.tasks.base import TrainingFailed
from sandbox.batching import FALLBACK_CHARS, LOOP, VMAP, seeds_for
from sandbox.host.session import Session

#: Python values a slot argument may be besides a tensor
PLAIN = (bool, int, float, type(None))


def _wire(value: Any) -> Any:
    """An argument as it crosses into the jail: a detached CPU copy of a tensor, a plain value."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu")
    if isinstance(value, PLAIN):
        return value
    raise TypeError(f"a slot argument must be a tensor or a number, not {type(value).__name__}")


def _reply_tensor(value: Any, like: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.shape != like.shape or value.dtype != like.dtype:
        got = f"shape {tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise TrainingFailed(f"{what}: the sandbox returned {got}, expected shape {tuple(like.shape)} {like.dtype}")
    return value.to(like.device)


class _Call:
    """What one forward call left for its backward: the session, the speculative gradients."""

    def __init__(
        self,
        session: Session,
        inputs: list[torch.Tensor],
        seed: float,
        grads: list[Any] | None,
        serial: int,
        owner: JailedFunction,
    ):
        self.session, self.inputs, self.seed, self.grads = session, inputs, seed, grads
        self.serial, self.owner = serial, owner

    def backward(self, grad_output: torch.Tensor) -> list[torch.Tensor | None]:
        cpu = grad_output.detach().to("cpu")
        if self.grads is not None and torch.equal(cpu, torch.full_like(cpu, self.seed)):
            raw = self.grads  # the mean's backward, computed with the forward
        elif self.serial != self.owner.serial:
            raise RuntimeError("a jailed function's backward must follow its own call (the jail keeps one graph)")
        else:
            raw = self.owner.session.request({"op": "backward", "grad_output": cpu})["grads"]
        if not isinstance(raw, list) or len(raw) != len(self.inputs):
            raise TrainingFailed("the sandbox returned the wrong number of gradients")
        return [None if g is None else _reply_tensor(g, x, "gradient") for g, x in zip(raw, self.inputs, strict=True)]


class _Bridge(torch.autograd.Function):
    """Ties the jail's output into the trainer's graph; its backward is the jail's VJP."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, call: _Call, *inputs: torch.Tensor) -> torch.Tensor:
        ctx.call = call
        return out.clone()

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        return (None, None, *ctx.call.backward(grad_output))


def _note_mode(proxy: Any, reply: dict[str, Any]) -> None:
    """Keep which path a batched call took in the jail (``vmap`` or ``loop``) and why it fell back."""
    mode = reply.get("mode")
    if mode in (VMAP, LOOP):
        proxy.mode = mode
        fallback = reply.get("fallback")
        proxy.fallback = fallback[:FALLBACK_CHARS] if isinstance(fallback, str) else ""


class JailedFunction:
    """A differentiable slot function (a loss) that runs in the jail; call it like the candidate.

    With ``batch=S`` every tensor argument carries S trainings along its first dimension, and the
    output is [S, ...]: the gradient sent with the forward reply is that of each training's own mean."""

    def __init__(self, session: Session, call_seconds: float = 0.0, batch: int = 0):
        self.session, self.call_seconds, self.batch = session, call_seconds, batch
        self.serial = 0
        self.mode = VMAP if batch else ""
        self.fallback = ""

    def __call__(self, *args: Any) -> Any:
        wire = [_wire(a) for a in args]
        grad = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]
        want_graph = bool(grad) and torch.is_grad_enabled()
        request: dict[str, Any] = {
            "op": "call",
            "args": wire,
            "grad": grad if want_graph else [],
            "seed": "mean" if want_graph else None,
        }
        if self.batch:
            request["batch"] = self.batch
        reply = self.session.request(request, self.call_seconds)
        self.serial += 1
        _note_mode(self, reply)
        out = reply.get("out")
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
        if self.batch and isinstance(out, list):  # per-training outputs that do not stack: the task's checks
            return [o.to(device) if isinstance(o, torch.Tensor) else o for o in out]
        if not isinstance(out, torch.Tensor):
            return out  # the task's own checks say what is wrong with a non-tensor
        out = out.to(device)
        if not (want_graph and reply.get("graph") is True):
            return out  # no graph: the task's check reports "no gradient"
        if not out.is_floating_point():
            raise TrainingFailed(f"the loss has dtype {out.dtype}; a gradient needs a floating-point tensor")
        inputs = [args[i] for i in grad]
        seed = 1.0 / max(1, out.numel() // self.batch if self.batch else out.numel())
        call = _Call(self.session, inputs, seed, reply.get("grads"), self.serial, self)
        return _Bridge.apply(out, call, *inputs)


class JailedUpdateRule:
    """An update rule that runs in the jail; the task's trainer calls :meth:`step` once per step."""

    def __init__(self, session: Session, call_seconds: float = 0.0, batch: int = 0):
        self.session, self.call_seconds, self.batch = session, call_seconds, batch
        self.mode = VMAP if batch else ""
        self.fallback = ""

    def reset(self, seed: int | list[int]) -> None:
        """A fresh copy of the rule (new module, no state), its random numbers seeded with ``seed``;
        batched, one seed per training."""
        if self.batch:
            self.session.request({"op": "reset", "seeds": seeds_for(seed, self.batch)}, self.call_seconds)
            self.mode, self.fallback = VMAP, ""
        else:
            self.session.request({"op": "reset", "seed": int(seed)}, self.call_seconds)  # type: ignore[arg-type]

    def step(self, params: list[torch.Tensor], grads: list[torch.Tensor], lr: float, step: int) -> list[Any]:
        """The rule's new value of every parameter (validated by the task against the old one)."""
        request: dict[str, Any] = {
            "op": "update",
            "params": [_wire(p) for p in params],
            "grads": [_wire(g) for g in grads],
            "lr": float(lr),
            "step": int(step),
        }
        if self.batch:
            request["batch"] = self.batch
        reply = self.session.request(request, self.call_seconds)
        _note_mode(self, reply)
        new = reply.get("params")
        if not isinstance(new, list) or len(new) != len(params):
            raise TrainingFailed(
                f"step {step}: the sandbox returned {type(new).__name__} instead of {len(params)} new parameters"
            )
        return [_moved(v, p.device, self.batch) for v, p in zip(new, params, strict=True)]


def _moved(value: Any, device: torch.device, batch: int) -> Any:
    """A new parameter value on the trainer's ``device``; batched, a list is the S trainings' values
    that did not stack (the loop fallback), each moved."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if batch and isinstance(value, list):
        return [v.to(device) if isinstance(v, torch.Tensor) else v for v in value]
    return value


def jailed_slot(kind: str, session: Session, call_seconds: float = 0.0, batch: int = 0) -> Any:
    """The proxy a task's trainer gets for a slot of ``kind`` (``Slot.kind``); ``batch``: of S trainings."""
    from sandbox.wire import UPDATE_RULE

    if kind == UPDATE_RULE:
        return JailedUpdateRule(session, call_seconds, batch)
    return JailedFunction(session, call_seconds, batch)
