"""Per-call overhead of the jailed function server, against the same function called in-process.

    python bench/jail_calls.py [--repeats 7] [--calls 300] [--sessions 30]

All figures come from the same run, with one torch thread on both sides (the sandbox's default):

(a) a differentiable call shaped like one step of the preference task: four float32 [64]
    log-probability tensors (the policy's two requiring a gradient) and ``beta``, the DPO loss,
    ``loss.mean().backward()``. Jailed: ``discovery.slots.JailedFunction`` over a session of
    ``LocalSandbox`` (one round trip: the mean's VJP comes back with the forward). Reference: the
    same source executed here, autograd backward. Also the jailed call whose upstream gradient is
    not a mean (``(loss * w).sum().backward()``), which costs a second round trip, and the jail's
    own share: the server's ``Slot.call`` (guarded candidate, ``autograd.grad``) run in this process.
(b) an update-rule call shaped like one step of the optimizer task: AdamW (the task's baseline)
    over parameters of shapes [64, 64], [64], [10, 64], [10]. Jailed: ``JailedUpdateRule.step``
    (one batched request per step); reference: ``discovery.tasks.base.LocalUpdateRule.step``; and
    the server's ``Slot.update`` run in this process.
(floor) a 1-byte ping-pong over two pipes with a forked child: what one round trip between two
    processes costs on this machine before any Python work.
(c) session start: open a ready session (fork from the warm template, walls, load the
    candidate), and its close (kill, reap, wipe): the sandbox's fixed cost per training.

Each figure is the median over ``--repeats`` blocks of ``--calls`` calls (µs per call), after a
warm-up; session figures are medians over ``--sessions`` sessions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from discovery.slots import JailedFunction, JailedUpdateRule
from discovery.tasks import get_task
from discovery.tasks.base import LocalUpdateRule
from sandbox.host.local import LocalSandbox
from sandbox.jail.function_server import Slot
from sandbox.wire import DIFFERENTIABLE, UPDATE_RULE, JailSpec

#: the preference-task shapes of one call (batch of 64 pairs)
BATCH = 64
#: parameter shapes of a small MLP on digits (64 -> 64 -> 10), as the optimizer task's problems have
PARAM_SHAPES = ((64, 64), (64,), (10, 64), (10,))


class Timing:
    """Per-call figures of one measurement, in µs: wall clock, this process's CPU, the jail's CPU."""

    def __init__(self, wall: float, cpu: float, jail_cpu: float | None = None):
        self.wall, self.cpu, self.jail_cpu = wall, cpu, jail_cpu


def per_call(fn: Callable[[], Any], calls: int, repeats: int, warmup: int = 50) -> Timing:
    """Medians over ``repeats`` blocks of the mean wall and CPU time of one call of ``fn``, in µs."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(calls):
            fn()
        walls.append((time.perf_counter() - t0) / calls * 1e6)
        cpus.append((time.process_time() - c0) / calls * 1e6)
    return Timing(statistics.median(walls), statistics.median(cpus))


def session_cpu(box: LocalSandbox, spec: JailSpec, body: Callable[[Any], Any] | None = None) -> tuple[Any, float, int]:
    """Run ``body(session)`` in a fresh session; (its result, the jail's CPU seconds, requests made)."""
    with box.session(spec, seconds=600) as session:
        result = body(session) if body else None
    exited = session.watch.exited() or {}
    return result, float(exited.get("cpu_seconds") or 0.0), session.calls


def jailed(
    box: LocalSandbox,
    spec: JailSpec,
    make: Callable[[Any], Callable[[], Any]],
    calls: int,
    repeats: int,
    empty_cpu: float,
) -> Timing:
    """``per_call`` of ``make(session)()`` in its own session, with the jail's CPU per request (the
    session's CPU time less an empty session's, over the requests it answered)."""
    timing, cpu, requests = session_cpu(box, spec, lambda session: per_call(make(session), calls, repeats))
    timing.jail_cpu = max(0.0, cpu - empty_cpu) / max(1, requests) * 1e6
    return timing


def local_function(source: str, name: str) -> Callable[..., Any]:
    namespace: dict[str, Any] = {"__name__": "candidate"}
    exec(source, namespace)  # trusted baseline source, the in-process reference
    return namespace[name]


def loss_args() -> tuple[list[torch.Tensor], float]:
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-torch.rand(BATCH, generator=g) * 10 for _ in range(4))
    return [pc.requires_grad_(True), pr.requires_grad_(True), rc, rr], 0.1


def header(repeats: int, calls: int) -> None:
    print(f"µs per call, median of {repeats} blocks x {calls} calls; CPU: this process / the jail")
    print(
        f"{'call':44} {'in-process':>10} {'jailed':>9} {'overhead':>9} {'ratio':>6}   "
        f"{'CPU in-process':>14} {'CPU jailed: here + jail':>24}"
    )


def row(name: str, local: Timing, jail: Timing) -> None:
    cpu = (
        f"{jail.cpu:8.1f} + {jail.jail_cpu:6.1f} = {jail.cpu + jail.jail_cpu:6.1f}"
        if jail.jail_cpu is not None
        else f"{jail.cpu:8.1f} (no jail)"
    )
    print(
        f"{name:44} {local.wall:10.1f} {jail.wall:9.1f} {jail.wall - local.wall:9.1f} "
        f"{jail.wall / local.wall:5.1f}x   {local.cpu:14.1f} {cpu:>24}"
    )


def empty_session_cpu(box: LocalSandbox, spec: JailSpec) -> float:
    return statistics.median(session_cpu(box, spec)[1] for _ in range(5))


def bench_loss(box: LocalSandbox, calls: int, repeats: int) -> None:
    task = get_task("preference")
    source = task.baselines["dpo"]
    tensors, beta = loss_args()
    weights = torch.linspace(0.5, 1.5, BATCH)
    local = local_function(source, task.slot.name)
    spec = JailSpec(
        source=source, slot=task.slot.name, kind=DIFFERENTIABLE, allowed_imports=tuple(task.slot.allowed_imports)
    )

    def step(fn: Callable[..., Any], mean: bool = True) -> None:
        for t in tensors[:2]:
            t.grad = None
        out = fn(*tensors, beta)
        (out.mean() if mean else (out * weights).sum()).backward()

    def check(session: Any) -> None:
        step(JailedFunction(session))
        expected = [t.grad.clone() for t in tensors[:2]]
        step(local)
        assert all(torch.allclose(a, t.grad) for a, t in zip(expected, tensors[:2], strict=True)), "VJP differs"

    session_cpu(box, spec, check)
    empty = empty_session_cpu(box, spec)
    in_process = per_call(lambda: step(local), calls, repeats)
    in_process_sum = per_call(lambda: step(local, mean=False), calls, repeats)
    server = Slot(spec)  # the jail's own work, run here: guarded candidate, autograd.grad, no transport
    detached = [t.detach() for t in tensors]
    jail_side = per_call(lambda: server.call([*detached, beta], [0, 1], "mean"), calls, repeats)

    def stepper(mean: bool) -> Callable[[Any], Callable[[], None]]:
        def make(session: Any) -> Callable[[], None]:
            fn = JailedFunction(session)
            return lambda: step(fn, mean)

        return make

    mean = jailed(box, spec, stepper(True), calls, repeats, empty)
    weighted = jailed(box, spec, stepper(False), calls, repeats, empty)
    row("(a) DPO loss, forward + mean backward", in_process, mean)
    row("    same, weighted-sum backward (2 trips)", in_process_sum, weighted)
    row("    jail-side work alone (Slot.call here)", in_process, jail_side)


def bench_update(box: LocalSandbox, calls: int, repeats: int) -> None:
    task = get_task("optimizer")
    source = task.baselines["adamw"]
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(*s, generator=g) * 0.1 for s in PARAM_SHAPES]
    grads = [torch.randn(*s, generator=g) * 0.01 for s in PARAM_SHAPES]
    local = LocalUpdateRule(local_function(source, task.slot.name))
    spec = JailSpec(
        source=source, slot=task.slot.name, kind=UPDATE_RULE, allowed_imports=tuple(task.slot.allowed_imports)
    )

    def stepper(rule: Any) -> Callable[[], list[Any]]:
        rule.reset(0)
        counter = iter(range(1, 1 << 30))
        return lambda: rule.step(params, grads, 1e-3, next(counter))

    def check(session: Any) -> None:
        a, b = stepper(JailedUpdateRule(session))(), stepper(local)()
        assert all(torch.allclose(x, y) for x, y in zip(a, b, strict=True)), "update differs"

    session_cpu(box, spec, check)
    empty = empty_session_cpu(box, spec)
    in_process = per_call(stepper(local), calls, repeats)
    server = Slot(spec)
    jail_side = per_call(lambda: server.update(params, grads, 1e-3, 1), calls, repeats)
    through_jail = jailed(box, spec, lambda session: stepper(JailedUpdateRule(session)), calls, repeats, empty)
    n = sum(p.numel() for p in params)
    row(f"(b) AdamW step, {len(params)} tensors, {n} values", in_process, through_jail)
    row("    jail-side work alone (Slot.update here)", in_process, jail_side)


def pipe_floor_us(calls: int, repeats: int) -> float:
    """A 1-byte ping-pong with a forked child over two pipes, blocking reads: the operating system's
    (and this VM's) floor for one round trip between two processes, with no Python work around it."""
    from_parent, to_child = os.pipe()  # (read end, write end)
    from_child, to_parent = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: echo until the parent closes its end
        try:
            os.close(to_child)
            os.close(from_child)
            while os.read(from_parent, 1):
                os.write(to_parent, b"x")
        finally:
            os._exit(0)
    os.close(from_parent)
    os.close(to_parent)

    def ping() -> None:
        os.write(to_child, b"x")
        os.read(from_child, 1)

    try:
        return per_call(ping, calls, repeats).wall
    finally:
        os.close(to_child)
        os.close(from_child)
        os.waitpid(pid, 0)


def bench_sessions(box: LocalSandbox, sessions: int) -> None:
    task = get_task("preference")
    spec = JailSpec(
        source=task.baselines["dpo"],
        slot=task.slot.name,
        kind=DIFFERENTIABLE,
        allowed_imports=tuple(task.slot.allowed_imports),
    )
    tensors, beta = loss_args()
    opened, closed, first = [], [], []
    for i in range(sessions + 3):
        t0 = time.perf_counter()
        cm = box.session(spec, seconds=60)
        session = cm.__enter__()
        t1 = time.perf_counter()
        JailedFunction(session)(*tensors, beta).mean().backward()
        t2 = time.perf_counter()
        cm.__exit__(None, None, None)
        t3 = time.perf_counter()
        if i >= 3:  # the first sessions warm the template's page cache and this process's paths
            opened.append(t1 - t0)
            first.append(t2 - t1)
            closed.append(t3 - t2)
    open_ms = statistics.median(opened) * 1000
    print(
        f"(c) session open (fork + walls + load, until ready): median {open_ms:.1f} ms, "
        f"min {min(opened) * 1000:.1f}, max {max(opened) * 1000:.1f} over {sessions} (goal < 50 ms)"
    )
    print(
        f"    first call in a fresh session: median {statistics.median(first) * 1000:.2f} ms; "
        f"close (kill, reap, wipe): median {statistics.median(closed) * 1000:.1f} ms; "
        f"open + close: {(statistics.median(opened) + statistics.median(closed)) * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7, help="timed blocks per figure (median)")
    parser.add_argument("--calls", type=int, default=300, help="calls per timed block")
    parser.add_argument("--sessions", type=int, default=30, help="sessions opened for (c)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.2f} at start, {os.cpu_count()} cores")
    with LocalSandbox(threads=1) as box:
        header(args.repeats, args.calls)
        bench_loss(box, args.calls, args.repeats)
        bench_update(box, args.calls, args.repeats)
        floor = pipe_floor_us(args.calls, args.repeats)
        print(f"{'    floor: 1-byte pipe ping-pong with a fork':44} {'':10} {floor:10.1f}")
        bench_sessions(box, args.sessions)
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
