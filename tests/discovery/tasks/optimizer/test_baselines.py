"""Each baseline rule against torch.optim (or its published formula), the contract check, and the export adapter."""

import math

import pytest
import torch

from discovery.tasks import ContractError, get_task
from discovery.tasks.optimizer import baselines as lib

LR = 0.01
STEPS = 6

#: the torch.optim optimizer each baseline must reproduce exactly (lr in the rule's own scale)
TORCH_TWINS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=10 * LR),
    "momentum": lambda ps: torch.optim.SGD(ps, lr=LR, momentum=0.9),
    "nesterov": lambda ps: torch.optim.SGD(ps, lr=LR, momentum=0.9, nesterov=True),
    "adagrad": lambda ps: torch.optim.Adagrad(ps, lr=3 * LR, eps=1e-10),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=LR, alpha=0.99, eps=1e-8),
    "adam": lambda ps: torch.optim.Adam(ps, lr=LR, betas=(0.9, 0.999), eps=1e-8),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
}


def _grads(shape, n):
    g = torch.Generator().manual_seed(7)
    return [torch.randn(shape, generator=g) for _ in range(n)]


def _run_rule(rule, start, grads):
    param, state = start.clone(), {}
    for step, grad in enumerate(grads, 1):
        with torch.no_grad():
            param = rule(param.clone(), grad, state, LR, step)
    return param


def lion_by_formula(start, grads):
    """Lion (Chen et al. 2023) written independently, eta = lr / 3, lambda = 0.1."""
    w, m = start.clone(), torch.zeros_like(start)
    eta = LR / 3
    for g in grads:
        c = 0.9 * m + 0.1 * g
        w = w * (1 - eta * 0.1) - eta * torch.sign(c)
        m = 0.99 * m + 0.01 * g
    return w


def test_every_baseline_is_pinned():
    assert set(TORCH_TWINS) | {"lion"} == set(lib.BASELINES)


@pytest.mark.parametrize("name", sorted(TORCH_TWINS))
def test_baseline_matches_torch_optim(name):
    start = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    grads = _grads((5, 3), STEPS)
    p = torch.nn.Parameter(start.clone())
    opt = TORCH_TWINS[name]([p])
    for g in grads:
        p.grad = g.clone()
        opt.step()
    got = _run_rule(lib.BASELINES[name], start, grads)
    assert torch.allclose(got, p.detach(), rtol=1e-5, atol=1e-6), (got - p.detach()).abs().max()


def test_lion_matches_its_formula():
    start = torch.randn(4, generator=torch.Generator().manual_seed(2))
    grads = _grads((4,), STEPS)
    assert torch.allclose(_run_rule(lib.lion, start, grads), lion_by_formula(start, grads), atol=1e-7)


def test_pinned_adamw_first_step():
    # literal values: Adam's first step moves each coordinate by lr * sign(g) (plus decay)
    got = lib.adamw(torch.tensor([1.0, -2.0]), torch.tensor([0.5, -3.0]), {}, 0.1, 1)
    assert got.tolist() == pytest.approx([1.0 * (1 - 0.001) - 0.1, -2.0 * (1 - 0.001) + 0.1], abs=1e-6)


def _fn(source):
    ns: dict = {}
    exec(source, ns)
    return ns["update"]


def test_contract_accepts_every_baseline_and_control():
    task = get_task("optimizer")
    for source in {**task.baselines, **task.controls}.values():
        task.contract_check(_fn(source))


BAD = {
    "not a tensor": ("def update(param, grad, state, lr, step):\n    return 1.0\n", "returned float"),
    "wrong shape": ("def update(param, grad, state, lr, step):\n    return param.sum()\n", "returned shape ()"),
    "wrong dtype": ("def update(param, grad, state, lr, step):\n    return param.double()\n", "dtype torch.float64"),
    "nan": ("def update(param, grad, state, lr, step):\n    return param * float('nan')\n", "NaN"),
    "nan later": (
        "import torch\n\ndef update(param, grad, state, lr, step):\n    return param - lr * grad / (step - 2)\n",
        "step 2",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_contract_rejects_with_reason(case):
    source, reason = BAD[case]
    with pytest.raises(ContractError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        get_task("optimizer").contract_check(_fn(source))


def test_contract_check_is_cheap():
    import time

    task = get_task("optimizer")
    fn = _fn(task.seed_program)
    t0 = time.perf_counter()
    for _ in range(10):
        task.contract_check(fn)
    assert (time.perf_counter() - t0) / 10 < 0.05


def _exported_module(names):
    """What an export writes: the baselines' programs, REGISTRY, then the task's adapter."""
    task = get_task("optimizer")
    parts = ["import math\nimport torch\nimport torch.nn.functional as F\n"]
    for name in names:
        body = task.baselines[name].split("\n\n\n", 1)[1].replace("def update(", f"def {name}(", 1)
        parts.append(body)
    parts.append("REGISTRY = {" + ", ".join(f"{n!r}: {n}" for n in names) + "}\n")
    parts.append(task.export_adapter())
    ns: dict = {}
    exec("\n\n".join(parts), ns)
    return ns


def _regression(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, generator=g)
    y = x @ torch.randn(5, 1, generator=g) + 0.1 * torch.randn(64, 1, generator=g)
    return x, y


def _train(make_opt, steps=30):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = make_opt(model.parameters())
    x, y = _regression()
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return model, opt, losses


def test_export_adapter_trains_like_torch_adamw():
    ns = _exported_module(["adamw", "lion"])
    model, opt, losses = _train(lambda ps: ns["make_optimizer"]("adamw", ps, lr=0.01))
    twin, _, twin_losses = _train(lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.01))
    assert isinstance(opt, torch.optim.Optimizer)
    assert losses[-1] < 0.5 * losses[0]
    assert losses == pytest.approx(twin_losses, rel=1e-4)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    # the rule's buffers and the step count survive state_dict / load_state_dict
    saved = opt.state_dict()
    assert float(saved["state"][0]["step"]) == 30 and "m" in saved["state"][0]
    _, fresh, _ = _train(lambda ps: ns["RuleOptimizer"](ps, ns["REGISTRY"]["lion"], lr=0.01), steps=1)
    assert all(float(s["step"]) == 1 for s in fresh.state.values())
    with pytest.raises(KeyError, match="no exported rule"):
        ns["make_optimizer"]("nope", model.parameters())


def test_export_adapter_rejects_a_bad_rule_with_a_reason():
    ns = _exported_module(["sgd"])
    p = torch.nn.Parameter(torch.ones(3))
    opt = ns["RuleOptimizer"]([p], lambda param, grad, state, lr, step: param.sum(), lr=0.1)
    p.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match=r"shape \(\) for a parameter of shape \(3,\)"):
        opt.step()
    assert not math.isnan(float(p.detach().sum()))
