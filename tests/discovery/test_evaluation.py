"""The trusted side refuses raw outputs no honest training returns, before it spends work on them.

The jail cannot produce raw outputs any more (the trainer is trusted); the check still guards
scoring against a task's trainer that returns what it should not (a user's task file)."""

from __future__ import annotations

import time

import pytest
import torch

from discovery.evaluation import MAX_CURVE_ELEMENTS, Evaluator
from discovery.tasks import get_task
from sandbox.base import Outcome, Status
from sandbox.host.jobfiles import input_key

TASK = get_task("preference")


class ForgingEvaluator(Evaluator):
    """Returns, as if the job had succeeded, outputs a broken trainer could have returned."""

    def __init__(self, forge):  # noqa: ANN001
        super().__init__(TASK)
        self.forge = forge

    def run(self, job, sandbox, inputs=None, suite=None):  # noqa: ANN001, ANN201
        honest = TASK.train(_dpo(), TASK.suite("discover").config("clean"), 0, inputs[input_key("clean", 0)], "cpu")
        honest["train_seconds"] = 1.0
        return Outcome(Status.OK, outputs={input_key("clean", 0): self.forge(honest)})


def _dpo():  # noqa: ANN202
    namespace: dict = {}
    exec(TASK.seed_program, namespace)  # noqa: S102 - the task's own reference program
    return namespace["loss"]


def _evaluate(forge):  # noqa: ANN001, ANN202
    torch.set_num_threads(1)
    return ForgingEvaluator(forge).evaluate(TASK.seed_program, None, "discover", configs=["clean"], seeds=[0])


def test_an_honest_output_scores():
    assert _evaluate(lambda raw: raw).ok


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        (lambda raw: {**raw, "train_seconds": -5.0}, "train_seconds -5.0 is not a non-negative number"),
        (lambda raw: {**raw, "train_seconds": float("nan")}, "train_seconds nan"),
        (
            lambda raw: {**raw, "curve_loss": torch.zeros(12_000_000)},
            f"curve_loss has 12000000 points (at most {MAX_CURVE_ELEMENTS})",
        ),
        (lambda raw: {**raw, "junk": [torch.zeros(10_000_000), torch.zeros(10_000_001)]}, "more than 20000000"),
    ],
)
def test_forged_outputs_are_refused_quickly(forge, reason):
    started = time.monotonic()
    report = _evaluate(forge)
    assert report.status is Status.INVALID and reason in report.reason, report.reason
    assert time.monotonic() - started < 30  # no scoring of a 12-million-point curve (that took 63 s)
