"""The optimizer suite separates good rules from bad ones, through the real sandbox."""

import pytest

from discovery.evaluation import Evaluator
from discovery.tasks import get_task
from sandbox.host.local import LocalSandbox

#: cheap configurations for the literature orderings (the full tables are in docs/benchmarks.md)
ORDER_CONFIGS = ["charlm", "quadratic", "rosenbrock"]


@pytest.fixture(scope="module")
def box():
    with LocalSandbox(threads=2) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def evaluator():
    return Evaluator(get_task("optimizer"))


@pytest.fixture(scope="module")
def controls(box, evaluator):
    task = evaluator.task
    programs = {"adamw": task.baselines["adamw"], **task.controls}
    return {name: evaluator.evaluate(src, box, "discover") for name, src in programs.items()}


@pytest.fixture(scope="module")
def ordered(box, evaluator):
    task = evaluator.task
    return {
        name: evaluator.evaluate(task.baselines[name], box, "discover", configs=ORDER_CONFIGS)
        for name in ("sgd", "nesterov", "adam", "adamw")
    }


def test_every_program_is_scored(controls, ordered):
    for name, report in {**controls, **ordered}.items():
        assert report.ok, f"{name}: {report.one_line()}"
        assert report.fitness.n == 3
    discover = get_task("optimizer").suite("discover")
    assert [c.name for c in controls["adamw"].configs] == [c.name for c in discover.configs]


def test_adamw_is_the_unit_of_fitness(controls):
    # fitness 1 is AdamW computed on the trusted side; the sandboxed AdamW lands on it
    assert controls["adamw"].fitness.mean == pytest.approx(1.0, abs=0.05)


def test_noop_scores_clearly_worse_than_adamw(controls):
    adamw, noop = controls["adamw"].fitness, controls["noop"].fitness
    assert adamw.low > noop.high, (adamw, noop)
    for config in controls["noop"].configs:  # never moves: the initial weights' metric on every run
        assert config.metrics["grid_mean"].mean == pytest.approx(config.metrics["init"].mean)


def test_gradient_ascent_scores_clearly_worse_than_adamw(controls):
    adamw, ascent = controls["adamw"].fitness, controls["ascent"].fitness
    assert adamw.low > ascent.high, (adamw, ascent)
    assert ascent.mean <= controls["noop"].fitness.mean + 1e-9  # clipped: no better than standing still
    assert sum(c.metrics["diverged_runs"].mean for c in controls["ascent"].configs) > 0


def _config(report, name):
    return next(c for c in report.configs if c.name == name)


def test_adamw_beats_plain_sgd_on_the_language_model(ordered):
    # raw validation cross-entropy (nats per character), not the normalised fitness
    sgd, adamw = _config(ordered["sgd"], "charlm"), _config(ordered["adamw"], "charlm")
    assert adamw.metrics["grid_mean"].high < sgd.metrics["grid_mean"].low, (adamw.metrics, sgd.metrics)
    for a, s in zip(adamw.seeds, sgd.seeds, strict=True):  # on every seed, over the grid and at its best
        assert a.seed == s.seed
        assert a.metrics["grid_mean"] < s.metrics["grid_mean"] - 0.1
        assert a.metrics["best"] < s.metrics["best"]


def test_adaptive_rules_beat_plain_sgd_on_ill_conditioned_problems(ordered):
    for name in ("adam", "adamw"):
        for config in ("quadratic", "rosenbrock"):
            assert _config(ordered[name], config).fitness.low > _config(ordered["sgd"], config).fitness.high


def test_nesterov_momentum_beats_plain_sgd_on_rosenbrock(ordered):
    # plain SGD at the same effective step diverges in the curved valley; Nesterov momentum does not
    nesterov, sgd = _config(ordered["nesterov"], "rosenbrock"), _config(ordered["sgd"], "rosenbrock")
    assert nesterov.fitness.low > sgd.fitness.high + 0.2
    assert sgd.metrics["diverged_runs"].mean == 3


def test_same_seed_same_scores(box, evaluator):
    source = evaluator.task.baselines["adam"]
    first = evaluator.evaluate(source, box, "discover", configs=["logreg", "quadratic"], seeds=[5])
    second = evaluator.evaluate(source, box, "discover", configs=["logreg", "quadratic"], seeds=[5])
    assert first.ok and second.ok
    for a, b in zip(first.configs, second.configs, strict=True):
        assert [s.fitness for s in a.seeds] == [s.fitness for s in b.seeds]
        assert [s.metrics for s in a.seeds] == [s.metrics for s in b.seeds]
        assert [s.seed for s in a.seeds] == [5]


def test_a_broken_rule_fails_at_the_right_stage(box, evaluator):
    shape = evaluator.evaluate("def update(param, grad, state, lr, step):\n    return param.sum()\n", box)
    assert not shape.ok and shape.stage == "contract" and "shape" in shape.reason
    args = evaluator.evaluate("def update(param, grad, lr):\n    return param\n", box)
    assert not args.ok and args.stage == "contract" and "5 arguments" in args.reason
    state = evaluator.evaluate("def update(param, grad, state, lr, step):\n    return param - lr * state['m']\n", box)
    assert not state.ok and "KeyError" in state.reason and state.line == 2
