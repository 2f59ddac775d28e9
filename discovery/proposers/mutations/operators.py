"""The six mutation operators: each yields candidate edits of a parent, in a random order."""

from __future__ import annotations

import ast
import copy
import math
import random
from collections.abc import Iterator
from typing import cast

from discovery.proposers.mutations.names import Env
from discovery.proposers.mutations.parents import Edit, Parent
from discovery.proposers.mutations.patterns import callee, instantiate, match_template, qualify
from discovery.proposers.mutations.table import (
    ATTEMPTS,
    GROUP_RATIONALE,
    INSERT_FUNCTIONS,
    OP_SWAPS,
    OP_SYMBOLS,
    OP_WORDS,
    SCALAR_ARGS,
    STRUCTURAL_KWARGS,
    UNARY_FUNCTIONS,
    NotApplicable,
)
from discovery.proposers.mutations.trees import (
    ancestors,
    chain_roots,
    contains,
    copy_with,
    defined_before,
    find_function,
    flatten,
    is_number,
    number,
    parent_map,
    rebuild,
    replace,
    return_targets,
    returns,
    same_number,
    short,
    subexprs,
    tag,
    tensor_names,
    tensorish,
)


def _op_swap_function(p: Parent, rng: random.Random) -> Iterator[Edit]:
    matches = []
    for fn in p.functions:
        for node in ast.walk(fn):
            if not isinstance(node, ast.expr):
                continue
            for entry in UNARY_FUNCTIONS:
                x = match_template(entry.template, node, p.bindings)
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
        tree, (new_node, new_x) = copy_with(p.tree, node, x)
        try:
            repl = instantiate(target.template, new_x, Env(tree))
        except NotApplicable:
            continue
        replace(tree, new_node, repl)
        thought = f"Replaced {entry.label} with {target.label} in `{short(node)}`: {GROUP_RATIONALE[entry.group]}."
        yield Edit(tree, repl, fn_name, f"swap_fn({entry.label}->{target.label})", thought)


def _op_swap_operator(p: Parent, rng: random.Random) -> Iterator[Edit]:
    sites: list[tuple[str, ast.BinOp, type[ast.operator]]] = []
    for fn in p.functions:
        for node in ast.walk(fn):
            if isinstance(node, ast.BinOp) and type(node.op) in OP_SWAPS:
                sites.extend((fn.name, node, new_op) for new_op in OP_SWAPS[type(node.op)])
    rng.shuffle(sites)
    for fn_name, node, new_op in sites:
        tree, (new_node,) = copy_with(p.tree, node)
        new_node.op = new_op()
        old, new = OP_SYMBOLS[type(node.op)], OP_SYMBOLS[new_op]
        thought = (
            f"Changed `{short(node)}` to `{short(new_node)}`: {OP_WORDS[new_op]} instead of "
            f"{OP_WORDS[type(node.op)]} changes how the two quantities interact in the loss."
        )
        yield Edit(tree, new_node, fn_name, f"swap_op({old}->{new})", thought)


def _op_insert_term(p: Parent, rng: random.Random) -> Iterator[Edit]:
    tensors = tensor_names(p.slot)
    sites: list[tuple[ast.Return, ast.expr]] = []
    seen: set[tuple[int, str]] = set()
    for ret in returns(p.slot):
        assert ret.value is not None  # returns() keeps only the returns with a value
        options = [s for s in subexprs(ret.value) if tensorish(s, tensors)]
        options += [ast.Name(n, ast.Load()) for n in defined_before(p.slot, ret) if n in tensors]
        for s in options:
            key = (id(ret), ast.dump(s))
            if key not in seen:
                seen.add(key)
                sites.append((ret, s))
    if not sites:
        return
    for _ in range(ATTEMPTS):
        ret, s = rng.choice(sites)
        label, template, purpose = rng.choice(INSERT_FUNCTIONS)
        coef = _small_coef(rng)
        positive = rng.random() < 0.7
        tree, (new_ret,) = copy_with(p.tree, ret)
        try:
            unary = instantiate(template, s, Env(tree))
        except NotApplicable:
            continue
        term = ast.BinOp(ast.Constant(coef), ast.Mult(), unary)
        new_ret.value = ast.BinOp(new_ret.value, ast.Add() if positive else ast.Sub(), term)
        sign = "+" if positive else "-"
        kind = "penalty" if positive else "bonus"
        thought = (
            f"Added {sign}{coef} * {label}(`{short(s)}`) to the loss, a small {kind} "
            f"({purpose}) that may regularise training."
        )
        detail = f"insert_term({sign}{coef}*{label}({tag(s)}))"
        yield Edit(tree, new_ret.value, p.slot.name, detail, thought)


def _op_drop_term(p: Parent, rng: random.Random) -> Iterator[Edit]:
    tensors = tensor_names(p.slot)
    sites: list[tuple[ast.expr, ast.BinOp, int]] = []
    for ret in returns(p.slot):
        for target in return_targets(p.slot, ret):
            for root in chain_roots(target):
                n_terms = len(flatten(root))
                sites.extend((target, root, i) for i in range(n_terms))
    rng.shuffle(sites)
    for target, root, i in sites:
        tree, (new_root, new_target) = copy_with(p.tree, root, target)
        terms = flatten(new_root)
        dropped = terms.pop(i)[1]
        new_expr = rebuild(terms)
        replace(tree, new_root, new_expr)
        if not tensorish(new_expr if target is root else new_target, tensors):
            continue
        thought = f"Dropped the term `{short(dropped)}` to test whether the loss does as well or better without it."
        yield Edit(tree, new_expr, p.slot.name, f"drop_term({tag(dropped)})", thought)


def _op_perturb_constant(p: Parent, rng: random.Random) -> Iterator[Edit]:
    sites: list[tuple[str | None, ast.Constant]] = []
    for fn in p.functions:
        sites.extend((fn.name, c) for c in _constant_sites(fn, p.bindings))
    for stmt in p.tree.body:  # module-level constants, e.g. TAU = 0.05
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            value = stmt.value.operand if isinstance(stmt.value, ast.UnaryOp) else stmt.value
            if is_number(value):
                sites.append((None, value))
    for _ in range(ATTEMPTS // 2 if sites else 0):
        fn_name, node = rng.choice(sites)
        old = cast(float, node.value)  # an int or a float: every site passed is_number
        new = _perturbed(old, rng)
        if same_number(old, new) or (old and abs(new / old - 1) < 0.05):
            continue
        tree, (new_node,) = copy_with(p.tree, node)
        repl = number(new)
        replace(tree, new_node, repl)
        ratio = f" (x{new / old:.2f})" if old else ""
        thought = f"Changed the constant {old!r} to {new!r}{ratio} to explore a nearby setting of the same loss."
        yield Edit(tree, repl, fn_name, f"perturb_const({old!r}->{new!r})", thought)
    # no (usable) constant: put a temperature on the argument of a function call
    tensors = {fn.name: tensor_names(fn) for fn in p.functions}
    scale_sites: list[tuple[str, ast.expr]] = []
    for fn in p.functions:
        for call in ast.walk(fn):
            if isinstance(call, ast.Call) and call.args and callee(call, p.bindings) is not None:
                arg = call.args[0]
                if not isinstance(arg, ast.Starred) and tensorish(arg, tensors[fn.name]):
                    scale_sites.append((fn.name, arg))
    if not scale_sites:
        slot_tensors = tensors[p.slot.name]
        for ret in returns(p.slot):
            assert ret.value is not None  # returns() keeps only the returns with a value
            scale_sites += [(p.slot.name, s) for s in subexprs(ret.value) if tensorish(s, slot_tensors)]
    if not scale_sites:
        return
    for _ in range(ATTEMPTS // 2):
        fn_name, site = rng.choice(scale_sites)
        coef = float(f"{math.exp(rng.gauss(0.0, 0.3)):.3g}")
        if abs(coef - 1) < 0.05:
            continue
        tree, (new_node,) = copy_with(p.tree, site)
        repl = ast.BinOp(ast.Constant(coef), ast.Mult(), new_node)
        replace(tree, new_node, repl)
        thought = (
            f"Scaled `{short(site)}` by {coef}, a temperature that makes the function applied to it "
            f"{'sharper' if coef > 1 else 'smoother'}."
        )
        yield Edit(tree, repl, fn_name, f"perturb_const(scale x{coef})", thought)


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


def _op_rescale_scalar(p: Parent, rng: random.Random) -> Iterator[Edit]:
    scalars = [a for a in p.args if a in SCALAR_ARGS]
    if not scalars:
        return
    for _ in range(ATTEMPTS // 4):
        name = rng.choice(scalars)
        tree = copy.deepcopy(p.tree)
        slot = find_function(tree, p.slot_name)
        assert slot is not None
        body = slot.body
        start = 1 if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else 0
        expr, text = _rescale_expr(name, rng)
        assign = ast.Assign([ast.Name(name, ast.Store())], expr, lineno=0)
        first = body[start] if start < len(body) else None
        replaces = (
            isinstance(first, ast.Assign)
            and len(first.targets) == 1
            and isinstance(first.targets[0], ast.Name)
            and first.targets[0].id == name
            and name in {n.id for n in ast.walk(first.value) if isinstance(n, ast.Name)}
        )
        if replaces:
            body[start] = assign
        else:
            body.insert(start, assign)
        thought = (
            f"Gave `{name}` an effective value `{name} = {text}`: how strongly the loss reacts to the "
            f"{name} it is given decides how far training moves before the loss saturates."
        )
        yield Edit(tree, None, None, f"rescale({name}={text})", thought)


GENERATORS = {
    "swap_function": _op_swap_function,
    "swap_operator": _op_swap_operator,
    "insert_term": _op_insert_term,
    "drop_term": _op_drop_term,
    "perturb_constant": _op_perturb_constant,
    "rescale_scalar": _op_rescale_scalar,
}


def _perturbed(value: float, rng: random.Random) -> float:
    if value == 0:
        return float(f"{rng.gauss(0.0, 0.1):.3g}")
    return float(f"{value * math.exp(rng.gauss(0.0, 0.3)):.3g}")


def _small_coef(rng: random.Random) -> float:
    return float(f"{math.exp(rng.uniform(math.log(0.01), math.log(0.5))):.2g}")


def _constant_sites(fn: ast.FunctionDef, bindings: dict) -> list[ast.Constant]:
    """Numeric constants of ``fn`` that are weights, not dimensions, indices or flags."""
    parents = parent_map(fn)
    out: list[ast.Constant] = []
    for node in ast.walk(fn):
        if not isinstance(node, ast.Constant) or not is_number(node):
            continue
        holder: ast.AST = node
        parent = parents.get(id(node))
        if isinstance(parent, ast.UnaryOp):
            holder, parent = parent, parents.get(id(parent))
        if isinstance(parent, ast.keyword) and parent.arg in STRUCTURAL_KWARGS:
            continue
        if any(isinstance(a, ast.Subscript) and contains(a.slice, node) for a in ancestors(node, parents)):
            continue
        if isinstance(node.value, int) and isinstance(parent, ast.Call) and any(a is holder for a in parent.args):
            # an integer argument of a method (x.sum(1)) or a later one (torch.sum(x, 1)) is a dimension
            position = next(i for i, a in enumerate(parent.args) if a is holder)
            if position > 0 or qualify(parent.func, bindings) is None:
                continue
        out.append(node)
    return out
