"""How long one candidate's discover suite and contract check take (issue targets: 10 s, 0.2 s).

    python bench/suite_speed.py [--task preference] [--repeats 3] [--threads 1]

Prints: the contract check (in-process, median of 20), the whole discover suite for one
candidate through the warm local sandbox in steady state (trusted inputs cached, as in a
run), the same split into sandboxed training and trusted scoring, and the cold first
evaluation of a fresh process (template start, reference policies from the disk cache).
"""

from __future__ import annotations

import argparse
import statistics
import time

from discovery.evaluation import Evaluator
from discovery.tasks import get_task
from sandbox.local import LocalSandbox
from sandbox.pool import threads_per_worker

#: the issue's per-task target for one candidate's discover suite (20 s for the tasks added later)
TARGET_SECONDS = {"preference": 10}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="preference")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="sandbox threads (default: all cores; 1 = passive OpenMP wait, for a busy machine)")
    args = parser.parse_args()
    task = get_task(args.task)
    source = task.seed_program

    namespace: dict = {}
    exec(source, namespace)
    fn = namespace[task.slot.name]
    task.contract_check(fn)
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        task.contract_check(fn)
        times.append(time.perf_counter() - t0)
    print(f"contract check (in-process, median of 20): {statistics.median(times) * 1000:.1f} ms (target <= 200 ms)")

    evaluator = Evaluator(task)
    threads = args.threads or threads_per_worker(1)
    t0 = time.perf_counter()
    with LocalSandbox(threads=threads) as box:
        first = evaluator.evaluate(source, box, "discover")
        cold = time.perf_counter() - t0
        assert first.ok, first.one_line()
        runs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            report = evaluator.evaluate(source, box, "discover")
            runs.append(time.perf_counter() - t0)
            assert report.ok
    suite = task.suite("discover")
    n = len(suite.configs) * len(suite.seeds)
    train = sum(m.seconds for c in report.configs for m in c.seeds)
    print(f"discover suite, one candidate, warm sandbox ({n} trainings, {threads} threads): "
          f"median {statistics.median(runs):.2f} s over {args.repeats} "
          f"(target <= {TARGET_SECONDS.get(task.name, 20)} s)")
    print(f"  of which training + scoring per (config, seed), summed: {train:.2f} s")
    print(f"first evaluation in a fresh process (template start, cold caches in memory): {cold:.2f} s")


if __name__ == "__main__":
    main()
