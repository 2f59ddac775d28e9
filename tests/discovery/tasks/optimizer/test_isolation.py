"""A rule cannot carry what it learned from one run of the learning-rate grid into the next."""

from discovery.evaluation import Evaluator
from discovery.tasks import get_task
from sandbox.host.local import LocalSandbox

REMEMBERS_LR = """import torch

SEEN = {"lr": None}


def update(param, grad, state, lr, step):
    if SEEN["lr"] is not None and SEEN["lr"] != lr:
        raise RuntimeError("module state survived from another learning rate of the grid")
    SEEN["lr"] = lr
    return param - 10.0 * lr * grad
"""


def test_every_learning_rate_of_the_grid_gets_a_fresh_copy_of_the_rule():
    task = get_task("optimizer")
    with LocalSandbox() as box:
        report = Evaluator(task).evaluate(REMEMBERS_LR, box, "discover", configs=["quadratic"], seeds=[0])
        sgd = Evaluator(task).evaluate(task.baselines["sgd"], box, "discover", configs=["quadratic"], seeds=[0])
    assert report.ok, report.one_line()
    assert sgd.ok and abs(report.fitness.mean - sgd.fitness.mean) < 1e-9  # same rule, same score
