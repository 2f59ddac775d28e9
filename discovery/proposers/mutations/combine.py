"""Crossover: blends of two parents inlined as helper functions, and splices of a subexpression
of one parent into the other."""

from __future__ import annotations

import ast
import copy
import math
import random
from collections.abc import Iterator

from discovery.proposers.mutations.names import Env, fresh, import_stmt, rename_globals, toplevel_names
from discovery.proposers.mutations.parents import Edit, Parent
from discovery.proposers.mutations.table import HELPER_A, HELPER_B, OPAQUE_ARGS, SCALAR_ARGS, TAU_RANGE, NotApplicable
from discovery.proposers.mutations.trees import (
    const_value,
    copy_with,
    replace,
    return_targets,
    returns,
    short,
    subexprs,
    tensor_names,
    tensorish,
)
from sandbox.static.syntax import identifiers, import_table, is_docstring


def blend(a: Parent, b: Parent, id_a: str, id_b: str, rng: random.Random, slot_name: str, mode: str) -> Iterator[Edit]:
    """Both parents as helpers; the slot combines their per-example losses."""
    tree = _merge_parents(a, b, slot_name)
    try:
        torch_ = ast.unparse(Env(tree).expr_for("torch"))
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
    yield Edit(tree, None, None, detail, thought)


def _merge_parents(a: Parent, b: Parent, slot_name: str) -> ast.Module:
    """One module holding both parents, their slots renamed parent_a_loss / parent_b_loss."""
    trees = [copy.deepcopy(a.tree), copy.deepcopy(b.tree)]
    idents = identifiers(trees[0]) | identifiers(trees[1])
    claimed = {slot_name, HELPER_A, HELPER_B}
    imports: dict[str, tuple[str, bool]] = {}
    renames: list[dict[str, str]] = [{}, {}]
    for k, tree in enumerate(trees):
        for alias, (target, is_from) in import_table(tree).items():
            if alias in imports:
                if imports[alias][0] == target:
                    continue
                new = fresh(alias, idents | claimed | set(imports))
                renames[k][alias] = new
                alias = new
            imports[alias] = (target, is_from)
    claimed |= set(imports)
    for k, (tree, helper) in enumerate(zip(trees, (HELPER_A, HELPER_B), strict=True)):
        for name in toplevel_names(tree):
            if name == slot_name:
                new = helper
            elif name in claimed:
                new = fresh(name, idents | claimed)
            else:
                claimed.add(name)
                continue
            renames[k][name] = new
            claimed.add(new)
    body: list[ast.stmt] = [import_stmt(alias, target, is_from) for alias, (target, is_from) in imports.items()]
    for tree, mapping in zip(trees, renames, strict=True):
        rename_globals(tree, mapping)
        for i, stmt in enumerate(tree.body):
            if isinstance(stmt, (ast.Import, ast.ImportFrom)) or (i == 0 and is_docstring(stmt)):
                continue
            body.append(stmt)
    return ast.Module(body=body, type_ignores=[])


def splice(a: Parent, b: Parent, id_a: str, id_b: str, rng: random.Random, slot_name: str) -> Iterator[Edit]:
    """Replace a subexpression of A's returned expression by one of B's (B's locals inlined)."""
    argmap = dict(zip(b.args, a.args, strict=True))
    b_tensors = {n for n in b.args if n not in SCALAR_ARGS | OPAQUE_ARGS}
    donors: list[ast.expr] = []
    seen: set[str] = set()
    for ret in returns(b.slot):
        inlined = _inline(b, ret)
        for s in subexprs(inlined):
            names = {n.id for n in ast.walk(s) if isinstance(n, ast.Name)}
            if isinstance(s, ast.Name) or not tensorish(s, b_tensors):
                continue
            if not all(n in argmap or n in b.bindings for n in names):
                continue
            key = ast.dump(s)
            if key not in seen:
                seen.add(key)
                donors.append(s)
    a_tensors = tensor_names(a.slot)
    sites: list[tuple[ast.expr, ast.expr]] = []  # (site, what it computes, for spotting no-ops)
    for ret in returns(a.slot):
        for target in return_targets(a.slot, ret):
            for s in subexprs(target):
                if s is not target and tensorish(s, a_tensors):
                    sites.append((s, _inline(a, ret, s) if target is ret.value else s))
    pairs = [(site, value, donor) for site, value in sites for donor in donors]
    rng.shuffle(pairs)
    for site, value, donor in pairs:
        tree, (new_site,) = copy_with(a.tree, site)
        try:
            graft = _port(donor, b.bindings, argmap, Env(tree))
        except NotApplicable:
            continue
        if ast.dump(graft) == ast.dump(value):
            continue
        replace(tree, new_site, graft)
        thought = (
            f"Replaced `{short(site)}` in {id_a} with `{short(graft)}` taken from {id_b}, "
            f"mixing the structure of both parents."
        )
        yield Edit(tree, graft, a.slot.name, "crossover(splice)", thought)


def _inline(p: Parent, ret: ast.Return, expr: ast.expr | None = None) -> ast.expr:
    """``expr`` (default: the value of ``ret``) with the slot's straight-line locals, as they are
    at ``ret``, and numeric module constants inlined.

    Top-level ``name = value`` statements before the return are substituted in order (so a
    reassigned local takes its latest value); names bound in any other way stay as they are.
    """
    assert ret.value is not None
    defs: dict[str, ast.expr] = {}
    for stmt in p.tree.body:
        name = _assigned_name(stmt)
        if name is not None and const_value(stmt.value) is not None:  # type: ignore[attr-defined]
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


def _port(expr: ast.expr, bindings: dict[str, tuple[str, bool]], argmap: dict[str, str], env: Env) -> ast.expr:
    """``expr`` from another program, with its arguments and module aliases rewritten for ``env``."""

    class _Port(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.expr:
            if node.id in argmap:
                return ast.Name(argmap[node.id], ast.Load())
            if node.id in bindings:
                return env.expr_for(bindings[node.id][0])
            raise NotApplicable(f"free name {node.id}")

    return _Port().visit(copy.deepcopy(expr))
