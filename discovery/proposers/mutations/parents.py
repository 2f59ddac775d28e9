"""Parents and edits: a parsed parent program with what the operators need to know about it, a
proposed edit of it, and the acceptance test every edit passes (safe, valid, new) before its
source is returned."""

from __future__ import annotations

import ast
from dataclasses import dataclass

from discovery.proposers.codehash import normalized_hash
from discovery.proposers.mutations.signs import context_ok, count_violations
from discovery.proposers.mutations.trees import Simplify, arg_names, find_function, render
from sandbox.static.syntax import import_table, set_docstring


class Parent:
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
        self.args = arg_names(self.slot)
        self.hash = normalized_hash(code)
        self.bindings = import_table(tree)
        self.functions = [s for s in tree.body if isinstance(s, ast.FunctionDef)]
        self.fail_counts = {fn.name: count_violations(fn, tree) for fn in self.functions}


@dataclass
class Edit:
    """A proposed edit: the new tree, the node that changed, its function, a short tag and a thought."""

    tree: ast.Module
    changed: ast.AST | None  # the new node, whose enclosing contexts must stay safe
    fn_name: str | None  # the top-level function containing it
    detail: str
    thought: str


def accept(cand: Edit, parents: list[Parent], slot_name: str) -> str | None:
    """The candidate's source if it is safe, valid and new; else None."""
    first = parents[0]
    if cand.fn_name is not None and cand.changed is not None:
        if not context_ok(cand.tree, cand.fn_name, cand.changed, first.fail_counts.get(cand.fn_name, 0)):
            return None
    tree = Simplify().visit(cand.tree)
    slot = find_function(tree, slot_name)
    if slot is None:
        return None
    set_docstring(slot, cand.thought)
    try:
        code = render(tree)
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
    if len(slots) != 1 or not isinstance(slots[0], ast.FunctionDef) or arg_names(slots[0]) != args:
        return False
    return not any(
        isinstance(n, ast.Attribute) and n.attr.startswith("__") and n.attr.endswith("__") for n in ast.walk(tree)
    )
