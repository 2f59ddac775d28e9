import ast
import math
import random
import re

import pytest
import torch

from discovery.proposers.codehash import normalized_hash
from discovery.proposers.mutations import (
    FALLBACK_OPERATORS,
    OPERATORS,
    TAU_RANGE,
    Mutant,
    crossover,
    gate_blend,
    mutate,
)

ARGS = [
    "policy_chosen_logps",
    "policy_rejected_logps",
    "reference_chosen_logps",
    "reference_rejected_logps",
    "beta",
]

DPO = '''import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """DPO."""
    logits = (policy_chosen_logps - reference_chosen_logps) - (
        policy_rejected_logps - reference_rejected_logps
    )
    return -F.logsigmoid(beta * logits)
'''

IPO = '''import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """IPO."""
    logits = (policy_chosen_logps - reference_chosen_logps) - (
        policy_rejected_logps - reference_rejected_logps
    )
    return (logits - 1 / (2 * beta)) ** 2
'''

EXP = '''import torch


def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """Exponential loss."""
    logits = (policy_chosen_logps - reference_chosen_logps) - (
        policy_rejected_logps - reference_rejected_logps
    )
    return torch.exp(-beta * logits)
'''

# an unusual but valid parent: other alias, module constant, helper, method calls, log/sqrt
ODD = '''"""A module docstring."""
import torch
from torch.nn import functional as nnf
import math

TAU = 0.05


def helper(x):
    return x.sigmoid()


def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    pi = policy_chosen_logps - policy_rejected_logps
    ref = reference_chosen_logps - reference_rejected_logps
    x = beta * (pi - ref)
    w = helper(x / TAU)
    out = (1 - w) * -nnf.logsigmoid(x) + w * torch.exp(-x)
    out = out + 0.01 * torch.log(torch.sigmoid(x)) + torch.sqrt(x * x + 1e-6) * math.pi * 0.001
    return out
'''

PROGRAMS = {"dpo": DPO, "ipo": IPO}


def _slot(tree: ast.Module) -> ast.FunctionDef:
    slots = [s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == "loss"]
    assert len(slots) == 1, "exactly one top-level def loss"
    return slots[0]


def assert_valid_program(code: str) -> None:
    """Parses, defines loss with the five arguments, imports only torch / F / math, no dunders."""
    tree = ast.parse(code)
    fn = _slot(tree)
    assert [a.arg for a in fn.args.posonlyargs + fn.args.args] == ARGS
    assert not fn.args.vararg and not fn.args.kwarg and not fn.args.kwonlyargs
    for stmt in tree.body:
        assert isinstance(stmt, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.Assign, ast.Expr))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert all(a.name in ("torch", "torch.nn.functional", "math") for a in node.names)
        if isinstance(node, ast.Attribute):
            assert not node.attr.startswith("__")
        if isinstance(node, ast.Name):
            assert not node.id.startswith("_")
        if isinstance(node, ast.FunctionDef):
            assert node.name.isidentifier() and not node.name.startswith("_")


def run_candidate(code: str, seed: int = 0) -> bool:
    """True if loss() on four (10,) tensors returns a finite (10,) tensor with finite gradients."""
    namespace: dict = {}
    exec(compile(code, "<candidate>", "exec"), namespace)
    gen = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(10, generator=gen).requires_grad_() for _ in range(4)]
    try:
        out = namespace["loss"](*inputs, 0.1)
        if not isinstance(out, torch.Tensor) or out.shape != (10,) or not torch.isfinite(out).all():
            return False
        out.sum().backward()
    except Exception:
        return False
    grads = [x.grad for x in inputs]
    return any(g is not None for g in grads) and all(g is None or torch.isfinite(g).all() for g in grads)


def assert_mutant(m: Mutant, parent_code: str, parents: list[str]) -> None:
    assert_valid_program(m.code)
    assert normalized_hash(m.code) != normalized_hash(parent_code)
    assert m.parents == parents
    assert m.name and m.thought and "\n" not in m.thought and "\n" not in m.name


def test_parents_are_valid_and_run():
    for code in (DPO, IPO, EXP, ODD):
        assert run_candidate(code)


@pytest.mark.parametrize("program", sorted(PROGRAMS))
@pytest.mark.parametrize("operator", OPERATORS)
def test_each_operator(program, operator):
    code = PROGRAMS[program]
    runs = 0
    for seed in range(10):
        m = mutate(code, program, random.Random(seed), operators=[operator])
        assert_mutant(m, code, [program])
        assert m.name.startswith(f"{program}~")
        if program == "dpo" and operator == "drop_term":  # DPO has no +/- term to drop
            assert m.operator in FALLBACK_OPERATORS
        else:
            assert m.operator == operator
        runs += run_candidate(m.code)
    assert runs >= 8


def test_at_least_80_percent_of_random_dpo_mutants_are_usable():
    usable, operators, hashes = 0, set(), set()
    for seed in range(200):
        m = mutate(DPO, "dpo", random.Random(seed))
        assert_mutant(m, DPO, ["dpo"])
        usable += run_candidate(m.code, seed)
        operators.add(m.operator)
        hashes.add(normalized_hash(m.code))
    assert usable >= 160, f"{usable}/200 usable"
    assert operators == set(OPERATORS) - {"drop_term"}
    assert len(hashes) >= 100  # not the same few mutants over and over


def test_random_mutants_of_other_parents_are_usable():
    for name, code in (("ipo", IPO), ("exp", EXP), ("odd", ODD)):
        usable = 0
        for seed in range(60):
            m = mutate(code, name, random.Random(seed))
            assert_mutant(m, code, [name])
            usable += run_candidate(m.code, seed)
        assert usable >= 54, (name, usable)


def test_mutation_is_deterministic_for_a_seed():
    for code in (DPO, IPO, ODD):
        for seed in range(5):
            assert mutate(code, "p", random.Random(seed)) == mutate(code, "p", random.Random(seed))
    assert len({mutate(DPO, "p", random.Random(s)).code for s in range(10)}) > 5
    assert crossover(DPO, "a", IPO, "b", random.Random(3)) == crossover(DPO, "a", IPO, "b", random.Random(3))
    assert gate_blend(DPO, "a", IPO, "b", random.Random(3)) == gate_blend(DPO, "a", IPO, "b", random.Random(3))


def test_swap_function_stays_in_family_and_skips_equivalent_spellings():
    seen = set()
    for seed in range(40):
        m = mutate(DPO, "dpo", random.Random(seed), operators=["swap_function"])
        assert m.operator == "swap_function"
        seen.add(re.search(r"swap_fn\((.*)\)$", m.name).group(1))
    assert all(s.startswith("logsigmoid->") for s in seen)
    assert "logsigmoid->-softplus(-x)" not in seen  # the same function, a wasted evaluation
    assert "logsigmoid->-exp(-x)" in seen
    m = next(
        m
        for s in range(100)
        if "-exp(-x)" in (m := mutate(DPO, "dpo", random.Random(s), operators=["swap_function"])).name
    )
    assert "torch.exp(-(beta * logits))" in m.code


def test_swap_operator_divides_only_by_provably_nonzero_values():
    for seed in range(60):
        m = mutate(DPO, "dpo", random.Random(seed), operators=["swap_operator"])
        assert "*->/" not in m.name  # `beta * logits` -> `beta / logits` could divide by zero
    by_beta = DPO.replace("beta * logits", "logits * beta")
    names = {mutate(by_beta, "d", random.Random(s), operators=["swap_operator"]).name for s in range(60)}
    assert "d~swap_op(*->/)" in names


def test_mutations_never_put_unprovable_values_under_log_or_sqrt():
    code = DPO.replace("-F.logsigmoid(beta * logits)", "-torch.log(torch.sigmoid(beta * logits))")
    for seed in range(60):
        m = mutate(code, "p", random.Random(seed))
        for node in ast.walk(_slot(ast.parse(m.code))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.log":
                assert not ast.unparse(node.args[0]).startswith(("torch.tanh", "-", "F.logsigmoid")), m.code
        assert all(run_candidate(m.code, seed * 3 + k) for k in range(3)), m.code


def test_insert_term_adds_a_small_weighted_unary_term():
    for seed in range(20):
        m = mutate(IPO, "ipo", random.Random(seed), operators=["insert_term"])
        ret = [n for n in ast.walk(_slot(ast.parse(m.code))) if isinstance(n, ast.Return)][0].value
        assert isinstance(ret, ast.BinOp) and isinstance(ret.op, (ast.Add, ast.Sub))
        term = ret.right
        assert isinstance(term, ast.BinOp) and isinstance(term.op, ast.Mult)
        assert isinstance(term.left, ast.Constant) and 0.01 <= term.left.value <= 0.5
        assert isinstance(term.right, ast.Call)
        assert ast.unparse(ret.left) == "(logits - 1 / (2 * beta)) ** 2"


def test_drop_term_keeps_the_loss_a_tensor():
    for seed in range(10):
        m = mutate(IPO, "ipo", random.Random(seed), operators=["drop_term"])
        assert m.operator == "drop_term"
        assert "return logits ** 2" in m.code  # dropping `logits` would leave a constant
    three = DPO.replace("-F.logsigmoid(beta * logits)", "-F.logsigmoid(beta * logits) + 0.1 * logits**2 - 0.01")
    dropped = {mutate(three, "t", random.Random(s), operators=["drop_term"]).name for s in range(30)}
    assert len(dropped) >= 3


def test_perturb_constant_changes_only_constants():
    def masked(code: str) -> str:
        tree = ast.parse(code)
        fn = _slot(tree)
        if isinstance(fn.body[0], ast.Expr):  # the docstring
            fn.body.pop(0)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
                node.value = 0
        return ast.dump(tree)

    for seed in range(20):
        m = mutate(IPO, "ipo", random.Random(seed), operators=["perturb_constant"])
        assert m.operator == "perturb_constant"
        assert masked(m.code) == masked(IPO)
        old, new = map(float, re.search(r"perturb_const\((.*)->(.*)\)", m.name).groups())
        assert old in (1.0, 2.0) and new > 0 and abs(math.log(new / old)) < 2
    # a program without constants gets a temperature on a function's argument
    m = mutate(DPO, "dpo", random.Random(0), operators=["perturb_constant"])
    assert re.search(r"F\.logsigmoid\([0-9.]+ \* \(beta \* logits\)\)", m.code)


def _effective_beta(code: str, beta: float) -> float:
    """Run the slot's first statements up to its first use of the margin and read ``beta``."""
    fn = _slot(ast.parse(code))
    body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    namespace = {"beta": beta}
    exec(compile(ast.Module([body[0]], []), "<first>", "exec"), namespace)
    return namespace["beta"]


def test_rescale_scalar_gives_beta_one_positive_effective_value():
    code = DPO
    forms = set()
    for seed in range(30):
        m = mutate(code, "p", random.Random(seed), operators=["rescale_scalar"])
        assert m.operator == "rescale_scalar" and m.name.startswith("p~rescale(beta=")
        forms.add(m.name.split("=", 1)[1].split("(")[0].split(" ")[0])
        fn = _slot(ast.parse(m.code))
        assigns = [s for s in fn.body if isinstance(s, ast.Assign) and s.targets[0].id == "beta"]
        assert len(assigns) == 1  # a second rescale replaces the first instead of stacking
        for beta in (0.02, 0.1, 0.5):
            assert _effective_beta(m.code, beta) > 0
        assert run_candidate(m.code)
        code = m.code
    assert len(forms) >= 3  # scale, cap and power forms all occur


def test_rescale_scalar_without_a_scalar_argument_falls_back():
    code = "import torch\n\n\ndef loss(logits, targets):\n    return (logits - targets) ** 2\n"
    m = mutate(code, "sq", random.Random(0), operators=["rescale_scalar"])
    assert m.operator in FALLBACK_OPERATORS


def test_imports_are_added_when_a_swap_needs_them():
    m = next(
        m for s in range(200) if "F." in (m := mutate(EXP, "exp", random.Random(s), operators=["swap_function"])).code
    )
    assert "import torch.nn.functional as F" in m.code
    assert m.code.index("import torch.nn.functional as F") < m.code.index("def loss")


@pytest.mark.parametrize("mode", ["splice", "convex", "max", "min"])
def test_crossover_of_dpo_and_ipo(mode):
    for seed in range(10):
        m = crossover(DPO, "dpo", IPO, "ipo", random.Random(seed), mode=mode)
        assert_valid_program(m.code)
        assert m.operator == "crossover" and m.parents == ["dpo", "ipo"]
        assert m.name.startswith("dpoxipo~crossover(")
        digest = normalized_hash(m.code)
        assert digest not in (normalized_hash(DPO), normalized_hash(IPO))
        assert run_candidate(m.code, seed)
        names = {s.name for s in ast.parse(m.code).body if isinstance(s, ast.FunctionDef)}
        if mode == "splice":
            assert names == {"loss"} and "crossover(splice)" in m.name
        else:
            assert names == {"loss", "parent_a_loss", "parent_b_loss"}


def test_random_crossover_is_valid():
    modes = set()
    for seed in range(30):
        m = crossover(IPO, "ipo", DPO, "dpo", random.Random(seed))
        assert_valid_program(m.code)
        assert run_candidate(m.code, seed)
        modes.add(re.search(r"crossover\((\w+)", m.name).group(1))
    assert modes == {"splice", "convex", "max", "min"}


def test_gate_blend_is_the_lrml_formula():
    for seed in range(30):
        m = gate_blend(DPO, "dpo", EXP, "exp", random.Random(seed))
        assert_valid_program(m.code)
        assert m.operator == "gate_blend" and m.parents == ["dpo", "exp"]
        tau = float(re.search(r"tau=([0-9.e-]+)\)", m.name).group(1))
        assert TAU_RANGE[0] <= tau <= TAU_RANGE[1]
        namespace: dict = {}
        exec(m.code, namespace)
        gen = torch.Generator().manual_seed(seed)
        pc, pr, rc, rr = (torch.randn(10, generator=gen) for _ in range(4))
        x = 0.1 * ((pc - rc) - (pr - rr))
        gate = torch.sigmoid(x / tau)
        expected = (1 - gate) * -torch.nn.functional.logsigmoid(x) + gate * torch.exp(-x)
        torch.testing.assert_close(namespace["loss"](pc, pr, rc, rr, 0.1), expected)


def test_gate_blend_of_dpo_and_ipo_is_valid():
    m = gate_blend(DPO, "dpo", IPO, "ipo", random.Random(0))
    assert_valid_program(m.code)
    assert run_candidate(m.code)
    assert normalized_hash(m.code) not in (normalized_hash(DPO), normalized_hash(IPO))


def test_nested_crossovers_rename_helpers_and_stay_mutable():
    ab = crossover(DPO, "dpo", IPO, "ipo", random.Random(1), mode="convex").code
    cd = gate_blend(ODD, "odd", EXP, "exp", random.Random(2)).code
    for seed, mode in enumerate(["convex", "max", "min", "splice"]):
        m = crossover(ab, "ab", cd, "cd", random.Random(seed), mode=mode)
        assert_valid_program(m.code)
        assert run_candidate(m.code)
        defs = [s.name for s in ast.parse(m.code).body if isinstance(s, ast.FunctionDef)]
        assert len(defs) == len(set(defs))
    grand = crossover(ab, "ab", cd, "cd", random.Random(0), mode="max").code
    usable = 0
    for seed in range(20):
        m = mutate(grand, "g", random.Random(seed))
        assert_mutant(m, grand, ["g"])
        usable += run_candidate(m.code, seed)
    assert usable >= 18


def test_short_evolution_keeps_producing_valid_programs():
    rng = random.Random(0)
    pool = [("dpo", DPO), ("ipo", IPO)]
    usable = 0
    for step in range(80):
        (ia, a), (ib, b) = rng.choice(pool), rng.choice(pool)
        r = rng.random()
        if r < 0.7:
            m = mutate(a, ia, rng)
        elif r < 0.9:
            m = crossover(a, ia, b, ib, rng)
        else:
            m = gate_blend(a, ia, b, ib, rng)
        assert_valid_program(m.code)
        if run_candidate(m.code, step):
            usable += 1
            pool.append((f"c{step}", m.code))
    assert usable >= 64


def test_bad_parents_and_arguments_raise():
    with pytest.raises(ValueError):
        mutate("def loss(:\n", "bad", random.Random(0))
    with pytest.raises(ValueError):
        mutate(DPO.replace("def loss", "def other"), "bad", random.Random(0))
    with pytest.raises(ValueError):
        mutate(DPO, "dpo", random.Random(0), operators=["no_such_operator"])
    with pytest.raises(ValueError):
        crossover(DPO, "a", IPO, "b", random.Random(0), mode="no_such_mode")
    with pytest.raises(ValueError):
        crossover(DPO, "a", "def loss(x, beta):\n    return x\n", "b", random.Random(0))
