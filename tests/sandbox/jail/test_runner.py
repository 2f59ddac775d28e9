"""The runner's per-training wall-clock limit (``Limits.training_seconds``), through the real sandbox."""

from __future__ import annotations

import time

import pytest

from discovery.evaluation import Evaluator
from discovery.tasks import get_task
from discovery.training import run_job
from sandbox.base import Job, Limits, Status
from sandbox.host.jobfiles import input_key
from sandbox.host.local import LocalSandbox, bubblewrap_problem

TASK = get_task("preference")

#: passes the contract check (batch 10), then never returns from the first training step (batch 64)
HANGS_IN_TRAINING = """
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    n = 0
    while policy_chosen_logps.shape[0] > 10:
        n += 1
    h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * h)
"""


@pytest.fixture(scope="module")
def box():
    if bubblewrap_problem():
        pytest.skip(bubblewrap_problem())
    sandbox = LocalSandbox()
    yield sandbox
    sandbox.close()


def test_a_training_past_its_limit_ends_the_job_at_that_limit(box):
    inputs = {input_key("clean", 0): Evaluator(TASK).inputs_for(TASK.suite("discover"), "clean", 0)}
    job = Job(
        task="preference",
        source=HANGS_IN_TRAINING,
        stage="train",
        configs=["clean"],
        seeds=[0],
        limits=Limits(wall_seconds=120, cpu_seconds=240, training_seconds=3),
    )
    started = time.monotonic()
    outcome = run_job(box, job, inputs)
    elapsed = time.monotonic() - started
    assert outcome.status is Status.TIMEOUT, outcome
    assert "clean seed 0: training exceeded the per-training limit of 3 s" in outcome.reason
    assert outcome.line in (7, 8)  # the candidate's own looping lines, from the stack dump
    assert elapsed < 30  # the per-training limit, not the job's 120 s wall


def test_without_a_training_limit_the_job_wall_applies(box):
    inputs = {input_key("clean", 0): Evaluator(TASK).inputs_for(TASK.suite("discover"), "clean", 0)}
    job = Job(
        task="preference",
        source=HANGS_IN_TRAINING,
        stage="train",
        configs=["clean"],
        seeds=[0],
        limits=Limits(wall_seconds=6, cpu_seconds=240),
    )
    outcome = run_job(box, job, inputs)
    assert outcome.status is Status.TIMEOUT and "wall-clock limit of 6 s" in outcome.reason


def test_an_honest_training_is_untouched_by_its_limit(box):
    inputs = {input_key("clean", 0): Evaluator(TASK).inputs_for(TASK.suite("discover"), "clean", 0)}
    job = Job(
        task="preference",
        source=TASK.seed_program,
        stage="train",
        configs=["clean"],
        seeds=[0],
        limits=Limits(wall_seconds=120, cpu_seconds=240, training_seconds=60),
    )
    outcome = run_job(box, job, inputs)
    assert outcome.ok, outcome
