"""The trusted proxies of a jailed slot: gradients and updates exactly as in-process, replies validated."""

from __future__ import annotations

import pytest
import torch

from discovery.slots import JailedFunction, JailedUpdateRule
from discovery.tasks import TrainingFailed, get_task
from discovery.tasks.base import LocalUpdateRule
from sandbox.host.local import LocalSandbox, bubblewrap_problem
from sandbox.wire import UPDATE_RULE, JailSpec

PREFERENCE = get_task("preference")
OPTIMIZER = get_task("optimizer")
needs_bwrap = pytest.mark.skipif(bool(bubblewrap_problem()), reason=f"no bubblewrap: {bubblewrap_problem()}")


def _dpo():  # noqa: ANN202
    namespace: dict = {}
    exec(PREFERENCE.seed_program, namespace)  # noqa: S102 - the task's own reference program
    return namespace["loss"]


def _args(seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, generator=g) * 3 - 10) for _ in range(4)] + [0.1]


@pytest.fixture(scope="module")
def box():
    if bubblewrap_problem():
        pytest.skip(bubblewrap_problem())
    with LocalSandbox() as sandbox:
        yield sandbox


@needs_bwrap
@pytest.mark.parametrize("upstream", ["mean", "weighted"])
def test_the_jails_gradient_reaches_the_trainers_graph_exactly(box, upstream: str):
    """``loss.mean().backward()`` (the gradient sent with the forward) and any other upstream gradient
    (asked for afterwards) give the same leaf gradients as the function run in this process."""
    weights = torch.linspace(0.5, 2.0, 16)
    reduce = (lambda out: out.mean()) if upstream == "mean" else (lambda out: (out * weights).sum())
    with box.session(JailSpec(source=PREFERENCE.seed_program, slot="loss"), 60) as session:
        jailed = JailedFunction(session)
        for step in range(3):
            here = [a.clone().requires_grad_(True) if i < 2 else a for i, a in enumerate(_args(step))]
            there = [a.clone().requires_grad_(True) if i < 2 else a for i, a in enumerate(_args(step))]
            reduce(_dpo()(*here)).backward()
            out = jailed(*there)
            reduce(out).backward()
            assert torch.equal(out.detach(), _dpo()(*_args(step)))
            for a, b in zip(here[:2], there[:2], strict=True):
                assert torch.equal(a.grad, b.grad), (upstream, step)
        calls = session.calls
    assert calls == (3 if upstream == "mean" else 6)  # a mean costs one round trip per step, others two


@needs_bwrap
def test_an_output_without_a_graph_comes_back_without_one(box):
    constant = "import torch\n\n\ndef loss(a, b, c, d, beta):\n    return torch.zeros(a.shape[0])\n"
    with box.session(JailSpec(source=constant, slot="loss"), 60) as session:
        args = [a.requires_grad_(True) if i < 2 else a for i, a in enumerate(_args(0))]
        out = JailedFunction(session)(*args)
    assert isinstance(out, torch.Tensor) and not out.requires_grad and torch.equal(out, torch.zeros(16))


@needs_bwrap
def test_a_jailed_update_rule_steps_exactly_like_the_rule_in_process(box):
    adamw = OPTIMIZER.baselines["adamw"]
    namespace: dict = {}
    exec(adamw, namespace)  # noqa: S102 - the task's own baseline
    local = LocalUpdateRule(namespace["update"])
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(8, 4, generator=g), torch.randn(4, generator=g)]
    with box.session(
        JailSpec(source=adamw, slot="update", kind=UPDATE_RULE, allowed_imports=("torch", "math")), 60
    ) as session:
        jailed = JailedUpdateRule(session)
        ours, theirs = [p.clone() for p in params], [p.clone() for p in params]
        for rule in (local, jailed):
            rule.reset(0)
        for step in range(1, 6):
            grads = [torch.randn(p.shape, generator=g) for p in params]
            ours = local.step(ours, grads, 1e-2, step)
            theirs = jailed.step(theirs, grads, 1e-2, step)
            assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True)), step
        jailed.reset(0)  # a fresh copy: its state (Adam's moments) is gone
        local.reset(0)
        grads = [torch.ones(p.shape) for p in params]
        assert all(
            torch.equal(a, b)
            for a, b in zip(local.step(params, grads, 1e-2, 1), jailed.step(params, grads, 1e-2, 1), strict=True)
        )


class ScriptedSession:
    """A session whose replies a test chooses (what a hostile jail could send)."""

    def __init__(self, *replies: dict):
        self.replies = list(replies)
        self.calls = 0

    def request(self, message: dict, seconds: float = 0.0) -> dict:
        self.calls += 1
        return self.replies.pop(0)


def test_a_gradient_of_the_wrong_shape_is_refused():
    x = torch.randn(4, requires_grad=True)
    out = JailedFunction(ScriptedSession({"out": torch.zeros(4), "graph": True, "grads": [torch.zeros(3)]}))(x)
    with pytest.raises(TrainingFailed, match=r"gradient: the sandbox returned shape \(3,\)"):
        out.mean().backward()


def test_the_wrong_number_of_gradients_or_updates_is_refused():
    x = torch.randn(4, requires_grad=True)
    out = JailedFunction(ScriptedSession({"out": torch.zeros(4), "graph": True, "grads": []}))(x)
    with pytest.raises(TrainingFailed, match="wrong number of gradients"):
        out.mean().backward()
    rule = JailedUpdateRule(ScriptedSession({"params": [torch.zeros(2)]}))
    with pytest.raises(TrainingFailed, match="instead of 2 new parameters"):
        rule.step([torch.zeros(2), torch.zeros(2)], [torch.zeros(2), torch.zeros(2)], 0.1, 1)


def test_an_integer_loss_with_a_graph_is_refused():
    x = torch.randn(4, requires_grad=True)
    with pytest.raises(TrainingFailed, match="floating-point"):
        JailedFunction(ScriptedSession({"out": torch.zeros(4, dtype=torch.int64), "graph": True}))(x)
