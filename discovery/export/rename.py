"""Move one candidate program into a shared module: rename its top-level names, scope-aware.

Several candidates usually define helpers or constants with the same names (``TAU``,
``_margin``) and every one defines the slot (``loss``). Before they share one module, each
candidate's top-level names get new identifiers: the slot function takes the export name,
everything else ``_<export name>__<old name>``. Only references that resolve to the module
level are renamed: a parameter, local variable, nested function or comprehension variable
that shadows a top-level name keeps its name, as do attributes and keyword arguments.

Imports of the module's header (``import math``, ``import torch``, ``import
torch.nn.functional as F``) are dropped from the candidate when they bind the same name
to the same module; any other import is kept with its bound name renamed.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sandbox.static.syntax import (
    COMPREHENSIONS,
    alias_name,
    binding_names,
    comprehension_targets,
    import_bindings,
    outer_parts,
    parameters,
    scope_nodes,
    set_docstring,
)

#: name -> module each header import binds; a candidate's identical import is dropped
HEADER_IMPORTS: dict[str, str] = {"math": "math", "torch": "torch", "F": "torch.nn.functional"}

_UNSUPPORTED = (ast.ClassDef, ast.AsyncFunctionDef, ast.Global, ast.Nonlocal)


class RenameError(ValueError):
    """The program holds something the exporter does not move (the static policy rejects it too)."""


@dataclass
class MovedProgram:
    """A candidate's top-level statements after renaming."""

    imports: list[ast.stmt]  # the imports the header does not provide, renamed
    body: list[ast.stmt]  # constants and functions, in their original order, renamed
    function: ast.FunctionDef  # the slot function (in ``body``), now called by its export name
    mapping: dict[str, str]  # old top-level name -> new name


def _top_level_bindings(tree: ast.Module) -> dict[str, list[str]]:
    """Each top-level name and what binds it (a module path for imports, ``""`` for anything else)."""
    bound: dict[str, list[str]] = {}
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            for alias, name, target in import_bindings(stmt):
                if alias.name == "*":
                    raise RenameError("'import *' cannot be exported")
                bound.setdefault(name, []).append(target)
        elif isinstance(stmt, ast.FunctionDef):
            bound.setdefault(stmt.name, []).append("")
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for assigned in targets:
                for node in ast.walk(assigned):
                    if isinstance(node, ast.Name):
                        bound.setdefault(node.id, []).append("")
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) or isinstance(stmt, ast.Pass):
            continue
        else:
            raise RenameError(f"top-level '{type(stmt).__name__}' statement cannot be exported")
    return bound


def local_names(fn: ast.FunctionDef | ast.Lambda) -> set[str]:
    """Names bound in ``fn``'s own scope: parameters, assignments, loop and ``with`` targets,
    nested function names, imports, exception names, walrus targets of its comprehensions."""
    nodes = list(scope_nodes(fn.body if isinstance(fn, ast.FunctionDef) else [fn.body]))
    unsupported = [node for node in nodes if isinstance(node, _UNSUPPORTED)]
    if unsupported:  # the last one in source order is the one this error has always named
        raise RenameError(f"'{type(unsupported[-1]).__name__}' cannot be exported")
    names = {a.arg for a in parameters(fn.args)}
    for node in nodes:
        if isinstance(node, COMPREHENSIONS):
            names.update(
                n.target.id for n in ast.walk(node) if isinstance(n, ast.NamedExpr) and isinstance(n.target, ast.Name)
            )
        elif isinstance(node, ast.alias):
            names.add(alias_name(node))
        else:
            names.update(binding_names(node))
    return names


def rename_references(node: ast.AST, mapping: dict[str, str], shadowed: frozenset[str] = frozenset()) -> None:
    """Rename, in place, every ``Name`` under ``node`` that refers to a module-level name in
    ``mapping``; ``shadowed`` are names local to the scopes enclosing ``node``."""
    if isinstance(node, ast.Name):
        if node.id in mapping and node.id not in shadowed:
            node.id = mapping[node.id]
        return
    if isinstance(node, _UNSUPPORTED):
        raise RenameError(f"'{type(node).__name__}' cannot be exported")
    if isinstance(node, (ast.FunctionDef, ast.Lambda)):
        for part in outer_parts(node):
            rename_references(part, mapping, shadowed)
        inner = shadowed | local_names(node)
        for stmt in node.body if isinstance(node, ast.FunctionDef) else [node.body]:
            rename_references(stmt, mapping, inner)
        return
    if isinstance(node, COMPREHENSIONS):
        inner = shadowed | set(comprehension_targets(node))
        rename_references(node.generators[0].iter, mapping, shadowed)
        for i, gen in enumerate(node.generators):
            rename_references(gen.target, mapping, inner)
            if i:
                rename_references(gen.iter, mapping, inner)
            for cond in gen.ifs:
                rename_references(cond, mapping, inner)
        for elt in [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]:
            rename_references(elt, mapping, inner)
        return
    for child in ast.iter_child_nodes(node):
        rename_references(child, mapping, shadowed)


def move_program(
    tree: ast.Module, slot: str, export_name: str, helper_name: Callable[[str], str], docstring: str
) -> MovedProgram:
    """Rename a parsed candidate for the shared module (``tree`` is not changed).

    ``helper_name(old)`` gives the new name of any other top-level name; the slot
    function's docstring becomes ``docstring``.
    """
    tree = copy.deepcopy(tree)
    bound = _top_level_bindings(tree)
    if slot not in bound:
        raise RenameError(f"no top-level function named {slot!r}")
    keep = {name for name, targets in bound.items() if all(t == HEADER_IMPORTS.get(name) for t in targets)}
    mapping = {name: (export_name if name == slot else helper_name(name)) for name in bound if name not in keep}
    imports: list[ast.stmt] = []
    body: list[ast.stmt] = []
    function: ast.FunctionDef | None = None
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            aliases = []
            for alias, name, _ in import_bindings(stmt):
                if name in keep:
                    continue
                if isinstance(stmt, ast.Import) and not alias.asname and "." in alias.name:
                    raise RenameError(f"'import {alias.name}' binds {name!r}, which another binding shadows")
                aliases.append(ast.alias(name=alias.name, asname=mapping[name]))
            if aliases:
                stmt.names = aliases
                imports.append(stmt)
            continue
        if isinstance(stmt, ast.Pass) or isinstance(stmt, ast.Expr):
            continue  # a module docstring or a bare constant
        rename_references(stmt, mapping)
        if isinstance(stmt, ast.FunctionDef):
            if stmt.name == slot and function is None:
                function = stmt
            stmt.name = mapping[stmt.name]
        body.append(stmt)
    if function is None:
        raise RenameError(f"no top-level function named {slot!r}")
    set_docstring(function, docstring)
    return MovedProgram(imports=imports, body=body, function=function, mapping=mapping)


def original_docstring(tree: ast.Module, slot: str) -> str | None:
    """The slot function's own docstring, if it has one."""
    for stmt in tree.body:
        if isinstance(stmt, ast.FunctionDef) and stmt.name == slot:
            return ast.get_docstring(stmt)
    return None


def names_bound(statements: Iterable[ast.stmt]) -> set[str]:
    """The names a list of top-level statements binds."""
    return set(_top_level_bindings(ast.Module(body=list(statements), type_ignores=[])))
