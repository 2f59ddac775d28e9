"""Fixed per-candidate overhead of the local sandbox, against running the same job in-process.

    python bench/sandbox_overhead.py [--repeats 20] [--throughput 6]

All figures come from the same run: the in-process reference (the runner called directly in
this process, no isolation), the warm-template backend (fork of a preloaded process per
job: the default), and a fresh interpreter per job (``LocalSandbox(warm=False)``). Jobs are
the contract stage (tiny work, so the difference is the fixed overhead) and one training
(config ``clean``, seed 0). Then throughput of whole discover-suite evaluations with 1 and 2
workers.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from discovery.evaluation import Evaluator
from discovery.sandboxes import make_pool
from discovery.tasks import get_task
from sandbox.base import Job, Limits
from sandbox.jobfiles import input_key
from sandbox.local import LocalSandbox
from sandbox.runner import run_candidate


def timed(fn, repeats: int) -> float:  # noqa: ANN001
    values = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        values.append(time.perf_counter() - t0)
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--throughput", type=int, default=6, help="candidates per throughput measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = get_task("preference")
    evaluator = Evaluator(task)
    source = task.seed_program
    suite = task.suite("discover")
    inputs = {input_key("clean", 0): evaluator.inputs_for(suite, "clean", 0)}
    limits = Limits(threads=1)
    contract = Job(task="preference", source=source, stage="contract", limits=limits)
    train = Job(task="preference", source=source, stage="train", configs=["clean"], seeds=[0], limits=limits)

    run_candidate(train, inputs)  # warm this process's lazy imports, as the template does
    rows = []
    in_c = timed(lambda: run_candidate(contract, None), args.repeats)
    in_t = timed(lambda: run_candidate(train, inputs), max(3, args.repeats // 4))
    with LocalSandbox(threads=1) as warm:
        warm.run(contract)
        warm_c = timed(lambda: warm.run(contract), args.repeats)
        warm_t = timed(lambda: warm.run(train, inputs), max(3, args.repeats // 4))
    with LocalSandbox(warm=False, threads=1) as fresh:
        fresh_c = timed(lambda: fresh.run(contract), max(3, args.repeats // 4))
        fresh_t = timed(lambda: fresh.run(train, inputs), 3)
    rows.append(("contract job", in_c, warm_c, fresh_c))
    rows.append(("one training (clean, seed 0)", in_t, warm_t, fresh_t))
    print(f"{'job':32} {'in-process':>11} {'warm fork':>10} {'overhead':>9} {'fresh python':>13} {'overhead':>9}")
    for name, a, b, c in rows:
        print(f"{name:32} {a * 1000:9.1f}ms {b * 1000:8.1f}ms {(b - a) * 1000:7.1f}ms {c * 1000:11.1f}ms "
              f"{(c - a) * 1000:7.1f}ms")
    print("fixed overhead per candidate, warm template: "
          f"{(warm_c - in_c) * 1000:.1f} ms (goal < 50 ms); fresh interpreter: {(fresh_c - in_c) * 1000:.0f} ms")

    for workers in (1, 2):
        with make_pool("local", workers) as pool:
            pool.submit(lambda box: evaluator.evaluate(source, box, "discover")).result()  # warm up
            t0 = time.perf_counter()
            with ThreadPoolExecutor(workers) as ex:
                futures = [ex.submit(lambda: pool.submit(
                    lambda box: evaluator.evaluate(source, box, "discover")).result())
                    for _ in range(args.throughput)]
                reports = [f.result() for f in futures]
            elapsed = time.perf_counter() - t0
            assert all(r.ok for r in reports)
        print(f"throughput, {workers} worker(s): {args.throughput / elapsed * 60:.1f} discover-suite "
              f"evaluations per minute ({elapsed / args.throughput:.2f} s each)")


if __name__ == "__main__":
    main()
