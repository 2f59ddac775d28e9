"""A worker's trusted trainer in a process of its own: same scores, survives its child's death, dies with the agent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from discovery.evaluation import Evaluator
from discovery.sandboxes import make_pool
from discovery.tasks import get_task
from discovery.trainer_process import TrainerProcess
from sandbox.base import Job, Status
from sandbox.host.jobfiles import input_key
from sandbox.host.local import LocalSandbox, bubblewrap_problem

TASK = get_task("preference")
pytestmark = pytest.mark.skipif(bool(bubblewrap_problem()), reason=f"no bubblewrap: {bubblewrap_problem()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_trainer_process_scores_exactly_like_training_in_this_process():
    evaluator = Evaluator(TASK)
    with LocalSandbox() as box:
        here = evaluator.evaluate(TASK.seed_program, box, configs=["clean"], seeds=[0])
    worker = TrainerProcess(threads=1)
    try:
        there = evaluator.evaluate(TASK.seed_program, worker, configs=["clean"], seeds=[0])
        assert "trainer: a trusted process of its own per worker" in worker.isolation_notes
    finally:
        worker.close()
    assert here.ok and there.ok, (here.one_line(), there.one_line())
    assert there.fitness.mean == here.fitness.mean
    assert there.configs[0].seeds[0].metrics == here.configs[0].seeds[0].metrics


def test_the_trainer_process_scores_what_it_trained_as_the_agent_would():
    # the worker trains and scores in its child (evaluate_job); the agent scoring the same job's raw
    # outputs itself (run_job, then its own scoring) gets the same report
    evaluator = Evaluator(TASK)
    suite = TASK.suite("discover")
    inputs = {input_key(c, s): evaluator.inputs_for(suite, c, s) for c in ("clean", "noise20") for s in (0, 1)}
    job = Job(task="preference", source=TASK.seed_program, configs=["clean", "noise20"], seeds=[0, 1])
    job.limits = evaluator.limits_for(len(inputs))
    worker = TrainerProcess(threads=1)
    try:
        there = worker.evaluate_job(job, inputs, "preference", "cpu", suite)
        outcome = worker.run_job(job, inputs, "preference", "cpu", suite)
    finally:
        worker.close()
    assert outcome.ok and outcome.outputs, outcome.reason
    here = evaluator._score(outcome, suite, job.configs, job.seeds, inputs)
    assert there.ok and here.ok, (there.one_line(), here.one_line())
    assert [(m.config, m.seed, m.fitness, m.metrics) for c in there.configs for m in c.seeds] == [
        (m.config, m.seed, m.fitness, m.metrics) for c in here.configs for m in c.seeds
    ]


def test_several_local_workers_get_trainer_processes_and_one_worker_does_not():
    pool = make_pool("local", 2)
    try:
        assert all(isinstance(box, TrainerProcess) for box in pool.sandboxes)
    finally:
        pool.close()
    single = make_pool("local", 1)
    try:
        assert isinstance(single.sandboxes[0], LocalSandbox)
    finally:
        single.close()


def test_a_killed_trainer_process_is_a_crash_of_that_job_only():
    evaluator = Evaluator(TASK)
    worker = TrainerProcess(threads=1)
    try:
        victim = worker._proc.pid
        threading.Timer(1.0, lambda: os.kill(victim, signal.SIGKILL)).start()
        report = evaluator.evaluate(TASK.seed_program, worker, configs=["clean", "noise20"], seeds=[0, 1])
        assert report.status is Status.CRASHED and "trusted trainer process died" in report.reason
        again = evaluator.evaluate(TASK.seed_program, worker, configs=["clean"], seeds=[0])  # a fresh child
        assert again.ok, again.one_line()
        assert worker._proc.pid != victim
    finally:
        worker.close()


def test_the_trainer_process_dies_with_the_agent_even_by_sigkill():
    agent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
        import sys, time
        from discovery.trainer_process import TrainerProcess
        worker = TrainerProcess(threads=1)
        print(worker._proc.pid, flush=True)
        time.sleep(600)
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(agent.stdout.readline())
    assert _alive(child)
    agent.kill()
    agent.wait()
    deadline = time.monotonic() + 20
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the trainer process outlived its agent"
