"""The offline proposer's operators make valid programs for the optimizer slot (in-process, cheap)."""

import random

import pytest

from discovery.evaluation import Evaluator
from discovery.proposers.mutations import crossover, gate_blend, mutate
from discovery.tasks import ContractError, get_task


def test_mutations_and_crossovers_give_valid_update_rules():
    task = get_task("optimizer")
    evaluator = Evaluator(task)
    rng = random.Random(0)
    sources = sorted(task.baselines.items())
    passed, total, operators = 0, 0, set()
    for i in range(60):
        name, src = rng.choice(sources)
        if i % 3 == 0:
            other, other_src = rng.choice([s for s in sources if s[0] != name])
            mutant = crossover(src, name, other_src, other, rng, "update")
        else:
            mutant = mutate(src, name, rng, "update")
        operators.add(mutant.operator)
        assert evaluator.static_check(mutant.code) is None, mutant.code
        namespace: dict = {}
        exec(mutant.code, namespace)
        total += 1
        try:
            task.contract_check(namespace["update"])
            passed += 1
        except (ContractError, ArithmeticError):
            pass  # e.g. a swapped sign under a square root: rejected with a reason, as intended
    assert passed >= 0.85 * total, (passed, total)
    assert {"crossover", "perturb_constant", "rescale_scalar"} <= operators


def test_no_term_is_built_on_the_state_dict_or_the_step():
    task = get_task("optimizer")
    rng = random.Random(1)
    for _ in range(40):
        mutant = mutate(task.baselines["adamw"], "adamw", rng, "update", operators=["insert_term"])
        assert "(state)" not in mutant.code and "(step)" not in mutant.code, mutant.code


def test_gate_blend_declines_the_optimizer_slot():
    task = get_task("optimizer")
    with pytest.raises(ValueError, match="five preference arguments"):
        gate_blend(task.baselines["adam"], "adam", task.baselines["sgd"], "sgd", random.Random(0), "update")
