"""Each baseline's value on fixed tensors, pinned against its formula computed independently."""

import math

import pytest
import torch

from discovery.tasks.preference import baselines as lib

PC = torch.tensor([-10.0, -12.0, -9.5, -11.0])
PR = torch.tensor([-11.0, -11.5, -12.0, -10.0])
RC = torch.tensor([-10.5, -12.0, -10.0, -10.0])
RR = torch.tensor([-10.5, -11.0, -11.0, -10.5])
BETA = 0.1


def sig(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def logsig(v: float) -> float:
    return math.log(sig(v))


def per_example(formula):
    out = []
    for pc, pr, rc, rr in zip(PC.tolist(), PR.tolist(), RC.tolist(), RR.tolist(), strict=True):
        a, b = pc - rc, pr - rr
        out.append(formula(a, b, a - b))
    return out


def kto_expected():
    a = (PC - RC).tolist()
    b = (PR - RR).tolist()
    z = max(0.0, sum((x + y) / 2 for x, y in zip(a, b, strict=True)) / len(a))
    return [(1 - sig(BETA * (x - z))) + (1 - sig(BETA * (z - y))) for x, y in zip(a, b, strict=True)]


def bco_expected():
    a = (PC - RC).tolist()
    b = (PR - RR).tolist()
    delta = sum(BETA * v for v in a + b) / (2 * len(a))
    return [-logsig(BETA * x - delta) - logsig(-(BETA * y - delta)) for x, y in zip(a, b, strict=True)]


def lrml(h: float) -> float:
    x = BETA * h
    gate = sig(x / 0.05)
    return (1 - gate) * -logsig(x) + gate * math.exp(-x)


EXPECTED = {
    "dpo": lambda: per_example(lambda a, b, h: -logsig(BETA * h)),
    "cdpo": lambda: per_example(lambda a, b, h: -0.8 * logsig(BETA * h) - 0.2 * logsig(-BETA * h)),
    "robust_dpo": lambda: per_example(lambda a, b, h: (-0.8 * logsig(BETA * h) + 0.2 * logsig(-BETA * h)) / 0.6),
    "ipo": lambda: per_example(lambda a, b, h: (h - 1 / (2 * BETA)) ** 2),
    "hinge": lambda: per_example(lambda a, b, h: max(0.0, 1 - BETA * h)),
    "kto_pair": kto_expected,
    "bco_pair": bco_expected,
    "nca_pair": lambda: per_example(
        lambda a, b, h: -logsig(BETA * a) - 0.5 * logsig(-BETA * a) - 0.5 * logsig(-BETA * b)
    ),
    "sppo_hard": lambda: per_example(lambda a, b, h: (a - 1 / (2 * BETA)) ** 2 + (b + 1 / (2 * BETA)) ** 2),
    "apo_zero": lambda: per_example(lambda a, b, h: (1 - sig(BETA * a)) + sig(BETA * b)),
    "discopop": lambda: per_example(lambda a, b, h: lrml(h)),
    "cell": lambda: per_example(lambda a, b, h: 0.5 * math.exp(-BETA * h) - 0.5 * logsig(BETA * h)),
    "padll": lambda: per_example(lambda a, b, h: 0.9 * (1 - 0.5 * (h < 0)) * -logsig(BETA * h)),
}


def test_every_baseline_is_pinned():
    assert set(EXPECTED) == set(lib.BASELINES)


@pytest.mark.parametrize("name", sorted(lib.BASELINES))
def test_baseline_matches_formula(name):
    got = lib.BASELINES[name](PC, PR, RC, RR, BETA)
    assert got.shape == (4,)
    assert got.tolist() == pytest.approx(EXPECTED[name](), rel=1e-5, abs=1e-6)


def test_pinned_dpo_values():
    # literal values, so that a change of formula on both sides is still caught
    got = lib.dpo(PC, PR, RC, RR, BETA)
    assert got.tolist() == pytest.approx([0.64439666, 0.66845965, 0.62095708, 0.77095711], abs=1e-6)


@pytest.mark.parametrize("name", sorted(lib.BASELINES))
def test_baselines_have_gradients(name):
    args = [t.clone().requires_grad_(True) for t in (PC, PR, RC, RR)]
    lib.BASELINES[name](*args, BETA).mean().backward()
    assert args[0].grad is not None and torch.isfinite(args[0].grad).all()
