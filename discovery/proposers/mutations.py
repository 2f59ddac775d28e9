"""Offline proposer: new candidates by mutation and crossover of the syntax tree (no LLM).

:func:`mutate` applies one of five operators to a parent program:

``swap_function``
    replace a unary elementwise function by another of the same family, e.g.
    ``F.logsigmoid(x)`` -> ``-torch.exp(-x)`` or ``torch.abs(x)`` -> ``torch.square(x)``
    (see :data:`UNARY_FUNCTIONS`; exactly equivalent spellings are never swapped for each other);
``swap_operator``
    change one binary operator among ``+ - *``; ``*`` becomes ``/`` only when the divisor
    is provably non-zero, ``/`` may become ``*``;
``insert_term``
    add ``+ c * u(s)`` to a returned expression, with ``s`` one of its subexpressions (or
    a local defined before the return), ``u`` a unary function and ``c`` a small constant;
``drop_term``
    remove one operand of a ``+``/``-`` chain in the returned expression;
``perturb_constant``
    multiply a numeric constant by ``exp(N(0, 0.3))`` (add ``N(0, 0.1)`` to a zero); a
    program without constants gets a multiplicative constant on a function's argument;
``rescale_scalar``
    give a scalar hyper-parameter argument (``beta``) an effective value: a first statement
    ``beta = c * beta``, ``min(beta, c)`` or ``c * beta ** p`` (replacing an earlier one), so
    that how strongly the loss reacts to the setting it is given can itself be discovered.

:func:`crossover` and :func:`gate_blend` inline both parents as helper functions
``parent_a_loss`` / ``parent_b_loss`` and combine their per-example losses (convex weight,
elementwise max or min, or an LRML-style sigmoid gate on the shared margin). Crossover
may also *splice*: replace a subexpression of A's returned expression by one of B's,
with B's locals inlined so that it only refers to the slot's arguments.

Every result parses, defines exactly one top-level slot function with the parent's
arguments, and differs from its parent(s) by :func:`normalized_hash`. Mutations that would
put a possibly zero or negative value under a division, ``log``, ``sqrt`` or fractional
power are refused (a small sign analysis proves positivity). When the chosen operator
cannot apply, others are tried, then ``perturb_constant`` and ``insert_term``. Everything
is a deterministic function of the ``random.Random`` passed in.
"""

from __future__ import annotations

import ast
import copy
import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from discovery.proposers.codehash import normalized_hash

__all__ = [
    "CROSSOVER_MODES",
    "OPERATORS",
    "UNARY_FUNCTIONS",
    "Mutant",
    "UnaryFn",
    "crossover",
    "gate_blend",
    "mutate",
]

OPERATORS = ("swap_function", "swap_operator", "insert_term", "drop_term", "perturb_constant", "rescale_scalar")
#: how often each operator is tried first
OPERATOR_WEIGHTS = {
    "swap_function": 0.25,
    "swap_operator": 0.2,
    "insert_term": 0.2,
    "drop_term": 0.1,
    "perturb_constant": 0.25,
    "rescale_scalar": 0.15,
}
#: operators that apply to (almost) any program, tried when the chosen ones cannot apply
FALLBACK_OPERATORS = ("perturb_constant", "insert_term")
CROSSOVER_MODES = ("splice", "convex", "max", "min")
CROSSOVER_WEIGHTS = {"splice": 0.4, "convex": 0.3, "max": 0.15, "min": 0.15}
#: slot arguments that are positive Python scalars, not per-example tensors
SCALAR_ARGS = frozenset({"beta", "lr"})
#: slot arguments that are neither float tensors nor positive scalars (a state dict, a step counter,
#: class-index targets: an int64 tensor that float functions such as sigmoid reject)
OPAQUE_ARGS = frozenset({"state", "step", "targets"})
HELPER_A, HELPER_B = "parent_a_loss", "parent_b_loss"
TAU_RANGE = (0.02, 1.0)

_ATTEMPTS = 40  # candidates examined per operator before giving up on it
_KNOWN_MODULES = {"torch": "torch", "torch.nn.functional": "F", "math": "math"}  # module -> usual alias
_TEMPLATE_BINDINGS = {"torch": "torch", "F": "torch.nn.functional", "math": "math"}
_QUAL_ALIASES = {
    "torch.nn.functional.sigmoid": "torch.sigmoid",
    "torch.nn.functional.tanh": "torch.tanh",
    "torch.nn.functional.relu": "torch.relu",
    "torch.special.expit": "torch.sigmoid",
    "torch.arctan": "torch.atan",
    "torch.absolute": "torch.abs",
}


@dataclass
class Mutant:
    """A proposed candidate program and how it was obtained."""

    code: str
    name: str  # short descriptive, e.g. "dpo~swap_fn(logsigmoid->softplus)"
    thought: str  # one sentence: what changed and why it might help
    operator: str  # one of OPERATORS, "gate_blend" or "crossover"
    parents: list[str]  # parent ids, as passed in


@dataclass(frozen=True)
class UnaryFn:
    """A unary elementwise function, written as an expression of the placeholder ``X``."""

    label: str
    template: str
    group: str
    equiv: str = ""  # entries sharing a non-empty tag compute the same function


#: compatible unary functions: a swap stays within a group
UNARY_FUNCTIONS: tuple[UnaryFn, ...] = (
    # increasing, <= 0, -> 0 for large x: the log-likelihood-like terms of DPO-style losses
    UnaryFn("logsigmoid", "F.logsigmoid(X)", "logsigmoid", "logsigmoid"),
    UnaryFn("-softplus(-x)", "-F.softplus(-X)", "logsigmoid", "logsigmoid"),
    UnaryFn("-relu(-x)", "-torch.relu(-X)", "logsigmoid"),
    UnaryFn("-exp(-x)", "-torch.exp(-X)", "logsigmoid"),
    UnaryFn("-relu(1-x)", "-torch.relu(1 - X)", "logsigmoid"),
    UnaryFn("-sqhinge(1-x)", "-torch.square(torch.relu(1 - X))", "logsigmoid"),
    # increasing, >= 0 (elu: > -1), convex
    UnaryFn("softplus", "F.softplus(X)", "softplus", "softplus"),
    UnaryFn("-logsigmoid(-x)", "-F.logsigmoid(-X)", "softplus", "softplus"),
    UnaryFn("relu", "torch.relu(X)", "softplus"),
    UnaryFn("exp", "torch.exp(X)", "softplus"),
    UnaryFn("elu", "F.elu(X)", "softplus"),
    UnaryFn("sqrelu", "torch.square(torch.relu(X))", "softplus"),
    # increasing, bounded in [0, 1]
    UnaryFn("sigmoid", "torch.sigmoid(X)", "sigmoid"),
    UnaryFn("tanh01", "0.5 * (torch.tanh(X) + 1)", "sigmoid"),
    UnaryFn("hardsigmoid", "F.hardsigmoid(X)", "sigmoid"),
    UnaryFn("softsign01", "0.5 * (F.softsign(X) + 1)", "sigmoid"),
    # odd, increasing, saturating
    UnaryFn("tanh", "torch.tanh(X)", "odd"),
    UnaryFn("softsign", "F.softsign(X)", "odd"),
    UnaryFn("atan", "torch.atan(X)", "odd"),
    UnaryFn("hardtanh", "F.hardtanh(X)", "odd"),
    UnaryFn("2sigmoid-1", "2 * torch.sigmoid(X) - 1", "odd"),
    # even, >= 0
    UnaryFn("abs", "torch.abs(X)", "even"),
    UnaryFn("square", "torch.square(X)", "even", "square"),
    UnaryFn("pow2", "X ** 2", "even", "square"),
    UnaryFn("log1p(x^2)", "torch.log1p(torch.square(X))", "even"),
    UnaryFn("pseudo_huber", "torch.sqrt(1 + torch.square(X)) - 1", "even"),
)

_GROUP_RATIONALE = {
    "logsigmoid": "a different penalty on small or negative margins (smooth, hinge or exponential tail) "
    "may trade robustness to noisy labels against sharper separation",
    "softplus": "a different growth of the penalty (smooth, hinge-like or exponential) changes how hard "
    "the loss pushes on badly ranked pairs",
    "sigmoid": "a differently shaped bounded weight changes which pairs dominate the gradient",
    "odd": "a different saturation changes how much confidently ranked pairs keep contributing",
    "even": "a different growth of the penalty with distance (linear, quadratic or logarithmic) "
    "changes the sensitivity to outlying pairs",
}

#: unary functions used by insert_term: (label, template, what the added term does)
_INSERT_FUNCTIONS = (
    ("square", "torch.square(X)", "quadratic in it, as in IPO"),
    ("abs", "torch.abs(X)", "linear in its magnitude"),
    ("softplus", "F.softplus(X)", "a smooth hinge on it"),
    ("softplus(-x)", "F.softplus(-X)", "a smooth hinge on its negative"),
    ("sigmoid", "torch.sigmoid(X)", "bounded and saturating"),
    ("tanh", "torch.tanh(X)", "bounded and odd"),
    ("relu", "torch.relu(X)", "a hinge on its positive part"),
    ("relu(-x)", "torch.relu(-X)", "a hinge on its negative part"),
    ("logsigmoid", "F.logsigmoid(X)", "log-likelihood-like"),
)

_OP_SWAPS: dict[type, tuple[type, ...]] = {
    ast.Add: (ast.Sub, ast.Mult),
    ast.Sub: (ast.Add, ast.Mult),
    ast.Mult: (ast.Add, ast.Sub, ast.Div),
    ast.Div: (ast.Mult,),
}
_OP_SYMBOLS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_OP_WORDS = {ast.Add: "a sum", ast.Sub: "a difference", ast.Mult: "a product", ast.Div: "a ratio"}

# keyword arguments whose constants are structural (dimensions, flags), never perturbed
_STRUCTURAL_KWARGS = frozenset(
    {"dim", "axis", "keepdim", "dtype", "reduction", "diagonal", "num_classes", "start_dim", "end_dim"}
)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


class NotApplicable(Exception):
    """An operator cannot be applied at this site."""


# =========================================================================== public API


def mutate(
    code: str,
    parent_id: str,
    rng: random.Random,
    slot_name: str = "loss",
    *,
    operators: Sequence[str] | None = None,
) -> Mutant:
    """One mutant of ``code``; ``operators`` restricts the operators tried first.

    Raises ValueError if ``code`` does not parse or define ``slot_name``, or (only for
    degenerate programs, e.g. one returning a constant) if no operator applies.
    """
    parent = _Parent(code, slot_name)
    chosen = list(operators) if operators else list(OPERATORS)
    unknown = [op for op in chosen if op not in OPERATORS]
    if unknown:
        raise ValueError(f"unknown mutation operator(s): {', '.join(unknown)}")
    order = _weighted_order(chosen, OPERATOR_WEIGHTS, rng)
    order += [op for op in FALLBACK_OPERATORS if op not in order]
    for op in order:
        for i, cand in enumerate(_GENERATORS[op](parent, rng)):
            if i >= _ATTEMPTS:
                break
            out = _accept(cand, [parent], slot_name)
            if out is not None:
                return Mutant(out, f"{parent_id}~{cand.detail}", cand.thought, op, [parent_id])
    raise ValueError(f"no mutation operator applies to {parent_id!r}")


def crossover(
    code_a: str,
    id_a: str,
    code_b: str,
    id_b: str,
    rng: random.Random,
    slot_name: str = "loss",
    *,
    mode: str | None = None,
) -> Mutant:
    """Combine two parents: splice a subexpression of B into A, or blend both per-example losses.

    ``mode`` is one of :data:`CROSSOVER_MODES` (random when None). A splice that cannot
    apply falls back to a convex blend.
    """
    a, b = _Parent(code_a, slot_name), _Parent(code_b, slot_name)
    if len(a.args) != len(b.args):
        raise ValueError(f"parents take {len(a.args)} and {len(b.args)} arguments")
    if mode is not None and mode not in CROSSOVER_MODES:
        raise ValueError(f"unknown crossover mode {mode!r}")
    modes = [mode] if mode else _weighted_order(list(CROSSOVER_MODES), CROSSOVER_WEIGHTS, rng)
    if "convex" not in modes:
        modes.append("convex")
    for m in modes:
        if m == "splice":
            gen = _splice(a, b, id_a, id_b, rng, slot_name)
        else:
            gen = _blend(a, b, id_a, id_b, rng, slot_name, m)
        for i, cand in enumerate(gen):
            if i >= _ATTEMPTS:
                break
            out = _accept(cand, [a, b], slot_name)
            if out is not None:
                return Mutant(out, f"{id_a}x{id_b}~{cand.detail}", cand.thought, "crossover", [id_a, id_b])
    raise ValueError(f"cannot cross {id_a!r} with {id_b!r}")


def gate_blend(
    code_a: str, id_a: str, code_b: str, id_b: str, rng: random.Random, slot_name: str = "loss"
) -> Mutant:
    """LRML-style blend: ``(1 - sigmoid(x / tau)) * A + sigmoid(x / tau) * B`` per example.

    ``x = beta * ((pc - rc) - (pr - rr))`` is the margin both parents share (read from the
    slot's five arguments in order) and ``tau`` is log-uniform in :data:`TAU_RANGE`.
    """
    a, b = _Parent(code_a, slot_name), _Parent(code_b, slot_name)
    if not all(_preference_like(p.args) for p in (a, b)):
        raise ValueError("gate_blend needs slots with the five preference arguments")
    cand = next(_blend(a, b, id_a, id_b, rng, slot_name, "gate"), None)
    out = _accept(cand, [a, b], slot_name) if cand is not None else None
    if cand is None or out is None:  # only if torch cannot be imported under any name
        raise ValueError(f"cannot blend {id_a!r} with {id_b!r}")
    return Mutant(out, f"{id_a}x{id_b}~{cand.detail}", cand.thought, "gate_blend", [id_a, id_b])


def _preference_like(args: list[str]) -> bool:
    """Four per-example tensor arguments, then a positive scalar: the margin a gate blend reads."""
    return len(args) == 5 and args[4] in SCALAR_ARGS and not set(args[:4]) & (SCALAR_ARGS | OPAQUE_ARGS)


# =========================================================================== parents


class _Parent:
    """A parsed parent program and what the operators need to know about it."""

    def __init__(self, code: str, slot_name: str):
        try:
            tree = ast.parse(code)
        except (SyntaxError, ValueError) as exc:
            raise ValueError(f"parent does not parse: {exc}") from exc
        slots = [s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == slot_name]
        if not slots:
            raise ValueError(f"parent does not define {slot_name}()")
        self.tree = tree
        self.slot = slots[-1]
        self.slot_name = slot_name
        self.args = _arg_names(self.slot)
        self.hash = normalized_hash(code)
        self.bindings = _import_table(tree)
        self.functions = [s for s in tree.body if isinstance(s, ast.FunctionDef)]
        self.fail_counts = {fn.name: _count_violations(fn, tree) for fn in self.functions}


@dataclass
class _Candidate:
    tree: ast.Module
    changed: ast.AST | None  # the new node, whose enclosing contexts must stay safe
    fn_name: str | None  # the top-level function containing it
    detail: str
    thought: str


def _accept(cand: _Candidate, parents: list[_Parent], slot_name: str) -> str | None:
    """The candidate's source if it is safe, valid and new; else None."""
    first = parents[0]
    if cand.fn_name is not None and cand.changed is not None:
        if not _context_ok(cand.tree, cand.fn_name, cand.changed, first.fail_counts.get(cand.fn_name, 0)):
            return None
    tree = _Simplify().visit(cand.tree)
    slot = _find_function(tree, slot_name)
    if slot is None:
        return None
    _set_docstring(slot, cand.thought)
    try:
        code = _render(tree)
    except (ValueError, TypeError, RecursionError):
        return None
    if not _valid_program(code, slot_name, first.args):
        return None
    digest = normalized_hash(code)
    if any(digest == p.hash for p in parents):
        return None
    return code


def _valid_program(code: str, slot_name: str, args: list[str]) -> bool:
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    slots = [
        s
        for s in tree.body
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and s.name == slot_name
    ]
    if len(slots) != 1 or not isinstance(slots[0], ast.FunctionDef) or _arg_names(slots[0]) != args:
        return False
    return not any(
        isinstance(n, ast.Attribute) and n.attr.startswith("__") and n.attr.endswith("__")
        for n in ast.walk(tree)
    )


# =========================================================================== operators


def _op_swap_function(p: _Parent, rng: random.Random) -> Iterator[_Candidate]:
    matches = []
    for fn in p.functions:
        for node in ast.walk(fn):
            if not isinstance(node, ast.expr):
                continue
            for entry in UNARY_FUNCTIONS:
                x = _match(entry.template, node, p.bindings)
                if x is not None:
                    matches.append((fn.name, node, x, entry))
    # a match is atomic: `torch.square` inside a matched `torch.log1p(torch.square(x))` is no site
    covered: set[int] = set()
    for _, node, x, _ in matches:
        inside_x = {id(n) for n in ast.walk(x)}
        covered.update(id(n) for n in ast.walk(node) if n is not node and id(n) not in inside_x)
    sites = []
    for fn_name, node, x, entry in matches:
        if id(node) in covered:
            continue
        for target in UNARY_FUNCTIONS:
            if target.group != entry.group or target.label == entry.label:
                continue
            if entry.equiv and entry.equiv == target.equiv:
                continue
            sites.append((fn_name, node, x, entry, target))
    rng.shuffle(sites)
    for fn_name, node, x, entry, target in sites:
        tree, (new_node, new_x) = _copy_with(p.tree, node, x)
        try:
            repl = _instantiate(target.template, new_x, _Env(tree))
        except NotApplicable:
            continue
        _replace(tree, new_node, repl)
        thought = (
            f"Replaced {entry.label} with {target.label} in `{_short(node)}`: "
            f"{_GROUP_RATIONALE[entry.group]}."
        )
        yield _Candidate(tree, repl, fn_name, f"swap_fn({entry.label}->{target.label})", thought)


def _op_swap_operator(p: _Parent, rng: random.Random) -> Iterator[_Candidate]:
    sites = []
    for fn in p.functions:
        for node in ast.walk(fn):
            if isinstance(node, ast.BinOp) and type(node.op) in _OP_SWAPS:
                sites.extend((fn.name, node, new_op) for new_op in _OP_SWAPS[type(node.op)])
    rng.shuffle(sites)
    for fn_name, node, new_op in sites:
        tree, (new_node,) = _copy_with(p.tree, node)
        new_node.op = new_op()
        old, new = _OP_SYMBOLS[type(node.op)], _OP_SYMBOLS[new_op]
        thought = (
            f"Changed `{_short(node)}` to `{_short(new_node)}`: {_OP_WORDS[new_op]} instead of "
            f"{_OP_WORDS[type(node.op)]} changes how the two quantities interact in the loss."
        )
        yield _Candidate(tree, new_node, fn_name, f"swap_op({old}->{new})", thought)


def _op_insert_term(p: _Parent, rng: random.Random) -> Iterator[_Candidate]:
    tensors = _tensor_names(p.slot)
    sites: list[tuple[ast.Return, ast.expr]] = []
    seen: set[tuple[int, str]] = set()
    for ret in _returns(p.slot):
        options = [s for s in _subexprs(ret.value) if _tensorish(s, tensors)]
        options += [ast.Name(n, ast.Load()) for n in _defined_before(p.slot, ret) if n in tensors]
        for s in options:
            key = (id(ret), ast.dump(s))
            if key not in seen:
                seen.add(key)
                sites.append((ret, s))
    if not sites:
        return
    for _ in range(_ATTEMPTS):
        ret, s = rng.choice(sites)
        label, template, purpose = rng.choice(_INSERT_FUNCTIONS)
        coef = _small_coef(rng)
        positive = rng.random() < 0.7
        tree, (new_ret,) = _copy_with(p.tree, ret)
        try:
            unary = _instantiate(template, s, _Env(tree))
        except NotApplicable:
            continue
        term = ast.BinOp(ast.Constant(coef), ast.Mult(), unary)
        new_ret.value = ast.BinOp(new_ret.value, ast.Add() if positive else ast.Sub(), term)
        sign = "+" if positive else "-"
        kind = "penalty" if positive else "bonus"
        thought = (
            f"Added {sign}{coef} * {label}(`{_short(s)}`) to the loss, a small {kind} "
            f"({purpose}) that may regularise training."
        )
        detail = f"insert_term({sign}{coef}*{label}({_tag(s)}))"
        yield _Candidate(tree, new_ret.value, p.slot.name, detail, thought)


def _op_drop_term(p: _Parent, rng: random.Random) -> Iterator[_Candidate]:
    tensors = _tensor_names(p.slot)
    sites = []
    for ret in _returns(p.slot):
        for target in _return_targets(p.slot, ret):
            for root in _chain_roots(target):
                n_terms = len(_flatten(root))
                sites.extend((target, root, i) for i in range(n_terms))
    rng.shuffle(sites)
    for target, root, i in sites:
        tree, (new_root, new_target) = _copy_with(p.tree, root, target)
        terms = _flatten(new_root)
        dropped = terms.pop(i)[1]
        new_expr = _rebuild(terms)
        _replace(tree, new_root, new_expr)
        if not _tensorish(new_expr if target is root else new_target, tensors):
            continue
        thought = (
            f"Dropped the term `{_short(dropped)}` to test whether the loss does as well or better "
            f"without it."
        )
        yield _Candidate(tree, new_expr, p.slot.name, f"drop_term({_tag(dropped)})", thought)


def _op_perturb_constant(p: _Parent, rng: random.Random) -> Iterator[_Candidate]:
    sites: list[tuple[str | None, ast.Constant]] = []
    for fn in p.functions:
        sites.extend((fn.name, c) for c in _constant_sites(fn, p.bindings))
    for stmt in p.tree.body:  # module-level constants, e.g. TAU = 0.05
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            value = stmt.value.operand if isinstance(stmt.value, ast.UnaryOp) else stmt.value
            if _is_number(value):
                sites.append((None, value))
    for _ in range(_ATTEMPTS // 2 if sites else 0):
        fn_name, node = rng.choice(sites)
        old = node.value
        new = _perturbed(old, rng)
        if _same_number(old, new) or (old and abs(new / old - 1) < 0.05):
            continue
        tree, (new_node,) = _copy_with(p.tree, node)
        repl = _number(new)
        _replace(tree, new_node, repl)
        ratio = f" (x{new / old:.2f})" if old else ""
        thought = (
            f"Changed the constant {old!r} to {new!r}{ratio} to explore a nearby setting of the same loss."
        )
        yield _Candidate(tree, repl, fn_name, f"perturb_const({old!r}->{new!r})", thought)
    # no (usable) constant: put a temperature on the argument of a function call
    tensors = {fn.name: _tensor_names(fn) for fn in p.functions}
    scale_sites = []
    for fn in p.functions:
        for node in ast.walk(fn):
            if isinstance(node, ast.Call) and node.args and _callee(node, p.bindings) is not None:
                arg = node.args[0]
                if not isinstance(arg, ast.Starred) and _tensorish(arg, tensors[fn.name]):
                    scale_sites.append((fn.name, arg))
    if not scale_sites:
        slot_tensors = tensors[p.slot.name]
        for ret in _returns(p.slot):
            scale_sites += [(p.slot.name, s) for s in _subexprs(ret.value) if _tensorish(s, slot_tensors)]
    if not scale_sites:
        return
    for _ in range(_ATTEMPTS // 2):
        fn_name, node = rng.choice(scale_sites)
        coef = float(f"{math.exp(rng.gauss(0.0, 0.3)):.3g}")
        if abs(coef - 1) < 0.05:
            continue
        tree, (new_node,) = _copy_with(p.tree, node)
        repl = ast.BinOp(ast.Constant(coef), ast.Mult(), new_node)
        _replace(tree, new_node, repl)
        thought = (
            f"Scaled `{_short(node)}` by {coef}, a temperature that makes the function applied to it "
            f"{'sharper' if coef > 1 else 'smoother'}."
        )
        yield _Candidate(tree, repl, fn_name, f"perturb_const(scale x{coef})", thought)


def _rescale_expr(name: str, rng: random.Random) -> tuple[ast.expr, str]:
    """A positive effective value for the positive scalar ``name`` and how to describe it."""
    arg = ast.Name(name, ast.Load())
    form = rng.choice(("scale", "cap", "power"))
    if form == "scale":
        c = float(f"{math.exp(rng.gauss(0.0, 0.6)):.3g}")
        return ast.BinOp(ast.Constant(c), ast.Mult(), arg), f"{c} * {name}"
    c = float(f"{math.exp(rng.uniform(math.log(0.03), math.log(0.5))):.3g}")
    if form == "cap":
        return ast.Call(ast.Name("min", ast.Load()), [arg, ast.Constant(c)], []), f"min({name}, {c})"
    p = float(f"{rng.uniform(0.25, 0.75):.2g}")
    scale = float(f"{c ** (1 - p):.3g}")  # equal to the input at `name` == c
    power = ast.BinOp(arg, ast.Pow(), ast.Constant(p))
    return ast.BinOp(ast.Constant(scale), ast.Mult(), power), f"{scale} * {name} ** {p}"


def _op_rescale_scalar(p: _Parent, rng: random.Random) -> Iterator[_Candidate]:
    scalars = [a for a in p.args if a in SCALAR_ARGS]
    if not scalars:
        return
    for _ in range(_ATTEMPTS // 4):
        name = rng.choice(scalars)
        tree = copy.deepcopy(p.tree)
        slot = _find_function(tree, p.slot_name)
        assert slot is not None
        body = slot.body
        start = 1 if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else 0
        expr, text = _rescale_expr(name, rng)
        assign = ast.Assign([ast.Name(name, ast.Store())], expr, lineno=0)
        first = body[start] if start < len(body) else None
        replaces = (isinstance(first, ast.Assign) and len(first.targets) == 1
                    and isinstance(first.targets[0], ast.Name) and first.targets[0].id == name
                    and name in {n.id for n in ast.walk(first.value) if isinstance(n, ast.Name)})
        if replaces:
            body[start] = assign
        else:
            body.insert(start, assign)
        thought = (f"Gave `{name}` an effective value `{name} = {text}`: how strongly the loss reacts to the "
                   f"{name} it is given decides how far training moves before the loss saturates.")
        yield _Candidate(tree, None, None, f"rescale({name}={text})", thought)


_GENERATORS = {
    "swap_function": _op_swap_function,
    "swap_operator": _op_swap_operator,
    "insert_term": _op_insert_term,
    "drop_term": _op_drop_term,
    "perturb_constant": _op_perturb_constant,
    "rescale_scalar": _op_rescale_scalar,
}


# =========================================================================== crossover


def _blend(
    a: _Parent, b: _Parent, id_a: str, id_b: str, rng: random.Random, slot_name: str, mode: str
) -> Iterator[_Candidate]:
    """Both parents as helpers; the slot combines their per-example losses."""
    tree = _merge_parents(a, b, slot_name)
    try:
        torch_ = ast.unparse(_Env(tree).expr_for("torch"))
    except NotApplicable:
        return
    args = ", ".join(a.args)
    call_a, call_b = f"{HELPER_A}({args})", f"{HELPER_B}({args})"
    if mode == "convex":
        w = round(rng.uniform(0.2, 0.8), 2)
        body = f"return {w!r} * {call_a} + {round(1 - w, 2)!r} * {call_b}"
        detail = f"crossover(convex {w})"
        thought = (
            f"Mixed the {id_a} and {id_b} losses with weights {w} and {round(1 - w, 2)}, "
            f"so the new loss inherits the behaviour of both parents."
        )
    elif mode in ("max", "min"):
        fn = "maximum" if mode == "max" else "minimum"
        body = f"return {torch_}.{fn}({call_a}, {call_b})"
        detail = f"crossover({mode})"
        thought = (
            f"Took the elementwise {mode} of the {id_a} and {id_b} losses, so each pair is scored by "
            f"the {'stricter' if mode == 'max' else 'more lenient'} parent."
        )
    elif mode == "gate":
        lo, hi = TAU_RANGE
        tau = float(f"{math.exp(rng.uniform(math.log(lo), math.log(hi))):.2g}")
        tau = min(hi, max(lo, tau))
        pc, pr, rc, rr, beta = a.args[:5]
        body = (
            f"margin = {beta} * (({pc} - {rc}) - ({pr} - {rr}))\n"
            f"gate = {torch_}.sigmoid(margin / {tau!r})\n"
            f"return (1 - gate) * {call_a} + gate * {call_b}"
        )
        detail = f"gate_blend(tau={tau!r})"
        thought = (
            f"Blended {id_a} (for low margins) and {id_b} (for high margins) with a sigmoid gate on the "
            f"margin at temperature {tau}, as in DiscoPOP, to get the best regime of each."
        )
    else:
        raise ValueError(f"unknown blend mode {mode!r}")
    lines = "\n".join("    " + line for line in body.splitlines())
    fn_def = ast.parse(f"def {slot_name}({args}):\n{lines}\n").body[0]
    tree.body.append(fn_def)
    yield _Candidate(tree, None, None, detail, thought)


def _merge_parents(a: _Parent, b: _Parent, slot_name: str) -> ast.Module:
    """One module holding both parents, their slots renamed parent_a_loss / parent_b_loss."""
    trees = [copy.deepcopy(a.tree), copy.deepcopy(b.tree)]
    idents = _identifiers(trees[0]) | _identifiers(trees[1])
    claimed = {slot_name, HELPER_A, HELPER_B}
    imports: dict[str, tuple[str, bool]] = {}
    renames: list[dict[str, str]] = [{}, {}]
    for k, tree in enumerate(trees):
        for alias, (target, is_from) in _import_table(tree).items():
            if alias in imports:
                if imports[alias][0] == target:
                    continue
                new = _fresh(alias, idents | claimed | set(imports))
                renames[k][alias] = new
                alias = new
            imports[alias] = (target, is_from)
    claimed |= set(imports)
    for k, (tree, helper) in enumerate(zip(trees, (HELPER_A, HELPER_B), strict=True)):
        for name in _toplevel_names(tree):
            if name == slot_name:
                new = helper
            elif name in claimed:
                new = _fresh(name, idents | claimed)
            else:
                claimed.add(name)
                continue
            renames[k][name] = new
            claimed.add(new)
    body: list[ast.stmt] = [
        _import_stmt(alias, target, is_from) for alias, (target, is_from) in imports.items()
    ]
    for tree, mapping in zip(trees, renames, strict=True):
        _rename_globals(tree, mapping)
        for i, stmt in enumerate(tree.body):
            if isinstance(stmt, (ast.Import, ast.ImportFrom)) or (i == 0 and _is_docstring(stmt)):
                continue
            body.append(stmt)
    return ast.Module(body=body, type_ignores=[])


def _splice(
    a: _Parent, b: _Parent, id_a: str, id_b: str, rng: random.Random, slot_name: str
) -> Iterator[_Candidate]:
    """Replace a subexpression of A's returned expression by one of B's (B's locals inlined)."""
    argmap = dict(zip(b.args, a.args, strict=True))
    b_tensors = {n for n in b.args if n not in SCALAR_ARGS | OPAQUE_ARGS}
    donors: list[ast.expr] = []
    seen: set[str] = set()
    for ret in _returns(b.slot):
        inlined = _inline(b, ret)
        for s in _subexprs(inlined):
            names = {n.id for n in ast.walk(s) if isinstance(n, ast.Name)}
            if isinstance(s, ast.Name) or not _tensorish(s, b_tensors):
                continue
            if not all(n in argmap or n in b.bindings for n in names):
                continue
            key = ast.dump(s)
            if key not in seen:
                seen.add(key)
                donors.append(s)
    a_tensors = _tensor_names(a.slot)
    sites: list[tuple[ast.expr, ast.expr]] = []  # (site, what it computes, for spotting no-ops)
    for ret in _returns(a.slot):
        for target in _return_targets(a.slot, ret):
            for s in _subexprs(target):
                if s is not target and _tensorish(s, a_tensors):
                    sites.append((s, _inline(a, ret, s) if target is ret.value else s))
    pairs = [(site, value, donor) for site, value in sites for donor in donors]
    rng.shuffle(pairs)
    for site, value, donor in pairs:
        tree, (new_site,) = _copy_with(a.tree, site)
        try:
            graft = _port(donor, b.bindings, argmap, _Env(tree))
        except NotApplicable:
            continue
        if ast.dump(graft) == ast.dump(value):
            continue
        _replace(tree, new_site, graft)
        thought = (
            f"Replaced `{_short(site)}` in {id_a} with `{_short(graft)}` taken from {id_b}, "
            f"mixing the structure of both parents."
        )
        yield _Candidate(tree, graft, a.slot.name, "crossover(splice)", thought)


def _inline(p: _Parent, ret: ast.Return, expr: ast.expr | None = None) -> ast.expr:
    """``expr`` (default: the value of ``ret``) with the slot's straight-line locals, as they are
    at ``ret``, and numeric module constants inlined.

    Top-level ``name = value`` statements before the return are substituted in order (so a
    reassigned local takes its latest value); names bound in any other way stay as they are.
    """
    assert ret.value is not None
    defs: dict[str, ast.expr] = {}
    for stmt in p.tree.body:
        name = _assigned_name(stmt)
        if name is not None and _const_value(stmt.value) is not None:  # type: ignore[attr-defined]
            defs[name] = stmt.value  # type: ignore[attr-defined]
    for arg in p.args:
        defs.pop(arg, None)
    for stmt in p.slot.body:
        if any(n is ret for n in ast.walk(stmt)):
            break
        name = _assigned_name(stmt)
        if name is not None:
            defs[name] = _substitute(stmt.value, defs)  # type: ignore[attr-defined]
            continue
        for node in ast.walk(stmt):
            if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
                defs.pop(node.id, None)
    return _substitute(expr if expr is not None else ret.value, defs)


def _assigned_name(stmt: ast.stmt) -> str | None:
    """The target of a plain ``name = value`` statement, else None."""
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        return stmt.targets[0].id
    return None


def _substitute(expr: ast.expr, defs: dict[str, ast.expr]) -> ast.expr:
    class _Sub(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.expr:
            if isinstance(node.ctx, ast.Load) and node.id in defs:
                return copy.deepcopy(defs[node.id])
            return node

    return _Sub().visit(copy.deepcopy(expr))


def _port(
    expr: ast.expr, bindings: dict[str, tuple[str, bool]], argmap: dict[str, str], env: _Env
) -> ast.expr:
    """``expr`` from another program, with its arguments and module aliases rewritten for ``env``."""

    class _Port(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.expr:
            if node.id in argmap:
                return ast.Name(argmap[node.id], ast.Load())
            if node.id in bindings:
                return env.expr_for(bindings[node.id][0])
            raise NotApplicable(f"free name {node.id}")

    return _Port().visit(copy.deepcopy(expr))


# =========================================================================== imports, names


def _import_table(tree: ast.Module) -> dict[str, tuple[str, bool]]:
    """Top-level import bindings: alias -> (qualified target, bound by a from-import)."""
    out: dict[str, tuple[str, bool]] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Import):
            for al in stmt.names:
                if al.asname:
                    out[al.asname] = (al.name, False)
                else:
                    root = al.name.split(".")[0]
                    out[root] = (root, False)
        elif isinstance(stmt, ast.ImportFrom) and stmt.level == 0 and stmt.module:
            for al in stmt.names:
                if al.name != "*":
                    out[al.asname or al.name] = (f"{stmt.module}.{al.name}", True)
    return out


def _import_stmt(alias: str, target: str, is_from: bool) -> ast.stmt:
    if is_from:
        head, tail = target.rsplit(".", 1)
        return ast.ImportFrom(module=head, names=[ast.alias(tail, None if alias == tail else alias)], level=0)
    return ast.Import(names=[ast.alias(target, None if alias == target else alias)])


class _Env:
    """Refer to modules from generated code, adding ``import`` lines to ``tree`` when needed."""

    def __init__(self, tree: ast.Module):
        self.tree = tree
        self.bindings = {alias: target for alias, (target, _) in _import_table(tree).items()}
        self.idents = _identifiers(tree)

    def expr_for(self, target: str) -> ast.expr:
        aliases = sorted(a for a, t in self.bindings.items() if t == target)
        usual = _KNOWN_MODULES.get(target)
        if aliases:
            return ast.Name(usual if usual in aliases else aliases[0], ast.Load())
        if usual is not None and usual not in self.idents:
            self._add_import(target, usual)
            return ast.Name(usual, ast.Load())
        if "." in target:
            head, tail = target.rsplit(".", 1)
            return ast.Attribute(self.expr_for(head), tail, ast.Load())
        raise NotApplicable(f"cannot refer to module {target}")

    def _add_import(self, target: str, alias: str) -> None:
        body = self.tree.body
        pos = 1 if body and _is_docstring(body[0]) else 0
        while pos < len(body) and isinstance(body[pos], (ast.Import, ast.ImportFrom)):
            pos += 1
        body.insert(pos, _import_stmt(alias, target, False))
        self.bindings[alias] = target
        self.idents.add(alias)


def _identifiers(tree: ast.AST) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.alias):
            out.add(node.asname or node.name.split(".")[0])
    return out


def _toplevel_names(tree: ast.Module) -> list[str]:
    """Names bound at module level other than by imports, in order."""
    names: list[str] = []
    for stmt in tree.body:
        found: list[str] = []
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found = [stmt.name]
        elif not isinstance(stmt, (ast.Import, ast.ImportFrom)):
            found = [n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
        names += [n for n in found if n not in names]
    return names


def _fresh(name: str, taken: set[str]) -> str:
    k = 2
    while f"{name}_{k}" in taken:
        k += 1
    return f"{name}_{k}"


def _rename_globals(tree: ast.Module, mapping: dict[str, str]) -> None:
    """Rename module-level names (definitions and references not shadowed by locals)."""
    if not mapping:
        return
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            continue
        local: set[str] = set()
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if stmt.name in mapping:
                stmt.name = mapping[stmt.name]
            declared_global = {n for g in ast.walk(stmt) if isinstance(g, ast.Global) for n in g.names}
            for node in ast.walk(stmt):
                if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
                    local.add(node.id)
                elif isinstance(node, ast.arg):
                    local.add(node.arg)
                elif node is not stmt and isinstance(
                    node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
                ):
                    local.add(node.name)
            local -= declared_global
        for node in ast.walk(stmt):
            if isinstance(node, ast.Name) and node.id in mapping and node.id not in local:
                node.id = mapping[node.id]
            elif isinstance(node, (ast.Global, ast.Nonlocal)):
                node.names = [mapping.get(n, n) for n in node.names]


# =========================================================================== tree helpers


def _arg_names(fn: ast.FunctionDef) -> list[str]:
    args = fn.args
    names = [a.arg for a in args.posonlyargs + args.args]
    if args.vararg:
        names.append("*" + args.vararg.arg)
    names += [a.arg for a in args.kwonlyargs]
    if args.kwarg:
        names.append("**" + args.kwarg.arg)
    return names


def _find_function(tree: ast.Module, name: str) -> ast.FunctionDef | None:
    found = [s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == name]
    return found[-1] if found else None


def _is_docstring(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def _set_docstring(fn: ast.FunctionDef, text: str) -> None:
    doc = ast.Expr(ast.Constant(text))
    if fn.body and _is_docstring(fn.body[0]):
        fn.body[0] = doc
    else:
        fn.body.insert(0, doc)


def _copy_with(tree: ast.Module, *nodes: ast.AST) -> tuple[ast.Module, list]:
    """A deep copy of ``tree`` and the copies of ``nodes`` in it."""
    memo: dict = {}
    new = copy.deepcopy(tree, memo)
    return new, [memo[id(n)] for n in nodes]


def _replace(root: ast.AST, old: ast.AST, new: ast.AST) -> None:
    for node in ast.walk(root):
        for name, value in ast.iter_fields(node):
            if value is old:
                setattr(node, name, new)
                return
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if item is old:
                        value[i] = new
                        return
    raise NotApplicable("node not found")


def _render(tree: ast.Module) -> str:
    """Source of ``tree``: imports together, two blank lines around functions."""
    ast.fix_missing_locations(tree)
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    imports = (ast.Import, ast.ImportFrom)
    chunks: list[str] = []
    prev: ast.stmt | None = None
    for stmt in tree.body:
        if prev is not None:
            if isinstance(stmt, defs) or isinstance(prev, defs):
                chunks.append("\n\n\n")
            elif isinstance(stmt, imports) != isinstance(prev, imports):
                chunks.append("\n\n")
            else:
                chunks.append("\n")
        chunks.append(ast.unparse(stmt))
        prev = stmt
    return "".join(chunks) + "\n"


class _Simplify(ast.NodeTransformer):
    """Remove the double negations that template substitution produces."""

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.expr:
        self.generic_visit(node)
        inner = node.operand
        if (
            isinstance(node.op, ast.USub)
            and isinstance(inner, ast.UnaryOp)
            and isinstance(inner.op, ast.USub)
        ):
            return inner.operand
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.expr:
        self.generic_visit(node)
        right = node.right
        if isinstance(right, ast.UnaryOp) and isinstance(right.op, ast.USub):
            if isinstance(node.op, ast.Add):
                return ast.BinOp(node.left, ast.Sub(), right.operand)
            if isinstance(node.op, ast.Sub):
                return ast.BinOp(node.left, ast.Add(), right.operand)
        return node


def _short(node: ast.AST, limit: int = 40) -> str:
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tag(node: ast.AST, limit: int = 24) -> str:
    """A compact spelling of ``node`` for mutant names, truncated with balanced brackets."""
    text = "".join(ast.unparse(node).split())
    if len(text) <= limit:
        return text
    head = text[: limit - 4]
    depth = head.count("(") - head.count(")")
    return head + "..." + ")" * max(depth, 0)


def _returns(fn: ast.FunctionDef) -> list[ast.Return]:
    """Return statements of ``fn`` itself (not of nested functions) that return a value."""
    out: list[ast.Return] = []
    stack: list[ast.AST] = list(reversed(fn.body))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Return) and node.value is not None:
            out.append(node)
        stack.extend(reversed(list(ast.iter_child_nodes(node))))
    return out


def _defined_before(fn: ast.FunctionDef, ret: ast.Return) -> list[str]:
    """Locals certainly bound (by top-level assignments) before the statement holding ``ret``."""
    names: list[str] = []
    for stmt in fn.body:
        if any(n is ret for n in ast.walk(stmt)):
            break
        if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and getattr(stmt, "value", None):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name) and n.id not in names:
                        names.append(n.id)
    return names


def _return_targets(fn: ast.FunctionDef, ret: ast.Return) -> list[ast.expr]:
    """The returned expression and, when it is a bare local, the expression last assigned to it."""
    assert ret.value is not None
    out = [ret.value]
    if isinstance(ret.value, ast.Name):
        last = None
        for stmt in fn.body:
            if any(n is ret for n in ast.walk(stmt)):
                break
            if (
                isinstance(stmt, ast.Assign)
                and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)
                and stmt.targets[0].id == ret.value.id
            ):
                last = stmt.value
        if last is not None:
            out.append(last)
    return out


def _subexprs(expr: ast.expr) -> list[ast.expr]:
    """Subexpressions that can be evaluated on their own (no comprehension or lambda variables)."""
    out: list[ast.expr] = []

    def rec(node: ast.AST) -> None:
        if isinstance(node, (ast.Lambda, ast.Starred, ast.NamedExpr, *_COMPREHENSIONS)):
            return
        if isinstance(node, ast.expr):
            out.append(node)
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute):
                rec(node.func.value)
            for arg in node.args:
                rec(arg)
            for kw in node.keywords:
                rec(kw.value)
            return
        if isinstance(node, ast.Subscript):
            rec(node.value)
            return
        for child in ast.iter_child_nodes(node):
            rec(child)

    rec(expr)
    return out


def _tensor_names(fn: ast.FunctionDef) -> set[str]:
    """Arguments that are tensors, and locals computed from them."""
    names = {a for a in _arg_names(fn) if a.lstrip("*") == a and a not in SCALAR_ARGS | OPAQUE_ARGS}
    flows: list[tuple[list[str], ast.expr]] = []
    for node in ast.walk(fn):
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            # only names bound here: storing into `state["m"]` does not make `state` a tensor
            found = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)
                     and isinstance(n.ctx, ast.Store)]
            flows.append((found, node.value))
        elif isinstance(node, (ast.For, ast.comprehension)):
            flows.append(([n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)], node.iter))
    changed = True
    while changed:
        changed = False
        for targets, value in flows:
            if any(t not in names for t in targets) and _tensorish(value, names):
                names.update(targets)
                changed = True
    return names


def _tensorish(expr: ast.AST, tensors: set[str]) -> bool:
    return any(isinstance(n, ast.Name) and n.id in tensors for n in ast.walk(expr))


def _chain_roots(expr: ast.expr) -> list[ast.BinOp]:
    """Roots of maximal ``+``/``-`` chains inside ``expr``."""
    roots: list[ast.BinOp] = []

    def is_chain(node: ast.AST) -> bool:
        return isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub))

    def rec(node: ast.AST, in_chain: bool) -> None:
        if isinstance(node, (ast.Lambda, *_COMPREHENSIONS)):
            return
        if is_chain(node):
            if not in_chain:
                roots.append(node)
            rec(node.left, True)
            rec(node.right, True)
            return
        for child in ast.iter_child_nodes(node):
            rec(child, False)

    rec(expr, False)
    return roots


def _flatten(node: ast.expr, sign: int = 1) -> list[tuple[int, ast.expr]]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        right_sign = sign if isinstance(node.op, ast.Add) else -sign
        return _flatten(node.left, sign) + _flatten(node.right, right_sign)
    return [(sign, node)]


def _rebuild(terms: list[tuple[int, ast.expr]]) -> ast.expr:
    sign, first = terms[0]
    acc: ast.expr = first if sign > 0 else ast.UnaryOp(ast.USub(), first)
    for sign, term in terms[1:]:
        acc = ast.BinOp(acc, ast.Add() if sign > 0 else ast.Sub(), term)
    return acc


def _is_number(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, (int, float))
        and not isinstance(node.value, bool)
        and math.isfinite(node.value)
    )


def _const_value(node: ast.AST) -> float | None:
    if _is_number(node):
        return node.value  # type: ignore[attr-defined]
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, (ast.USub, ast.UAdd))
        and _is_number(node.operand)
    ):
        value = node.operand.value  # type: ignore[attr-defined]
        return -value if isinstance(node.op, ast.USub) else value
    return None


def _number(value: float) -> ast.expr:
    return ast.Constant(value) if value >= 0 else ast.UnaryOp(ast.USub(), ast.Constant(-value))


def _same_number(a: float, b: float) -> bool:
    return float(f"{a:.6g}") == float(f"{b:.6g}")


def _perturbed(value: float, rng: random.Random) -> float:
    if value == 0:
        return float(f"{rng.gauss(0.0, 0.1):.3g}")
    return float(f"{value * math.exp(rng.gauss(0.0, 0.3)):.3g}")


def _small_coef(rng: random.Random) -> float:
    return float(f"{math.exp(rng.uniform(math.log(0.01), math.log(0.5))):.2g}")


def _constant_sites(fn: ast.FunctionDef, bindings: dict) -> list[ast.Constant]:
    """Numeric constants of ``fn`` that are weights, not dimensions, indices or flags."""
    parents = _parent_map(fn)
    out: list[ast.Constant] = []
    for node in ast.walk(fn):
        if not isinstance(node, ast.Constant) or not _is_number(node):
            continue
        holder: ast.AST = node
        parent = parents.get(id(node))
        if isinstance(parent, ast.UnaryOp):
            holder, parent = parent, parents.get(id(parent))
        if isinstance(parent, ast.keyword) and parent.arg in _STRUCTURAL_KWARGS:
            continue
        if any(isinstance(a, ast.Subscript) and _contains(a.slice, node) for a in _ancestors(node, parents)):
            continue
        if (
            isinstance(node.value, int)
            and isinstance(parent, ast.Call)
            and any(a is holder for a in parent.args)
        ):
            # an integer argument of a method (x.sum(1)) or a later one (torch.sum(x, 1)) is a dimension
            position = next(i for i, a in enumerate(parent.args) if a is holder)
            if position > 0 or _qualify(parent.func, bindings) is None:
                continue
        out.append(node)
    return out


def _parent_map(root: ast.AST) -> dict[int, ast.AST]:
    return {id(child): node for node in ast.walk(root) for child in ast.iter_child_nodes(node)}


def _ancestors(node: ast.AST, parents: dict[int, ast.AST]) -> Iterator[ast.AST]:
    cur = parents.get(id(node))
    while cur is not None:
        yield cur
        cur = parents.get(id(cur))


def _contains(root: ast.AST, node: ast.AST) -> bool:
    return any(n is node for n in ast.walk(root))


def _weighted_order(items: list[str], weights: dict[str, float], rng: random.Random) -> list[str]:
    """``items`` in a random order, each next one drawn with probability proportional to its weight."""
    pool = list(dict.fromkeys(items))
    order: list[str] = []
    while pool:
        pick = rng.choices(pool, weights=[weights.get(x, 1.0) for x in pool])[0]
        order.append(pick)
        pool.remove(pick)
    return order


# =========================================================================== templates


_TEMPLATES: dict[str, ast.expr] = {}


def _template(src: str) -> ast.expr:
    if src not in _TEMPLATES:
        _TEMPLATES[src] = ast.parse(src, mode="eval").body
    return _TEMPLATES[src]


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else None
    return None


def _qualify(node: ast.AST, bindings: dict) -> str | None:
    """Fully qualified name of a module attribute reference (``F.softplus`` -> torch.nn.functional...)."""
    dotted = _dotted(node)
    if dotted is None:
        return None
    root, _, rest = dotted.partition(".")
    if root not in bindings:
        return None
    target = bindings[root]
    if isinstance(target, tuple):
        target = target[0]
    qualified = f"{target}.{rest}" if rest else target
    return _QUAL_ALIASES.get(qualified, qualified)


def _callee(node: ast.Call, bindings: dict) -> tuple[str, ast.expr | None] | None:
    """(qualified function, first argument) of a call; ``x.f()`` is read as ``torch.f(x)``."""
    qualified = _qualify(node.func, bindings)
    if qualified is not None:
        return qualified, (node.args[0] if node.args else None)
    if isinstance(node.func, ast.Attribute):
        name = f"torch.{node.func.attr}"
        return _QUAL_ALIASES.get(name, name), node.func.value
    return None


def _match(template: str, node: ast.AST, bindings: dict) -> ast.expr | None:
    """The subtree bound to ``X`` if ``node`` has the shape of ``template``, else None."""
    binds: dict[str, ast.expr] = {}
    if _unify(_template(template), node, bindings, binds):
        return binds.get("X")
    return None


def _unify(t: ast.AST, n: ast.AST, bindings: dict, binds: dict[str, ast.expr]) -> bool:
    if isinstance(t, ast.Name) and t.id == "X":
        if not isinstance(n, ast.expr):
            return False
        if "X" in binds:
            return ast.dump(binds["X"]) == ast.dump(n)
        binds["X"] = n
        return True
    if isinstance(t, (ast.Name, ast.Attribute)):
        qualified = _qualify(t, _TEMPLATE_BINDINGS)
        if qualified is not None:
            return isinstance(n, (ast.Name, ast.Attribute)) and _qualify(n, bindings) == qualified
    if (
        isinstance(t, ast.Call)
        and isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and not n.args
        and not n.keywords
        and _qualify(n.func, bindings) is None
        and len(t.args) == 1
        and not t.keywords
        and isinstance(t.args[0], ast.Name)
        and t.args[0].id == "X"
    ):  # method form: x.exp() for torch.exp(x)
        method = _QUAL_ALIASES.get(f"torch.{n.func.attr}", f"torch.{n.func.attr}")
        return method == _qualify(t.func, _TEMPLATE_BINDINGS) and _unify(
            t.args[0], n.func.value, bindings, binds
        )
    if type(t) is not type(n):
        return False
    if isinstance(t, ast.Constant):
        if _is_number(t) and _is_number(n):
            return t.value == n.value  # type: ignore[attr-defined]
        return type(t.value) is type(n.value) and t.value == n.value  # type: ignore[attr-defined]
    for name in t._fields:
        if name in ("ctx", "type_comment", "kind"):
            continue
        tv, nv = getattr(t, name, None), getattr(n, name, None)
        if isinstance(tv, list):
            if not isinstance(nv, list) or len(tv) != len(nv):
                return False
            for ti, ni in zip(tv, nv, strict=True):
                if isinstance(ti, ast.AST):
                    if not isinstance(ni, ast.AST) or not _unify(ti, ni, bindings, binds):
                        return False
                elif ti != ni:
                    return False
        elif isinstance(tv, ast.AST):
            if not isinstance(nv, ast.AST) or not _unify(tv, nv, bindings, binds):
                return False
        elif tv != nv:
            return False
    return True


def _instantiate(template: str, x: ast.expr, env: _Env) -> ast.expr:
    """``template`` with ``X`` replaced by a copy of ``x`` and module names resolved in ``env``."""

    class _Fill(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.expr:
            if node.id == "X":
                return copy.deepcopy(x)
            if node.id in _TEMPLATE_BINDINGS:
                return env.expr_for(_TEMPLATE_BINDINGS[node.id])
            return node

    return _Fill().visit(copy.deepcopy(_template(template)))


# =========================================================================== safety


# torch functions that accept Python numbers as first argument
_SCALAR_OK_TORCH = frozenset(
    {
        "torch.tensor",
        "torch.as_tensor",
        "torch.full",
        "torch.zeros",
        "torch.ones",
        "torch.empty",
        "torch.arange",
        "torch.linspace",
        "torch.logspace",
        "torch.eye",
        "torch.randn",
        "torch.rand",
        "torch.where",
    }
)

_POS = frozenset({1})
_NEG = frozenset({-1})
_NONNEG = frozenset({0, 1})
_ANY = frozenset({-1, 0, 1})

_POSITIVE_FNS = frozenset(
    {"torch.exp", "torch.sigmoid", "torch.nn.functional.softplus", "torch.cosh", "math.exp", "math.cosh"}
)
_NONNEG_FNS = frozenset(
    {"torch.sqrt", "torch.nn.functional.hardsigmoid", "math.sqrt", "torch.nn.functional.relu6"}
)
_EVEN_FNS = frozenset({"torch.abs", "torch.square", "math.fabs"})
_ODD_FNS = frozenset(
    {
        "torch.tanh",
        "torch.atan",
        "torch.sinh",
        "torch.asinh",
        "torch.expm1",
        "torch.log1p",
        "torch.nn.functional.softsign",
        "torch.nn.functional.hardtanh",
        "torch.nn.functional.elu",
        "torch.nn.functional.silu",
        "math.tanh",
        "math.atan",
    }
)
_NEGATIVE_FNS = frozenset({"torch.nn.functional.logsigmoid"})
_NEEDS_POSITIVE = frozenset(
    {
        "torch.log",
        "torch.log2",
        "torch.log10",
        "torch.rsqrt",
        "torch.reciprocal",
        "torch.sqrt",
        "math.log",
        "math.log2",
        "math.log10",
        "math.sqrt",
    }
)
_NEEDS_ABOVE_MINUS_ONE = frozenset({"torch.log1p", "math.log1p"})
_BOUNDED_DOMAIN = frozenset(
    {
        "torch.acos",
        "torch.asin",
        "torch.atanh",
        "torch.acosh",
        "torch.arccos",
        "torch.arcsin",
        "torch.arctanh",
        "torch.arccosh",
        "math.acos",
        "math.asin",
        "math.atanh",
        "math.acosh",
    }
)


def _sign_add(a: frozenset, b: frozenset) -> frozenset:
    out: set[int] = set()
    for x in a:
        for y in b:
            if x == y or y == 0:
                out.add(x)
            elif x == 0:
                out.add(y)
            else:
                return _ANY
    return frozenset(out)


def _sign_neg(a: frozenset) -> frozenset:
    return frozenset(-x for x in a)


def _sign_mul(a: frozenset, b: frozenset) -> frozenset:
    return frozenset(x * y for x in a for y in b)


def _sign_even(a: frozenset) -> frozenset:
    return frozenset(abs(x) for x in a)


class _Signs:
    """Which signs (-1, 0, +1) an expression of one function can take, as far as can be shown."""

    def __init__(self, fn: ast.FunctionDef, tree: ast.Module):
        self.bindings = _import_table(tree)
        self.env: dict[str, frozenset] = {}
        for stmt in tree.body:
            if (
                isinstance(stmt, ast.Assign)
                and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)
            ):
                value = _const_value(stmt.value)
                if value is not None:
                    self.env[stmt.targets[0].id] = self._const_sign(value)
        for a in _arg_names(fn):
            self.env[a] = _POS if a in SCALAR_ARGS else _ANY
        stores = Counter(
            n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del))
        )
        for name in stores:
            self.env[name] = _ANY
        for stmt in fn.body:
            if (
                isinstance(stmt, ast.Assign)
                and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)
            ):
                name = stmt.targets[0].id
                if stores[name] == 1 and name not in _arg_names(fn):
                    self.env[name] = self.sign(stmt.value)

    @staticmethod
    def _const_sign(value: float) -> frozenset:
        return _POS if value > 0 else _NEG if value < 0 else frozenset({0})

    def sign(self, node: ast.AST) -> frozenset:
        if isinstance(node, ast.Constant):
            return self._const_sign(node.value) if _is_number(node) else _ANY
        if isinstance(node, ast.Name):
            return self.env.get(node.id, _ANY)
        if isinstance(node, ast.Attribute):
            if _qualify(node, self.bindings) in ("math.pi", "math.e", "math.tau", "math.inf"):
                return _POS
            return _ANY
        if isinstance(node, ast.UnaryOp):
            inner = self.sign(node.operand)
            if isinstance(node.op, ast.USub):
                return _sign_neg(inner)
            return inner if isinstance(node.op, ast.UAdd) else _ANY
        if isinstance(node, ast.BinOp):
            return self._binop(node)
        if isinstance(node, ast.IfExp):
            return self.sign(node.body) | self.sign(node.orelse)
        if isinstance(node, ast.Call):
            return self._call(node)
        return _ANY

    def _binop(self, node: ast.BinOp) -> frozenset:
        left, right = self.sign(node.left), self.sign(node.right)
        if isinstance(node.op, ast.Add):
            return _sign_add(left, right)
        if isinstance(node.op, ast.Sub):
            return _sign_add(left, _sign_neg(right))
        if isinstance(node.op, ast.Mult):
            return _sign_mul(left, right)
        if isinstance(node.op, ast.Div):
            nonzero = frozenset(x for x in right if x)
            return _sign_mul(left, nonzero) if nonzero else _ANY
        if isinstance(node.op, ast.Pow):
            exponent = _const_value(node.right)
            if left == _POS:
                return _POS
            if exponent is not None and float(exponent).is_integer():
                return _sign_even(left) if int(exponent) % 2 == 0 else left
            return _ANY
        return _ANY

    def _call(self, node: ast.Call) -> frozenset:
        found = _callee(node, self.bindings)
        if found is None or found[1] is None:
            return _ANY
        name, arg = found
        inner = self.sign(arg)
        if name in _POSITIVE_FNS:
            return _POS
        if name in _NEGATIVE_FNS:
            return _NEG
        if name in _NONNEG_FNS:
            return _NONNEG
        if name in _EVEN_FNS:
            return _sign_even(inner)
        if name in _ODD_FNS:
            return inner
        if name == "torch.relu":
            return frozenset(x if x > 0 else 0 for x in inner)
        if name == "torch.clamp":
            low = (
                node.args[1]
                if len(node.args) > 1
                else next((k.value for k in node.keywords if k.arg == "min"), None)
            )
            value = _const_value(low) if low is not None else None
            if value is not None and value > 0:
                return _POS
            if value is not None and value == 0:
                return frozenset(x if x > 0 else 0 for x in inner)
        return _ANY


def _violates(node: ast.AST, signs: _Signs) -> bool:
    """True if ``node`` needs an operand in a restricted domain that cannot be shown to hold."""
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)):
            return 0 in signs.sign(node.right)
        if isinstance(node.op, ast.Pow):
            exponent = _const_value(node.right)
            if exponent is not None and float(exponent).is_integer():
                return exponent < 0 and 0 in signs.sign(node.left)
            return signs.sign(node.left) != _POS
        return False
    if isinstance(node, ast.Call):
        found = _callee(node, signs.bindings)
        if found is None or found[1] is None:
            return False
        name, arg = found
        if name in _NEEDS_POSITIVE:
            return signs.sign(arg) != _POS
        if name in _NEEDS_ABOVE_MINUS_ONE:
            return -1 in signs.sign(arg)
        return name in _BOUNDED_DOMAIN
    return False


def _needs_tensor(node: ast.AST, bindings: dict, tensors: set[str]) -> bool:
    """True if ``node`` is a torch function or tensor method applied to something not a tensor."""
    if not isinstance(node, ast.Call):
        return False
    qualified = _qualify(node.func, bindings)
    if qualified is None:
        if isinstance(node.func, ast.Attribute):  # a method: x.sum(), x.clamp(...)
            return not _tensorish(node.func.value, tensors)
        return False  # a helper function
    if not qualified.startswith("torch.") or qualified in _SCALAR_OK_TORCH:
        return False
    return not node.args or not _tensorish(node.args[0], tensors)


def _count_violations(fn: ast.FunctionDef, tree: ast.Module) -> int:
    signs = _Signs(fn, tree)
    return sum(_violates(node, signs) for node in ast.walk(fn))


def _context_ok(tree: ast.Module, fn_name: str, changed: ast.AST, old_violations: int) -> bool:
    """The changed node and every enclosing expression stay in their domain, and no new doubt."""
    fn = _find_function(tree, fn_name)
    if fn is None:
        return False
    signs = _Signs(fn, tree)
    tensors = _tensor_names(fn)
    parents = _parent_map(fn)
    node: ast.AST | None = changed
    while node is not None and node is not fn:
        if _violates(node, signs) or _needs_tensor(node, signs.bindings, tensors):
            return False
        node = parents.get(id(node))
    return sum(_violates(n, signs) for n in ast.walk(fn)) <= old_violations
