"""An exported update rule is a ``torch.optim.Optimizer`` with torch's conventions: per-parameter
``state[p]["step"]``, decoupled ``weight_decay``, ``maximize``, and a ``state_dict`` round trip.

The module comes from ``discovery.export.export`` (what ``discovery export`` runs) over an archive
holding the baselines' programs and a rule that keeps a ``"step"`` buffer of its own.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from discovery.archive import Archive
from discovery.export import export
from discovery.tasks import get_task

OWN_STEP_RULE = """import math
import torch


def update(param, grad, state, lr, step):
    state["step"] = state.get("step", 0) + 10
    state["seen"] = sorted([k for k in state if k != "seen"])
    return param - lr * grad
"""


@pytest.fixture(scope="module")
def ns(tmp_path_factory) -> dict:
    """The exported module's namespace: adam, sgd, lion and the rule with its own ``"step"``."""
    task = get_task("optimizer")
    db = tmp_path_factory.mktemp("optimizer-export") / "runs.db"
    programs = {name: task.baselines[name] for name in ("adam", "sgd", "lion")} | {"own_step": OWN_STEP_RULE}
    with Archive(db) as archive:
        run = archive.create_run("optimizer", {"task": "optimizer"})
        ids = []
        for i, (name, code) in enumerate(programs.items()):
            ids.append(archive.add_candidate(run, name=name, code=code, code_hash=name, proposer="test").id)
            archive.update_candidate(ids[-1], status="ok", fitness=1.0 - 0.1 * i)
    text, chosen, _ = export(db, candidate_ids=ids)
    assert [name for name, _ in chosen] == list(programs)
    namespace: dict = {}
    exec(compile(text, "exported.py", "exec"), namespace)  # noqa: S102 - the module just exported
    return namespace


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, generator=g)
    return x, x @ torch.randn(5, 1, generator=g) + 0.1 * torch.randn(64, 1, generator=g)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, skip_last_layer_every: int = 0) -> list:
    """MSE steps; every ``skip_last_layer_every``-th step the last layer gets no gradient (frozen for it)."""
    x, y = _data()
    losses = []
    last = list(model[2].parameters())
    for i in range(1, steps + 1):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        if skip_last_layer_every and i % skip_last_layer_every == 0:
            for p in last:
                p.grad = None
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_step_is_kept_per_parameter_like_torch_adam(ns):
    model, twin = _model(), _model()
    opt = ns["make_optimizer"]("adam", model.parameters(), lr=0.01)
    ref = torch.optim.Adam(twin.parameters(), lr=0.01, foreach=False)
    losses = _train(model, opt, 9, skip_last_layer_every=3)
    twin_losses = _train(twin, ref, 9, skip_last_layer_every=3)
    assert losses == pytest.approx(twin_losses, rel=1e-5) and losses[-1] < 0.9 * losses[0]
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        mine, theirs = opt.state[p]["step"], ref.state[q]["step"]
        assert isinstance(mine, torch.Tensor) and mine.dtype == theirs.dtype == torch.float32
        assert float(mine) == float(theirs)
        assert torch.allclose(p, q, atol=1e-6)
    assert [float(opt.state[p]["step"]) for p in model.parameters()] == [9, 9, 6, 6]  # the last layer skipped 3
    assert "rule_step" not in opt.param_groups[0]


def test_the_rule_sees_its_own_buffers_and_step_only(ns):
    p = torch.nn.Parameter(torch.ones(3))
    opt = ns["make_optimizer"]("own_step", [p], lr=0.1)
    for _ in range(3):
        p.grad = torch.ones(3)
        opt.step()
    state = opt.state[p]
    assert state["seen"] == ["step"] and float(state["step"]) == 3  # the rule never saw the optimizer's count
    assert state["rule:step"] == 30  # and kept its own under another key
    assert torch.allclose(p.detach(), torch.full((3,), 0.7))


def test_maximize_ascends_exactly_like_torch(ns):
    model, twin = _model(), _model()
    opt = ns["make_optimizer"]("adam", model.parameters(), lr=0.01, maximize=True)
    losses = _train(model, opt, 10)
    twin_losses = _train(twin, torch.optim.Adam(twin.parameters(), lr=0.01, maximize=True, foreach=False), 10)
    assert losses == pytest.approx(twin_losses, rel=1e-5) and losses[-1] > losses[0]
    down, up = _model(), _model()
    before = _params(down)
    _train(down, ns["make_optimizer"]("sgd", down.parameters(), lr=0.01), 1)
    _train(up, ns["make_optimizer"]("sgd", up.parameters(), lr=0.01, maximize=True), 1)
    for a, b, w in zip(down.parameters(), up.parameters(), before, strict=True):
        assert torch.allclose(b - w, -(a - w), atol=1e-7)  # the same step, the other way


def test_weight_decay_is_decoupled_like_adamw(ns):
    model, twin = _model(), _model()
    opt = ns["make_optimizer"]("adam", model.parameters(), lr=0.01, weight_decay=0.1)
    losses = _train(model, opt, 10)
    twin_losses = _train(twin, torch.optim.AdamW(twin.parameters(), lr=0.01, weight_decay=0.1, foreach=False), 10)
    assert losses == pytest.approx(twin_losses, rel=1e-5)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)
    # with a zero gradient only the decay acts: w <- w (1 - lr wd) per step
    w = torch.nn.Parameter(torch.full((4,), 2.0))
    shrink = ns["make_optimizer"]("sgd", [w], lr=0.1, weight_decay=0.5)
    for _ in range(3):
        w.grad = torch.zeros(4)
        shrink.step()
    assert torch.allclose(w.detach(), torch.full((4,), 2.0 * 0.95**3))
    with pytest.raises(ValueError, match="weight_decay must be non-negative"):
        ns["make_optimizer"]("sgd", [w], weight_decay=-1.0)


def test_state_dict_round_trip_continues_the_same_run(ns, tmp_path: Path):
    model = _model()
    opt = ns["make_optimizer"]("lion", model.parameters(), lr=0.01, weight_decay=0.01)
    _train(model, opt, 5, skip_last_layer_every=2)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert saved["opt"]["param_groups"][0]["weight_decay"] == 0.01 and not saved["opt"]["param_groups"][0]["maximize"]
    assert [float(saved["opt"]["state"][i]["step"]) for i in range(4)] == [5, 5, 3, 3]
    assert all("m" in saved["opt"]["state"][i] for i in range(4))  # the rule's buffers
    resumed = _model()
    resumed.load_state_dict(saved["model"])
    again = ns["RuleOptimizer"](resumed.parameters(), ns["REGISTRY"]["lion"], lr=0.01)
    again.load_state_dict(saved["opt"])
    assert again.param_groups[0]["weight_decay"] == 0.01
    _train(model, opt, 4)
    _train(resumed, again, 4)
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)
        assert float(opt.state[p]["step"]) == float(again.state[q]["step"])


def test_a_state_dict_of_an_earlier_export_loads(ns):
    model = _model()
    opt = ns["make_optimizer"]("adam", model.parameters(), lr=0.01)
    _train(model, opt, 3)
    old = copy.deepcopy(opt.state_dict())  # what earlier exports saved: the count per group, none per parameter
    for buffers in old["state"].values():
        del buffers["step"]
    old["param_groups"][0] = {"lr": 0.01, "rule_step": 3, "params": old["param_groups"][0]["params"]}
    again = ns["make_optimizer"]("adam", _model().parameters(), lr=0.01)
    again.load_state_dict(old)
    group = again.param_groups[0]
    assert "rule_step" not in group and group["weight_decay"] == 0.0 and group["maximize"] is False
    assert all(float(again.state[p]["step"]) == 3 for p in group["params"])


def test_sparse_gradients_are_refused(ns):
    emb = torch.nn.Embedding(5, 2, sparse=True)
    opt = ns["make_optimizer"]("sgd", emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
