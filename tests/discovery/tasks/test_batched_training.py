"""Batched trainings give every (configuration, seed) the score it gets when trained alone. For every
baseline and control of the loss tasks (and of the example user task, which opts in), the discover
suite's cells (two seeds of the largest batch the suite forms and of its last one) are trained twice
in this process: each alone (``Task.train``, the function called per training) and in the batches
``run_job`` forms (``Task.train_batch``, the function under ``vmap``). Their fitness must agree to
1e-5 (they are bit-identical) with one intra-op thread, as in a sandboxed job: with two, a kernel's
last bits differ between a batch and a training alone, and DiscoPOP, chaotic at beta 0.5, grows them
to 3.6e-3. The same through the real sandbox, and for a candidate that cannot run under ``vmap`` (it
falls back to one call per training, and says so).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from discovery.evaluation import Evaluator
from discovery.tasks import get_task
from discovery.tasks.base import local_slot
from discovery.training import training_units
from sandbox.base import Job

TOLERANCE = 1e-5
SEEDS = (0, 1)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread, as a sandboxed training has: a kernel's last bits may depend on the count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _function(task, source):
    namespace: dict = {}
    exec(source, namespace)
    return namespace[task.slot.name]


#: a user's task file that opts in to batching (``batch_key``, ``train_batch``)
EXAMPLE = str(Path(__file__).resolve().parents[3] / "examples" / "regression_task.py")


def _library(task):
    return {**task.baselines, **getattr(task, "controls", {})}


def _programs(task_name):
    return [(task_name, name) for name in _library(get_task(task_name))]


@pytest.mark.parametrize(
    ("task_name", "program"), _programs("preference") + _programs("classification") + _programs(EXAMPLE)
)
def test_batched_and_alone_fitness_agree_for_every_baseline_and_control(task_name, program):
    task = get_task(task_name)
    fn = _function(task, _library(task)[program])
    suite = task.suite("discover")
    job = Job(task=task_name, source="", configs=[c.name for c in suite.configs], seeds=list(SEEDS))
    units = training_units(task, suite, job)
    assert max(len(u) for u in units) > len(SEEDS)  # configurations of equal shapes share a batch
    assert sorted(cell for unit in units for cell in unit) == sorted((c, s) for c in job.configs for s in SEEDS)
    # the largest batch (configurations of equal shapes together) and the last one: enough to compare
    # batched with alone for every program without training the whole suite for each
    checked = [max(units, key=len), units[-1]]
    inputs = {(c, s): task.prepare(suite.config(c), s) for c, s in ((c, s) for u in checked for c, s in u)}
    for unit in checked:
        items = [(suite.config(c), s, inputs[(c, s)]) for c, s in unit]
        batched = local_slot(task.slot.kind, fn, len(items))
        together = task.train_batch(batched, items, "cpu")
        assert batched.mode == "vmap", batched.fallback
        for (config, seed, cell_inputs), raw in zip(items, together, strict=True):
            alone = task.score(config, seed, cell_inputs, task.train(fn, config, seed, cell_inputs, "cpu"), "cpu")
            both = task.score(config, seed, cell_inputs, raw, "cpu")
            assert abs(alone.fitness - both.fitness) <= TOLERANCE, (config.name, seed, alone.fitness, both.fitness)


ITEM_DPO = """\
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    scale = 1.0 if float(margin.detach().mean().item()) > -1e9 else 2.0  # .item(): cannot run under vmap
    return -F.logsigmoid(beta * margin) * scale
"""


@pytest.fixture(scope="module")
def sandbox():
    from sandbox.host.local import LocalSandbox

    box = LocalSandbox()
    yield box
    box.close()


def test_through_the_sandbox_batched_and_sequential_scores_are_the_same(sandbox):
    task = get_task("preference")
    configs = ["clean", "noise20"]
    reports = {
        batched: Evaluator(task, batched=batched).evaluate(task.seed_program, sandbox, configs=configs, seeds=[0, 1])
        for batched in (True, False)
    }
    assert all(r.ok for r in reports.values()), [r.one_line() for r in reports.values()]
    by_path = {b: [(m.config, m.seed, m.fitness) for c in r.configs for m in c.seeds] for b, r in reports.items()}
    assert by_path[True] == by_path[False]
    paths = {b: {m.path for c in r.configs for m in c.seeds} for b, r in reports.items()}
    assert paths == {True: {"batched-vmap x4"}, False: {"sequential"}}


def test_a_candidate_that_cannot_run_under_vmap_falls_back_and_scores_the_same(sandbox):
    task = get_task("preference")
    configs = ["clean", "noise20"]
    batched = Evaluator(task).evaluate(ITEM_DPO, sandbox, configs=configs, seeds=[0, 1])
    alone = Evaluator(task, batched=False).evaluate(ITEM_DPO, sandbox, configs=configs, seeds=[0, 1])
    assert batched.ok and alone.ok, (batched.one_line(), alone.one_line())
    paths = {m.path for c in batched.configs for m in c.seeds}
    assert len(paths) == 1
    (path,) = paths
    assert path.startswith("batched-loop x4") and "item" in path, path
    assert [m.fitness for c in batched.configs for m in c.seeds] == [m.fitness for c in alone.configs for m in c.seeds]
    # and it is the same loss as DPO (its scale is always 1), so it scores what DPO scores
    dpo = Evaluator(task).evaluate(task.seed_program, sandbox, configs=configs, seeds=[0, 1])
    assert [m.fitness for c in batched.configs for m in c.seeds] == [m.fitness for c in dpo.configs for m in c.seeds]
