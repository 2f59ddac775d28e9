"""The local backend: warm template vs fresh interpreter, its notes, and its self-repair."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from discovery.evaluation import Evaluator
from discovery.tasks import get_task
from sandbox.base import Job, Limits, Status
from sandbox.jobfiles import input_key
from sandbox.local import LocalSandbox, bubblewrap_problem

TASK = get_task("preference")
DPO = TASK.baselines["dpo"]
LIMITS = Limits(wall_seconds=60, memory_mb=2048, max_processes=64)
KEY = input_key("clean", 0)

needs_bwrap = pytest.mark.skipif(bool(bubblewrap_problem()) and os.environ.get("CI") != "true",
                                 reason=f"bubblewrap unusable here: {bubblewrap_problem()}")


@pytest.fixture(scope="module")
def inputs() -> dict[str, Any]:
    return {KEY: Evaluator(TASK).inputs_for(TASK.suite("discover"), "clean", 0)}


@pytest.fixture(scope="module")
def warm() -> Iterator[LocalSandbox]:
    with LocalSandbox() as box:
        yield box


def train_job(source: str = DPO) -> Job:
    return Job(task="preference", source=source, stage="train", configs=["clean"], seeds=[0], limits=LIMITS)


@needs_bwrap
def test_warm_and_fresh_give_bitwise_identical_dpo_outputs(warm: LocalSandbox, inputs: dict[str, Any]):
    hot = warm.run(train_job(), inputs)
    with LocalSandbox(warm=False) as fresh_box:
        cold = fresh_box.run(train_job(), inputs)
    again = warm.run(train_job(), inputs)
    for outcome in (hot, cold, again):
        assert outcome.status is Status.OK, (outcome.reason, outcome.stderr_tail)
    reference = hot.outputs[KEY]["policy"]
    for other in (cold, again):
        policy = other.outputs[KEY]["policy"]
        assert policy.keys() == reference.keys()
        for name, tensor in reference.items():
            assert torch.equal(policy[name], tensor), name
        for curve in ("curve_loss", "curve_grad_norm", "curve_margin"):
            assert torch.equal(other.outputs[KEY][curve], hot.outputs[KEY][curve])


@needs_bwrap
def test_isolation_notes_name_the_walls(warm: LocalSandbox):
    notes = " ".join(warm.isolation_notes)
    assert "bubblewrap" in notes
    assert "seccomp" in notes and "rlimits" in notes
    if os.geteuid() == 0:
        assert f"uid {warm.job_uid}" in notes


def test_each_sandbox_runs_its_jobs_as_its_own_uid():
    if os.geteuid() != 0:
        pytest.skip("jobs keep the caller's uid when the sandbox is not started as root")
    with LocalSandbox(isolation="none" if bubblewrap_problem() else "auto") as a, \
            LocalSandbox(isolation="none" if bubblewrap_problem() else "auto") as b:
        assert a.job_uid != b.job_uid
        assert a.job_uid not in (0, 65534) and b.job_uid not in (0, 65534)


@needs_bwrap
def test_template_restarts_after_being_killed(warm: LocalSandbox):
    first = warm.run(Job(task="preference", source=DPO, stage="contract", limits=LIMITS))
    assert first.ok, first.reason
    assert warm._proc is not None
    old_pid = warm._proc.pid
    os.killpg(old_pid, signal.SIGKILL)  # the whole template process group (bwrap and the template)
    warm._proc.wait(timeout=10)
    second = warm.run(Job(task="preference", source=DPO, stage="contract", limits=LIMITS))
    assert second.ok, (second.reason, second.stderr_tail)
    assert warm._proc is not None and warm._proc.pid != old_pid


@needs_bwrap
def test_template_killed_during_a_job_is_a_crash_then_replaced(warm: LocalSandbox):
    import threading

    sleeper = ("import time\n\ndef loss(a, b, c, d, beta):\n    time.sleep(30)\n    return a\n")
    assert warm.run(Job(task="preference", source=DPO, stage="contract", limits=LIMITS)).ok
    assert warm._proc is not None
    victim = warm._proc.pid
    killer = threading.Timer(2.0, lambda: os.killpg(victim, signal.SIGKILL))
    killer.start()
    try:
        outcome = warm.run(Job(task="preference", source=sleeper, stage="contract", limits=LIMITS))
    finally:
        killer.cancel()
    assert outcome.status is Status.CRASHED and "template died" in outcome.reason
    after = warm.run(Job(task="preference", source=DPO, stage="contract", limits=LIMITS))
    assert after.ok, after.reason


@needs_bwrap
def test_scratch_is_wiped_after_every_job(warm: LocalSandbox):
    writer = ("import os\n\ndef loss(a, b, c, d, beta):\n"
              "    open('left-behind', 'w').write('x')\n    return (a - b) * beta\n")
    outcome = warm.run(Job(task="preference", source=writer, stage="contract", limits=LIMITS))
    assert outcome.ok, outcome.reason
    assert list(warm.root.iterdir()) == []


@needs_bwrap
@pytest.mark.parametrize("mode", ["warm", "fresh"])
def test_timeout_names_the_line_in_both_modes(mode: str, warm: LocalSandbox):
    looper = "def loss(a, b, c, d, beta):\n    while True:\n        pass\n"
    limits = Limits(wall_seconds=4 if mode == "warm" else 8, memory_mb=2048, max_processes=64)
    job = Job(task="preference", source=looper, stage="contract", limits=limits)
    start = time.monotonic()
    if mode == "warm":
        outcome = warm.run(job)
    else:
        with LocalSandbox(warm=False) as box:
            outcome = box.run(job)
    assert time.monotonic() - start < limits.wall_seconds + 15
    assert outcome.status is Status.TIMEOUT
    assert "line 2:" in outcome.reason or "line 3:" in outcome.reason, outcome.reason


@needs_bwrap
def test_bubblewrap_view_is_reachable_by_the_job_user(warm: LocalSandbox, tmp_path: Path):
    """bwrap run as root creates the directories leading to its binds 0700; ours are 0755, so
    the unprivileged job user can import lazily from the project and the Python prefix."""
    probe = ("import importlib\n\ndef loss(a, b, c, d, beta):\n"
             "    importlib.import_module('discovery.tasks.preference.baselines')\n"
             "    importlib.import_module('json.tool')\n"
             "    return (a - b) * beta\n")
    outcome = warm.run(Job(task="preference", source=probe, stage="contract", limits=LIMITS))
    assert outcome.ok, (outcome.reason, outcome.stderr_tail)


LEAKY = '''import torch
import torch.nn.functional as F

STATE = {"calls": 0}


def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    STATE["calls"] += 1
    if STATE["calls"] > 200:  # one training calls the loss 150 times; more means state leaked across trainings
        raise RuntimeError("module state survived from an earlier training")
    h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * h)
'''


@needs_bwrap
def test_each_training_gets_a_fresh_copy_of_the_candidate(warm: LocalSandbox, inputs: dict[str, Any]):
    """Module-level state cannot carry information from one (configuration, seed) to the next."""
    both = dict(inputs)
    both[input_key("clean", 1)] = Evaluator(TASK).inputs_for(TASK.suite("discover"), "clean", 1)
    job = Job(task="preference", source=LEAKY, stage="train", configs=["clean"], seeds=[0, 1], limits=LIMITS)
    outcome = warm.run(job, both)
    assert outcome.ok, outcome.reason
    assert set(outcome.outputs) == {input_key("clean", 0), input_key("clean", 1)}
