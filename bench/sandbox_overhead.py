"""Fixed per-session and per-job overhead of the sandbox backends, against the same work in-process.

    python bench/sandbox_overhead.py [--task preference] [--repeats 20] [--throughput 6]
                                     [--sandbox local|docker|both] [--docker-image discovery-sandbox:test]

Training runs on the trusted side (:func:`discovery.training.run_job`); only the candidate's slot
function runs in the jail, as a function server forked per session from a warm template (the
local backend's under bubblewrap, or the one in the Docker backend's long-lived container).
All figures come from the same run, and the backends' runs are interleaved (one of each in
turn), so that other load on the machine falls on them alike; each figure is a median:

- the in-process reference: the task's own ``contract_check`` and ``train`` called here with the
  candidate's function compiled in this process (no jail, no guard);
- per backend: a bare session (opened and closed, no call), the contract job (one session and a
  few calls: its difference to the in-process check is the fixed overhead of one job), and one
  training (config ``clean``, seed 0; ``run_job`` opens two sessions for it: the contract check's
  and the training's, so the in-process reference does both as well);
- with ``local``, also a fresh interpreter per session (``LocalSandbox(warm=False)``);
- with ``both``, the ratio docker/local of each overhead (the issue's goal: within 2x);
- ``--suites N`` whole discover-suite evaluations (DPO) per backend on the same worker, interleaved
  too: the per-candidate suite time (16 sessions and every training's round trips);
- then (``--throughput N``, 0 skips it) N whole discover-suite evaluations per backend with 1 and
  2 workers (a pool of each backend in turn, not interleaved).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import torch

from discovery.evaluation import Evaluator
from discovery.sandboxes import make_pool
from discovery.tasks import get_task
from discovery.training import jail_spec, run_job
from sandbox.base import Job, Limits, Sandbox
from sandbox.host.jobfiles import input_key
from sandbox.host.local import LocalSandbox


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``fn``."""
    return statistics.median(once(fn) for _ in range(repeats))


def once(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def open_backend(name: str, image: str) -> Sandbox:
    """One worker's sandbox of backend ``name``, single-threaded as the worker pool makes them."""
    if name == "local":
        return LocalSandbox(threads=1)
    from sandbox.host.docker_backend import DockerSandbox

    box = DockerSandbox(image=image)
    box.threads = 1
    return box


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="preference")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--suites", type=int, default=3, help="interleaved discover-suite evaluations per backend")
    parser.add_argument("--throughput", type=int, default=6, help="candidates per throughput measurement (0: none)")
    parser.add_argument("--sandbox", choices=("local", "docker", "both"), default="local")
    parser.add_argument("--docker-image", default="discovery-sandbox:test")
    args = parser.parse_args()
    backends = ["local", "docker"] if args.sandbox == "both" else [args.sandbox]
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
    spec = jail_spec(contract, task)

    namespace: dict[str, Any] = {"__name__": "candidate"}
    exec(source, namespace)  # the trusted seed program, the in-process reference
    plain_fn = namespace[task.slot.name]

    def in_process_train() -> None:
        task.contract_check(plain_fn)
        task.train(plain_fn, config, seed, inputs[key], "cpu")

    def checked(box: Sandbox, job: Job, job_inputs: dict[str, Any] | None) -> Callable[[], None]:
        def run() -> None:
            outcome = run_job(box, job, job_inputs, task)
            assert outcome.ok, outcome.reason

        return run

    def bare(box: Sandbox) -> Callable[[], None]:
        def run() -> None:
            with box.session(spec, 60.0):
                pass

        return run

    in_process_train()  # warm this process's lazy imports, as the template does
    in_c = timed(lambda: task.contract_check(plain_fn), args.repeats)
    in_t = timed(in_process_train, max(3, args.repeats // 4))
    boxes = {}
    start_seconds = {}
    for name in backends:
        t0 = time.perf_counter()
        boxes[name] = open_backend(name, args.docker_image)
        checked(boxes[name], contract, None)()  # the template (and container) starts here
        start_seconds[name] = time.perf_counter() - t0
        checked(boxes[name], train, inputs)()
    samples: dict[tuple[str, str], list[float]] = {}
    try:
        for i in range(args.repeats):
            for name, box in boxes.items():  # interleaved: the same load falls on every backend
                samples.setdefault((name, "session"), []).append(once(bare(box)))
                samples.setdefault((name, "contract"), []).append(once(checked(box, contract, None)))
                if i % 4 == 0:
                    samples.setdefault((name, "train"), []).append(once(checked(box, train, inputs)))
        for box in boxes.values():
            assert evaluator.evaluate(source, box, "discover").ok  # the suite's inputs, built once
        for _ in range(args.suites):
            for name, box in boxes.items():
                samples.setdefault((name, "suite"), []).append(
                    once(partial(evaluator.evaluate, source, box, "discover"))
                )
    finally:
        for box in boxes.values():
            box.close()
    median = {k: statistics.median(v) for k, v in samples.items()}
    fresh: dict[str, float] = {}
    if "local" in backends:
        with LocalSandbox(warm=False, threads=1) as cold:
            fresh["contract"] = timed(checked(cold, contract, None), max(3, args.repeats // 4))
            fresh["train"] = timed(checked(cold, train, inputs), 3)

    reference = {"session": 0.0, "contract": in_c, "train": in_t}
    labels = {
        "session": "bare session (open + close)",
        "contract": "contract job (1 session)",
        "train": f"one training ({config.name}, seed {seed}; 2 sessions)",
    }
    header = f"{'job':40} {'in-process':>11}"
    for name in backends:
        header += f" {name:>9} {'overhead':>9}"
    header += f" {'docker/local':>13}" if len(backends) == 2 else ""
    header += f" {'fresh python':>13}" if fresh else ""
    print(f"medians of {args.repeats} interleaved runs (training: {len(samples[(backends[0], 'train')])})")
    print(header)
    for what, label in labels.items():
        row = f"{label:40} {reference[what] * 1000:9.1f}ms"
        for name in backends:
            value = median[(name, what)]
            row += f" {value * 1000:7.1f}ms {(value - reference[what]) * 1000:7.1f}ms"
        if len(backends) == 2:
            over = [median[(name, what)] - reference[what] for name in backends]
            row += f" {over[1] / over[0]:12.2f}x"
        if fresh:
            row += f" {fresh[what] * 1000:11.1f}ms" if what in fresh else f" {'':>13}"
        print(row)
    for name in backends:
        print(
            f"{name}: fixed overhead per job (contract job - in-process check): "
            f"{(median[(name, 'contract')] - in_c) * 1000:.1f} ms; first job (template start): "
            f"{start_seconds[name]:.2f} s"
        )
    if len(backends) == 2:
        ratio = (median[("docker", "contract")] - in_c) / (median[("local", "contract")] - in_c)
        print(f"per-job overhead docker/local: {ratio:.2f}x (goal: within 2x)")
    if args.suites > 0:
        suites = {name: median[(name, "suite")] for name in backends}
        print(
            f"discover suite per candidate (DPO, 1 worker, median of {args.suites} interleaved): "
            + ", ".join(f"{name} {value:.2f} s" for name, value in suites.items())
            + (f"; docker/local {suites['docker'] / suites['local']:.2f}x" if len(backends) == 2 else "")
        )
    if fresh:
        print(f"local, fresh interpreter per session: {(fresh['contract'] - in_c) * 1000:.0f} ms per job")

    for name in backends if args.throughput > 0 else []:
        for workers in (1, 2):
            with make_pool(name, workers, docker_image=args.docker_image) as pool:
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
                f"throughput, {name}, {workers} worker(s): {args.throughput / elapsed * 60:.1f} discover-suite "
                f"evaluations per minute ({elapsed / args.throughput:.2f} s each)"
            )
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
