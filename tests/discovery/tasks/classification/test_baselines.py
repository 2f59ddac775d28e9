"""Each baseline's value on fixed tensors, pinned against its formula computed independently;
the contract check accepts every baseline and rejects bad candidates with the right reason."""

import math

import pytest
import torch

from discovery.tasks import ContractError, get_task
from discovery.tasks.classification import baselines as lib

LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-2.0, 3.0, 1.0], [1.5, 1.5, -0.5]])
TARGETS = torch.tensor([0, 2, 0, 1])


def probs(row: list[float]) -> list[float]:
    z = [math.exp(v) for v in row]
    return [v / sum(z) for v in z]


def per_example(formula):
    return [formula(probs(row), y) for row, y in zip(LOGITS.tolist(), TARGETS.tolist(), strict=True)]


EXPECTED = {
    "cross_entropy": lambda: per_example(lambda p, y: -math.log(p[y])),
    "label_smoothing": lambda: per_example(
        lambda p, y: 0.9 * -math.log(p[y]) + 0.1 * sum(-math.log(pk) for pk in p) / len(p)
    ),
    "focal": lambda: per_example(lambda p, y: -((1 - p[y]) ** 2) * math.log(p[y])),
    "generalized_ce": lambda: per_example(lambda p, y: (1 - p[y] ** 0.7) / 0.7),
    "mae": lambda: per_example(lambda p, y: 1 - p[y]),
    "symmetric_ce": lambda: per_example(
        lambda p, y: 0.1 * -math.log(p[y]) + sum(-pk * math.log(1.0 if k == y else 1e-4) for k, pk in enumerate(p))
    ),
    "poly1": lambda: per_example(lambda p, y: -math.log(p[y]) + (1 - p[y])),
    "brier": lambda: per_example(lambda p, y: sum((pk - (k == y)) ** 2 for k, pk in enumerate(p))),
}


def test_every_baseline_is_pinned():
    assert set(EXPECTED) == set(lib.BASELINES)


@pytest.mark.parametrize("name", sorted(lib.BASELINES))
def test_baseline_matches_formula(name):
    got = lib.BASELINES[name](LOGITS, TARGETS)
    assert got.shape == (4,) and got.dtype == torch.float32
    assert got.tolist() == pytest.approx(EXPECTED[name](), rel=1e-5, abs=1e-6)


def test_pinned_cross_entropy_values():
    # literal values, so that a change of formula on both sides is still caught
    got = lib.cross_entropy(LOGITS, TARGETS)
    assert got.tolist() == pytest.approx([0.241311, 1.001943, 5.132845, 0.758624], abs=1e-5)


def candidate(body: str):
    namespace: dict = {}
    exec(
        "import math\nimport torch\nimport torch.nn.functional as F\n\n\ndef loss(logits, targets):\n"
        + "".join(f"    {line}\n" for line in body.splitlines()),
        namespace,
    )
    return namespace["loss"]


def test_contract_check_accepts_every_baseline_and_the_seed_program():
    task = get_task("classification")
    for source in [*task.baselines.values(), task.seed_program]:
        namespace: dict = {}
        exec(source, namespace)
        task.contract_check(namespace["loss"])


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("return F.cross_entropy(logits, targets)", "shape ()"),
        ("return -F.log_softmax(logits, dim=1)", "shape (10, 5)"),
        ("return F.cross_entropy(logits, targets, reduction='none').double()", "dtype torch.float64"),
        ("return F.cross_entropy(logits, targets, reduction='none') * float('nan')", "NaN or infinite"),
        ("return torch.log(torch.softmax(logits, 1)[:, 0] - 1)", "NaN or infinite"),
        ("return targets.float()", "no gradient"),
        ("return F.cross_entropy(logits, targets, reduction='none').tolist()", "returned list"),
        ("return torch.sqrt(logits[:, 0] - logits[:, 0])", "gradient with respect to the logits is NaN"),
    ],
)
def test_contract_check_rejects_bad_candidates_with_the_reason(body, reason):
    task = get_task("classification")
    with pytest.raises(ContractError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        task.contract_check(candidate(body))


def test_contract_check_is_cheap():
    import time

    task = get_task("classification")
    fn = lib.symmetric_ce
    start = time.perf_counter()
    for _ in range(10):
        task.contract_check(fn)
    assert (time.perf_counter() - start) / 10 < 0.2
