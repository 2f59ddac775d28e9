"""Batched trainings of the optimizer task give every (configuration, seed) the score it gets alone.

For every baseline and control, each configuration of the discover suite (every problem kind it
has, and a short autoencoder, the held-out suite's one other kind) trains its seeds twice in this
process: each alone (``Task.train``: the rule called as in a training of its own) and all seeds as
one vectorised training per learning rate (``Task.train_batch``, the rule under ``vmap``). Their
fitness must agree to 1e-5; they are in fact bit-identical (final weights, curves, divergence
steps), and SGD and AdamW trained in a batch land exactly on the references that define fitness 0
and 1. A rule that cannot run under ``vmap`` (``.item()``, a Python ``if`` on a tensor, a Python
int in its state) falls back to one call per training, gets the same scores, and says so; through
the real sandbox as well, where a training that breaks is named as it is when trained alone.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from discovery.evaluation import Evaluator
from discovery.tasks import TrainingFailed, get_task
from discovery.tasks.base import local_slot, suite_config
from discovery.tasks.optimizer import env as optimizer_env
from discovery.training import training_units
from sandbox.base import Job
from sandbox.host.local import LocalSandbox, bubblewrap_problem

TASK = get_task("optimizer")
TOLERANCE = 1e-5
SUITE = TASK.suite("discover")
#: the held-out suite's autoencoder, shortened: the one problem kind the discover suite lacks
AUTOENCODER = suite_config("autoencoder", kind="autoencoder", steps=40, batch=64, hidden=16, base_lr=0.01)
CONFIGS = (*SUITE.configs, AUTOENCODER)
PROGRAMS = {**TASK.baselines, **TASK.controls}

ADAMW_BODY = """\
    m = 0.9 * state.get("m", 0.0) + 0.1 * grad
    v = 0.999 * state.get("v", 0.0) + 0.001 * grad * grad
    state["m"], state["v"] = m, v
    m_hat = m / (1 - 0.9**t)
    v_hat = v / (1 - 0.999**t)
    decayed = param * (1 - lr * 0.01)
    return decayed - lr * m_hat / (torch.sqrt(v_hat) + 1e-8)
"""

#: AdamW, step for step, written so that it cannot run under vmap
NOT_UNDER_VMAP = {
    "item": "import torch\n\n\ndef update(param, grad, state, lr, step):\n"
    "    t = step + 0 * int(grad.abs().sum().item() < 0)\n" + ADAMW_BODY,
    "if on a tensor": "import torch\n\n\ndef update(param, grad, state, lr, step):\n"
    "    t = step\n    if (grad != grad).any():\n        return param\n" + ADAMW_BODY,
    "int in the state": "import torch\n\n\ndef update(param, grad, state, lr, step):\n"
    '    t = state.get("t", 0) + 1\n    state["t"] = t\n' + ADAMW_BODY,
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread, as in a sandboxed job: on a busy machine spinning threads stall these tiny
    trainings tenfold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _function(source: str):  # noqa: ANN202
    namespace: dict = {}
    exec(source, namespace)  # noqa: S102 - the task's own programs and this file's
    return namespace["update"]


@pytest.fixture(scope="module", autouse=True)
def fresh_references(tmp_path_factory) -> Iterator[None]:
    """SGD's and AdamW's references computed here, not read from a cache another process wrote."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DISCOVERY_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.setattr(optimizer_env, "_references", {})
        yield


@pytest.fixture(scope="module")
def inputs() -> dict:
    return {(c.name, s): TASK.prepare(c, s) for c in CONFIGS for s in SUITE.seeds}


def _items(config, inputs) -> list:
    return [(config, s, inputs[(config.name, s)]) for s in SUITE.seeds]


def _same_raw(a: dict, b: dict) -> bool:
    finals = all(torch.equal(x[k], y[k]) for x, y in zip(a["final"], b["final"], strict=True) for k in x)
    curves = torch.equal(a["curve_loss"].nan_to_num(-1.0), b["curve_loss"].nan_to_num(-1.0))
    return finals and curves and torch.equal(a["diverged_at"], b["diverged_at"])


def test_the_seeds_of_a_configuration_train_as_one_batch():
    job = Job(task="optimizer", source="", configs=[c.name for c in SUITE.configs], seeds=list(SUITE.seeds))
    units = training_units(TASK, SUITE, job)
    assert units == [[(c.name, s) for s in SUITE.seeds] for c in SUITE.configs]
    # what the rule sees as a plain number or a shape is part of the key
    for change in ({"base_lr": 0.2}, {"steps": 99}, {"lr_grid": (1.0,)}, {"batch": 32}):
        other = suite_config("logreg", **{**SUITE.config("logreg").params, **change})
        assert TASK.batch_key(other) != TASK.batch_key(SUITE.config("logreg")), change


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_batched_and_alone_fitness_agree_for_every_baseline_and_control(program, inputs):
    fn = _function(PROGRAMS[program])
    for config in CONFIGS:
        items = _items(config, inputs)
        batched = local_slot(TASK.slot.kind, fn, len(items))
        together = TASK.train_batch(batched, items, "cpu")
        assert batched.mode == "vmap", batched.fallback
        for (_, seed, cell_inputs), raw in zip(items, together, strict=True):
            alone_raw = TASK.train(fn, config, seed, cell_inputs, "cpu")
            assert _same_raw(alone_raw, raw), (config.name, seed)
            alone = TASK.score(config, seed, cell_inputs, alone_raw, "cpu")
            both = TASK.score(config, seed, cell_inputs, raw, "cpu")
            assert abs(alone.fitness - both.fitness) <= TOLERANCE, (config.name, seed, alone.fitness, both.fitness)
            if program in ("sgd", "adamw"):  # the references are trained by the same trainer
                assert both.metrics["grid_mean"] == both.metrics[f"{program}_grid_mean"], (config.name, seed)


def test_a_batch_where_some_trainings_diverge_matches_them_alone(inputs):
    # SGD at many times its step: at the highest learning rate the seeds blow up at different steps, and
    # the batch goes on with the others (the stopped ones frozen) until the last has stopped
    for name, factor in (("logreg", 300), ("quadratic", 30)):
        fn = _function(f"def update(param, grad, state, lr, step):\n    return param - {factor} * lr * grad\n")
        config = SUITE.config(name)
        items = _items(config, inputs)
        together = TASK.train_batch(fn, items, "cpu")
        highest = [int(raw["diverged_at"][-1]) for raw in together]
        assert all(highest) and len(set(highest)) > 1, (name, highest)
        for (_, seed, cell_inputs), raw in zip(items, together, strict=True):
            assert _same_raw(TASK.train(fn, config, seed, cell_inputs, "cpu"), raw), (name, seed)


@pytest.mark.parametrize("why", sorted(NOT_UNDER_VMAP))
def test_a_rule_that_cannot_run_under_vmap_falls_back_and_scores_the_same(why, inputs):
    fn, adamw = _function(NOT_UNDER_VMAP[why]), _function(TASK.baselines["adamw"])
    for name in ("logreg", "quadratic"):
        config = SUITE.config(name)
        items = _items(config, inputs)
        batched = local_slot(TASK.slot.kind, fn, len(items))
        together = TASK.train_batch(batched, items, "cpu")
        assert batched.mode == "loop" and batched.fallback, why
        for (_, seed, cell_inputs), raw in zip(items, together, strict=True):
            assert _same_raw(TASK.train(fn, config, seed, cell_inputs, "cpu"), raw), (why, name, seed)
            assert _same_raw(TASK.train(adamw, config, seed, cell_inputs, "cpu"), raw), (why, name, seed)


def _breaks_on(value: float) -> str:
    """A rule that returns float64 for the one training whose first coordinate starts at ``value``."""
    return (
        "import torch\n\n\ndef update(param, grad, state, lr, step):\n"
        f"    if step == 1 and float(param.flatten()[0]) == {value!r}:\n"
        "        return param.double()\n"
        "    return param - lr * grad\n"
    )


def test_the_training_that_breaks_is_named_by_its_index(inputs):
    config = SUITE.config("quadratic")
    items = _items(config, inputs)
    source = _breaks_on(float(items[1][2]["init"]["x"][0]))
    with pytest.raises(TrainingFailed, match="dtype torch.float64") as caught:
        TASK.train_batch(_function(source), items, "cpu")
    assert caught.value.index == 1


@pytest.fixture(scope="module")
def box():
    if bubblewrap_problem():
        pytest.skip(bubblewrap_problem())
    with LocalSandbox(threads=2) as sandbox:
        yield sandbox


JAILED = ["logreg", "quadratic"]


def _fitness(report) -> list:
    return [(m.config, m.seed, m.fitness) for c in report.configs for m in c.seeds]


def _paths(report) -> set:
    return {m.path for c in report.configs for m in c.seeds}


def test_through_the_sandbox_batched_and_sequential_scores_are_the_same(box):
    reports = {
        batched: Evaluator(TASK, batched=batched).evaluate(TASK.seed_program, box, configs=JAILED)
        for batched in (True, False)
    }
    assert all(r.ok for r in reports.values()), [r.one_line() for r in reports.values()]
    assert _fitness(reports[True]) == _fitness(reports[False])
    assert [f for _, _, f in _fitness(reports[True])] == [1.0] * 6  # AdamW is the unit of fitness
    assert {b: _paths(r) for b, r in reports.items()} == {True: {"batched-vmap x3"}, False: {"sequential"}}


def test_through_the_sandbox_a_rule_that_cannot_run_under_vmap_falls_back(box):
    source = NOT_UNDER_VMAP["int in the state"]
    batched = Evaluator(TASK).evaluate(source, box, configs=JAILED)
    alone = Evaluator(TASK, batched=False).evaluate(source, box, configs=JAILED)
    assert batched.ok and alone.ok, (batched.one_line(), alone.one_line())
    (path,) = _paths(batched)
    assert path.startswith("batched-loop x3 (") and "int" in path, path
    assert _fitness(batched) == _fitness(alone)
    assert [f for _, _, f in _fitness(batched)] == [1.0] * 6  # it is AdamW


def test_through_the_sandbox_the_training_that_breaks_is_named_as_alone(box):
    config = SUITE.config("quadratic")
    source = _breaks_on(float(TASK.prepare(config, 1)["init"]["x"][0]))
    reports = [Evaluator(TASK, batched=b).evaluate(source, box, configs=["quadratic"]) for b in (True, False)]
    for report in reports:
        assert not report.ok and report.stage == "train", report.one_line()
        assert report.reason.startswith("quadratic seed 1: step 1: update returned dtype torch.float64"), report.reason
    assert reports[0].reason == reports[1].reason
