"""How long one candidate's discover suite and contract check take (issue targets: 10 s, 0.2 s).

    python bench/suite_speed.py [--task preference] [--repeats 3] [--threads 1] [--no-reference]
                                [--mode both|batched|sequential]

Prints: the contract check (in-process, median of 20); the reference measured in the same run:
the whole discover suite trained and scored in this process with the candidate's function
compiled here (no jail, no guard, no sessions); the whole discover suite for one candidate
through ``Evaluator.evaluate`` and the warm local sandbox in steady state, batched (the cells a
task batches as one vectorised training each, the default of a run) and sequential (one
training per cell), interleaved (trusted inputs
cached, as in a run: the trainer runs here, the candidate's function in a jailed function
server per training), with its ratio to the reference; the summed per-(config, seed) seconds;
and the cold first evaluation of a fresh process (template start, reference policies from the
disk cache).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from discovery.evaluation import Evaluator
from discovery.tasks import get_task
from sandbox.host.local import LocalSandbox
from sandbox.host.pool import threads_per_worker

#: the issue's per-task target for one candidate's discover suite (20 s for the tasks added later)
TARGET_SECONDS = {"preference": 10}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="preference")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="sandbox threads (default: all cores; 1 = passive OpenMP wait, for a busy machine)",
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the in-process reference suite")
    parser.add_argument(
        "--mode",
        choices=["both", "batched", "sequential"],
        default="both",
        help="batched trainings (default in a run), one training per (config, seed), or both interleaved",
    )
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} at start, {os.cpu_count()} cores")
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

    evaluators = {"batched": Evaluator(task), "sequential": Evaluator(task, batched=False)}
    modes = ["batched", "sequential"] if args.mode == "both" else [args.mode]
    evaluator = evaluators[modes[0]]
    threads = args.threads or threads_per_worker(1)
    t0 = time.perf_counter()
    runs: dict[str, list[float]] = {m: [] for m in modes}
    paths: dict[str, set[str]] = {m: set() for m in modes}
    with LocalSandbox(threads=threads) as box:
        first = evaluator.evaluate(source, box, "discover")
        cold = time.perf_counter() - t0
        assert first.ok, first.one_line()
        for _ in range(args.repeats):  # interleaved, so that load changes hit both modes alike
            for mode in modes:
                t0 = time.perf_counter()
                report = evaluators[mode].evaluate(source, box, "discover")
                runs[mode].append(time.perf_counter() - t0)
                assert report.ok, report.one_line()
                paths[mode] |= {m.path for c in report.configs for m in c.seeds}
    suite = task.suite("discover")
    n = len(suite.configs) * len(suite.seeds)
    train = sum(m.seconds for c in report.configs for m in c.seeds)
    reference = None
    if not args.no_reference:
        pairs = [(config, seed) for config in suite.configs for seed in suite.seeds]
        for config, seed in pairs[:1]:  # warm-up, as the jailed side had its first evaluation
            task.train(fn, config, seed, evaluator.inputs_for(suite, config.name, seed), "cpu")
        refs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            task.contract_check(fn)
            for config, seed in pairs:
                inputs = evaluator.inputs_for(suite, config.name, seed)
                outputs = task.train(fn, config, seed, inputs, "cpu")
                task.score(config, seed, inputs, outputs, "cpu")
            refs.append(time.perf_counter() - t0)
        reference = statistics.median(refs)
        print(
            f"reference: the same suite trained and scored in this process, no jail: median {reference:.2f} s "
            f"over {args.repeats}"
        )
    for mode in modes:
        median = statistics.median(runs[mode])
        ratio = f"; {median / reference:.2f}x the reference, +{median - reference:.2f} s" if reference else ""
        print(
            f"discover suite, one candidate, warm sandbox, {mode} ({n} trainings, {threads} threads; "
            f"{', '.join(sorted(paths[mode]))}): median {median:.2f} s over {args.repeats} "
            f"(target <= {TARGET_SECONDS.get(task.name, 20)} s){ratio}"
        )
    if len(modes) == 2:
        speedup = statistics.median(runs["sequential"]) / statistics.median(runs["batched"])
        print(f"batched / sequential: {speedup:.2f}x faster")
    print(f"  of which training + scoring per (config, seed), summed: {train:.2f} s")
    print(f"first evaluation in a fresh process (template start, cold caches in memory): {cold:.2f} s")
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
