"""Fixed per-candidate overhead of the local sandbox, against running the same work in-process.

    python bench/sandbox_overhead.py [--task preference] [--repeats 20] [--throughput 6]

Training runs on the trusted side (:func:`discovery.training.run_job`); only the candidate's slot
function runs in the jail, as a function server forked per session. All figures come from the
same run: the in-process reference (the task's own ``contract_check`` and ``train`` called here
with the candidate's function compiled in this process, no jail, no guard), ``run_job`` with the
warm-template backend (a fork of a preloaded process per session: the default), and with a
fresh interpreter per session (``LocalSandbox(warm=False)``). Jobs are the contract stage (a few
calls, so the difference is the fixed overhead of one session) and one training (config
``clean``, seed 0; ``run_job`` opens two sessions for it: the contract check's and the
training's, so the in-process reference does both as well). Then throughput of whole
discover-suite evaluations with 1 and 2 workers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from discovery.evaluation import Evaluator
from discovery.sandboxes import make_pool
from discovery.tasks import get_task
from discovery.training import run_job
from sandbox.base import Job, Limits
from sandbox.host.jobfiles import input_key
from sandbox.host.local import LocalSandbox


def timed(fn: Callable[[], Any], repeats: int) -> float:
    values = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        values.append(time.perf_counter() - t0)
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="preference")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--throughput", type=int, default=6, help="candidates per throughput measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.2f} at start, {os.cpu_count()} cores")
    task = get_task(args.task)
    evaluator = Evaluator(task)
    source = task.seed_program
    suite = task.suite("discover")
    config = suite.configs[0]
    seed = suite.seeds[0]
    key = input_key(config.name, seed)
    inputs = {key: evaluator.inputs_for(suite, config.name, seed)}
    limits = Limits(threads=1, training_seconds=task.training_seconds, wall_seconds=600)
    contract = Job(task=task.name, source=source, stage="contract", limits=limits)
    train = Job(task=task.name, source=source, stage="train", configs=[config.name], seeds=[seed], limits=limits)

    namespace: dict[str, Any] = {"__name__": "candidate"}
    exec(source, namespace)  # the trusted seed program, the in-process reference
    plain_fn = namespace[task.slot.name]

    def in_process_train() -> None:
        task.contract_check(plain_fn)
        task.train(plain_fn, config, seed, inputs[key], "cpu")

    def checked(box: LocalSandbox, job: Job, job_inputs: dict[str, Any] | None) -> Callable[[], None]:
        def run() -> None:
            outcome = run_job(box, job, job_inputs, task)
            assert outcome.ok, outcome.reason

        return run

    in_process_train()  # warm this process's lazy imports, as the template does
    rows = []
    in_c = timed(lambda: task.contract_check(plain_fn), args.repeats)
    in_t = timed(in_process_train, max(3, args.repeats // 4))
    with LocalSandbox(threads=1) as warm:
        checked(warm, train, inputs)()
        warm_c = timed(checked(warm, contract, None), args.repeats)
        warm_t = timed(checked(warm, train, inputs), max(3, args.repeats // 4))
    with LocalSandbox(warm=False, threads=1) as fresh:
        fresh_c = timed(checked(fresh, contract, None), max(3, args.repeats // 4))
        fresh_t = timed(checked(fresh, train, inputs), 3)
    rows.append(("contract job (1 session)", in_c, warm_c, fresh_c))
    rows.append((f"one training ({config.name}, seed {seed}; 2 sessions)", in_t, warm_t, fresh_t))
    print(
        f"{'job':40} {'in-process':>11} {'warm fork':>10} {'overhead':>9} {'ratio':>6} {'fresh python':>13} "
        f"{'overhead':>9}"
    )
    for name, a, b, c in rows:
        print(
            f"{name:40} {a * 1000:9.1f}ms {b * 1000:8.1f}ms {(b - a) * 1000:7.1f}ms {b / a:5.2f}x "
            f"{c * 1000:11.1f}ms {(c - a) * 1000:7.1f}ms"
        )
    print(
        "fixed overhead per session (contract job), warm template: "
        f"{(warm_c - in_c) * 1000:.1f} ms (goal < 50 ms); fresh interpreter: {(fresh_c - in_c) * 1000:.0f} ms"
    )

    for workers in (1, 2):
        with make_pool("local", workers) as pool:
            pool.submit(lambda box: evaluator.evaluate(source, box, "discover")).result()  # warm up
            t0 = time.perf_counter()
            with ThreadPoolExecutor(workers) as ex:
                futures = [
                    ex.submit(lambda: pool.submit(lambda box: evaluator.evaluate(source, box, "discover")).result())
                    for _ in range(args.throughput)
                ]
                reports = [f.result() for f in futures]
            elapsed = time.perf_counter() - t0
            assert all(r.ok for r in reports), [r.one_line() for r in reports if not r.ok]
        print(
            f"throughput, {workers} worker(s): {args.throughput / elapsed * 60:.1f} discover-suite "
            f"evaluations per minute ({elapsed / args.throughput:.2f} s each)"
        )
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
