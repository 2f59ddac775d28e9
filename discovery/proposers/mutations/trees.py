"""Reading and rewriting the syntax tree of one program: its slot's signature and returns, the
subexpressions an operator may touch, which names hold tensors, ``+``/``-`` chains, numeric
literals, copies with node replacement, and rendering back to source."""

from __future__ import annotations

import ast
import copy
import math
from collections.abc import Iterator
from typing import TypeGuard, cast

from discovery.proposers.mutations.table import OPAQUE_ARGS, SCALAR_ARGS, NotApplicable
from sandbox.static.syntax import COMPREHENSIONS


def arg_names(fn: ast.FunctionDef) -> list[str]:
    """The signature's parameter names in order, ``*args`` and ``**kwargs`` with their stars."""
    args = fn.args
    names = [a.arg for a in args.posonlyargs + args.args]
    if args.vararg:
        names.append("*" + args.vararg.arg)
    names += [a.arg for a in args.kwonlyargs]
    if args.kwarg:
        names.append("**" + args.kwarg.arg)
    return names


def find_function(tree: ast.Module, name: str) -> ast.FunctionDef | None:
    """The last top-level function named ``name``, if any."""
    found = [s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == name]
    return found[-1] if found else None


def copy_with(tree: ast.Module, *nodes: ast.AST) -> tuple[ast.Module, list]:
    """A deep copy of ``tree`` and the copies of ``nodes`` in it."""
    memo: dict = {}
    new = copy.deepcopy(tree, memo)
    return new, [memo[id(n)] for n in nodes]


def replace(root: ast.AST, old: ast.AST, new: ast.AST) -> None:
    """Put ``new`` where ``old`` is under ``root`` (raises NotApplicable if it is not there)."""
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


def render(tree: ast.Module) -> str:
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


class Simplify(ast.NodeTransformer):
    """Remove the double negations that template substitution produces."""

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.expr:
        self.generic_visit(node)
        inner = node.operand
        if isinstance(node.op, ast.USub) and isinstance(inner, ast.UnaryOp) and isinstance(inner.op, ast.USub):
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


def short(node: ast.AST, limit: int = 40) -> str:
    """``node`` as one line of source, cut at ``limit`` characters, for thoughts."""
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tag(node: ast.AST, limit: int = 24) -> str:
    """A compact spelling of ``node`` for mutant names, truncated with balanced brackets."""
    text = "".join(ast.unparse(node).split())
    if len(text) <= limit:
        return text
    head = text[: limit - 4]
    depth = head.count("(") - head.count(")")
    return head + "..." + ")" * max(depth, 0)


def returns(fn: ast.FunctionDef) -> list[ast.Return]:
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


def defined_before(fn: ast.FunctionDef, ret: ast.Return) -> list[str]:
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


def return_targets(fn: ast.FunctionDef, ret: ast.Return) -> list[ast.expr]:
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


def subexprs(expr: ast.expr) -> list[ast.expr]:
    """Subexpressions that can be evaluated on their own (no comprehension or lambda variables)."""
    out: list[ast.expr] = []

    def rec(node: ast.AST) -> None:
        if isinstance(node, (ast.Lambda, ast.Starred, ast.NamedExpr, *COMPREHENSIONS)):
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


def tensor_names(fn: ast.FunctionDef) -> set[str]:
    """Arguments that are tensors, and locals computed from them."""
    names = {a for a in arg_names(fn) if a.lstrip("*") == a and a not in SCALAR_ARGS | OPAQUE_ARGS}
    flows: list[tuple[list[str], ast.expr]] = []
    for node in ast.walk(fn):
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and node.value is not None:
            assigned = node.targets if isinstance(node, ast.Assign) else [node.target]
            # only names bound here: storing into `state["m"]` does not make `state` a tensor
            found = [
                n.id for t in assigned for n in ast.walk(t) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
            ]
            flows.append((found, node.value))
        elif isinstance(node, (ast.For, ast.comprehension)):
            flows.append(([n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)], node.iter))
    changed = True
    while changed:
        changed = False
        for targets, value in flows:
            if any(t not in names for t in targets) and tensorish(value, names):
                names.update(targets)
                changed = True
    return names


def tensorish(expr: ast.AST, tensors: set[str]) -> bool:
    """Whether ``expr`` mentions one of the tensor names."""
    return any(isinstance(n, ast.Name) and n.id in tensors for n in ast.walk(expr))


def chain_roots(expr: ast.expr) -> list[ast.BinOp]:
    """Roots of maximal ``+``/``-`` chains inside ``expr``."""
    roots: list[ast.BinOp] = []

    def is_chain(node: ast.AST) -> TypeGuard[ast.BinOp]:
        return isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub))

    def rec(node: ast.AST, in_chain: bool) -> None:
        if isinstance(node, (ast.Lambda, *COMPREHENSIONS)):
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


def flatten(node: ast.expr, sign: int = 1) -> list[tuple[int, ast.expr]]:
    """The signed terms of a ``+``/``-`` chain."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        right_sign = sign if isinstance(node.op, ast.Add) else -sign
        return flatten(node.left, sign) + flatten(node.right, right_sign)
    return [(sign, node)]


def rebuild(terms: list[tuple[int, ast.expr]]) -> ast.expr:
    """The ``+``/``-`` chain of signed terms (inverse of :func:`flatten`)."""
    sign, first = terms[0]
    acc: ast.expr = first if sign > 0 else ast.UnaryOp(ast.USub(), first)
    for sign, term in terms[1:]:
        acc = ast.BinOp(acc, ast.Add() if sign > 0 else ast.Sub(), term)
    return acc


def is_number(node: ast.AST) -> TypeGuard[ast.Constant]:
    """Whether ``node`` is a finite int or float literal (not a bool)."""
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, (int, float))
        and not isinstance(node.value, bool)
        and math.isfinite(node.value)
    )


def const_value(node: ast.AST) -> float | None:
    """The value of a numeric literal, possibly signed (``-2.0``), else None."""
    if is_number(node):
        return cast(float, node.value)  # an int or a float
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) and is_number(node.operand):
        value = cast(float, node.operand.value)
        return -value if isinstance(node.op, ast.USub) else value
    return None


def number(value: float) -> ast.expr:
    """A literal for ``value`` (a negative one as unary minus on a positive constant)."""
    return ast.Constant(value) if value >= 0 else ast.UnaryOp(ast.USub(), ast.Constant(-value))


def same_number(a: float, b: float) -> bool:
    """Whether ``a`` and ``b`` agree to 6 significant digits."""
    return float(f"{a:.6g}") == float(f"{b:.6g}")


def parent_map(root: ast.AST) -> dict[int, ast.AST]:
    """id(child) -> parent for every node under ``root``."""
    return {id(child): node for node in ast.walk(root) for child in ast.iter_child_nodes(node)}


def ancestors(node: ast.AST, parents: dict[int, ast.AST]) -> Iterator[ast.AST]:
    """The nodes enclosing ``node``, innermost first."""
    cur = parents.get(id(node))
    while cur is not None:
        yield cur
        cur = parents.get(id(cur))


def contains(root: ast.AST, node: ast.AST) -> bool:
    """Whether ``node`` (by identity) is under ``root``."""
    return any(n is node for n in ast.walk(root))
