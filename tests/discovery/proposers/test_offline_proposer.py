"""Offline proposers: mutation of the selected parent, and the random-chain ablation."""

import random

import pytest

from discovery.proposers.base import ProposalContext, Proposed
from discovery.proposers.codehash import normalized_hash
from discovery.proposers.offline import MutationProposer, RandomMutationProposer
from discovery.records import Candidate
from discovery.tasks.preference.task import TASK
from sandbox.base import Status
from sandbox.static.policy import Policy, check_source

POLICY = Policy(allowed_imports=TASK.slot.allowed_imports, slot_name=TASK.slot.name)
BASELINES = TASK.baselines
NAMES = sorted(BASELINES)


def row(name: str, i: int = 0, **kw) -> Candidate:
    fit = 0.1 + 0.01 * i
    r = {
        "id": f"c-{name}-{i}",
        "run_id": "r-1",
        "name": name,
        "code": BASELINES[name],
        "status": "ok",
        "fitness": fit,
        "fitness_ci_low": fit - 0.02,
        "fitness_ci_high": fit + 0.02,
        "n_seeds": 3,
        "per_config": {"clean": {"fitness": fit, "ci_low": fit - 0.03, "ci_high": fit + 0.03, "n": 3}},
        "heldout_fitness": 123.456,
        "heldout_per_config": {"motif": {"fitness": 9.87}},
    }
    r.update(kw)
    r["status"] = Status(r["status"])
    return Candidate(**r)


REFERENCE = row("dpo", 99, id="b-dpo")


def ctx_for(seed: int, parent="random", second="random", reference=REFERENCE) -> ProposalContext:
    rng = random.Random(seed)
    if parent == "random":
        parent = row(NAMES[rng.randrange(len(NAMES))], seed)
    if second == "random":
        second = row(NAMES[rng.randrange(len(NAMES))], seed + 1000)
    return ProposalContext(
        task=TASK,
        run_id="r-1",
        parent=parent,
        second_parent=second,
        top=[],
        diverse=[],
        failures=[],
        reference=reference,
        island=0,
        generation=1,
        rng=random.Random(seed),
    )


def same(a: Proposed, b: Proposed) -> bool:
    return (a.code, a.name, a.thought, a.parents, a.proposer, a.feedback_shown) == (
        b.code,
        b.name,
        b.thought,
        b.parents,
        b.proposer,
        b.feedback_shown,
    )


# ---- MutationProposer --------------------------------------------------------------------------


def test_mutation_deterministic_for_a_seed():
    proposer = MutationProposer()
    for seed in range(10):
        assert same(proposer.propose(ctx_for(seed)), proposer.propose(ctx_for(seed)))
    codes = {proposer.propose(ctx_for(seed, parent=row("dpo"), second=None)).code for seed in range(20)}
    assert len(codes) > 10


def test_mutation_valid_programs():
    proposer = MutationProposer()
    valid = 0
    for seed in range(100):
        ctx = ctx_for(seed)
        out = proposer.propose(ctx)
        if out.code is not None and not check_source(out.code, POLICY):
            valid += 1
            parents = [c.code for c in (ctx.parent, ctx.second_parent) if c is not None]
            assert all(normalized_hash(out.code) != normalized_hash(p) for p in parents)
    assert valid >= 95


def test_mutation_of_parent_records_what_it_was_based_on():
    parent = row("ipo", 3)
    out = MutationProposer().propose(ctx_for(1, parent=parent, second=None))
    assert out.code is not None and out.error is None
    assert out.parents == [parent.id]
    operator = out.proposer.removeprefix("mutation:")
    assert out.proposer.startswith("mutation:") and operator in out.feedback_shown
    assert out.extra["operator"] == operator
    assert "`ipo`" in out.feedback_shown and "0.130 ± 0.020" in out.feedback_shown
    assert "Parent trace:" in out.feedback_shown and "def loss(" in out.feedback_shown
    assert out.name.startswith("ipo~") and len(out.name) <= 60
    assert "123.456" not in out.feedback_shown and "heldout" not in out.feedback_shown


def test_blends_with_second_parent():
    proposer = MutationProposer(crossover_rate=1.0)
    operators = set()
    for seed in range(20):
        a, b = row("dpo", seed), row("hinge", seed + 1)
        out = proposer.propose(ctx_for(seed, parent=a, second=b))
        assert out.parents == [a.id, b.id]
        assert "Second parent:" in out.feedback_shown
        operators.add(out.proposer)
    assert operators == {"mutation:crossover", "mutation:gate_blend"}
    only_gate = MutationProposer(crossover_rate=1.0, gate_probability=1.0)
    out = only_gate.propose(ctx_for(0, parent=row("dpo"), second=row("ipo")))
    assert out.proposer == "mutation:gate_blend" and "parent_b_loss" in out.code
    never = MutationProposer(crossover_rate=0.0)
    assert never.propose(ctx_for(0, parent=row("dpo"), second=row("ipo"))).parents == ["c-dpo-0"]


def test_no_parent_or_failed_parent_mutates_the_seed():
    out = MutationProposer().propose(ctx_for(5, parent=None, second=None))
    assert out.code is not None and not check_source(out.code, POLICY)
    assert out.parents == ["b-dpo"]  # the reference row holds the seed program
    assert "seed program" in out.feedback_shown
    assert out.name.startswith("dpo~")
    failed = row("ipo", status="invalid", failed_stage="contract", reason="bad shape")
    out = MutationProposer().propose(ctx_for(5, parent=failed, second=row("hinge")))
    assert out.parents == ["b-dpo"] and out.proposer.startswith("mutation:")
    no_ref = MutationProposer().propose(ctx_for(5, parent=None, second=None, reference=None))
    assert no_ref.parents == [] and no_ref.code is not None


def test_operators_restriction_and_validation():
    proposer = MutationProposer(operators=["perturb_constant"])
    out = proposer.propose(ctx_for(3, parent=row("cdpo"), second=None))
    assert out.proposer == "mutation:perturb_constant"
    with pytest.raises(ValueError, match="unknown mutation operator"):
        MutationProposer(operators=["teleport"])
    with pytest.raises(ValueError):
        MutationProposer(crossover_rate=1.5)


# ---- RandomMutationProposer --------------------------------------------------------------------


def test_random_deterministic_and_ignores_the_archive():
    proposer = RandomMutationProposer()
    for seed in range(10):
        first = proposer.propose(ctx_for(seed))
        assert same(first, proposer.propose(ctx_for(seed)))
        # the parent and second parent make no difference
        other = proposer.propose(ctx_for(seed, parent=row("ipo", 7), second=None))
        assert (first.code, first.proposer) == (other.code, other.proposer)
    codes = {proposer.propose(ctx_for(seed)).code for seed in range(20)}
    assert len(codes) > 10


def test_random_valid_programs_and_chain_length():
    proposer = RandomMutationProposer()
    valid = 0
    lengths = set()
    for seed in range(100):
        out = proposer.propose(ctx_for(seed))
        assert out.proposer.startswith("random:")
        ops = out.proposer.removeprefix("random:").split("+")
        lengths.add(len(ops))
        assert out.extra["operators"] == ops
        if out.code is not None and not check_source(out.code, POLICY):
            valid += 1
            assert normalized_hash(out.code) != normalized_hash(TASK.seed_program)
    assert valid >= 95
    assert lengths == {1, 2, 3}


def test_random_blends_with_baselines():
    proposer = RandomMutationProposer(crossover_rate=1.0, max_chain=1)
    seen = set()
    for seed in range(10):
        out = proposer.propose(ctx_for(seed))
        assert out.proposer in ("random:crossover", "random:gate_blend")
        assert "with baseline `" in out.feedback_shown
        assert out.parents == ["b-dpo"]
        seen.add(out.feedback_shown.split("with baseline `")[1].split("`")[0])
    assert len(seen) > 2 and "dpo" not in seen
    with pytest.raises(ValueError):
        RandomMutationProposer(max_chain=0)
