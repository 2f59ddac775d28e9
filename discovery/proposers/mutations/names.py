"""Module names in generated code: referring to a module (adding its import when needed), fresh
names, and renaming a parent's top-level names when two parents share one module."""

from __future__ import annotations

import ast

from discovery.proposers.mutations.table import NotApplicable
from sandbox.static.syntax import DEFINITIONS, identifiers, import_table, is_docstring, statement_names

_KNOWN_MODULES = {"torch": "torch", "torch.nn.functional": "F", "math": "math"}  # module -> usual alias


def import_stmt(alias: str, target: str, is_from: bool) -> ast.stmt:
    """The statement that binds ``alias`` to ``target`` (``from head import tail`` when ``is_from``)."""
    if is_from:
        head, tail = target.rsplit(".", 1)
        return ast.ImportFrom(module=head, names=[ast.alias(tail, None if alias == tail else alias)], level=0)
    return ast.Import(names=[ast.alias(target, None if alias == target else alias)])


class Env:
    """Refer to modules from generated code, adding ``import`` lines to ``tree`` when needed."""

    def __init__(self, tree: ast.Module):
        self.tree = tree
        self.bindings = {alias: target for alias, (target, _) in import_table(tree).items()}
        self.idents = identifiers(tree)

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
        pos = 1 if body and is_docstring(body[0]) else 0
        while pos < len(body) and isinstance(body[pos], (ast.Import, ast.ImportFrom)):
            pos += 1
        body.insert(pos, import_stmt(alias, target, False))
        self.bindings[alias] = target
        self.idents.add(alias)


def toplevel_names(tree: ast.Module) -> list[str]:
    """Names bound at module level other than by imports, in order."""
    names: list[str] = []
    for stmt in tree.body:
        if not isinstance(stmt, (ast.Import, ast.ImportFrom)):
            names += [n for n in statement_names(stmt) if n not in names]
    return names


def fresh(name: str, taken: set[str]) -> str:
    """``name_2``, ``name_3``, ...: the first not in ``taken``."""
    k = 2
    while f"{name}_{k}" in taken:
        k += 1
    return f"{name}_{k}"


def rename_globals(tree: ast.Module, mapping: dict[str, str]) -> None:
    """Rename module-level names (definitions and references not shadowed by locals).

    Coarser than Python's scopes: a name bound anywhere inside a top-level definition (even
    in a nested function or comprehension) is local to all of it.
    """
    if not mapping:
        return
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            continue
        local: set[str] = set()
        if isinstance(stmt, DEFINITIONS):
            if stmt.name in mapping:
                stmt.name = mapping[stmt.name]
            declared_global = {n for g in ast.walk(stmt) if isinstance(g, ast.Global) for n in g.names}
            for node in ast.walk(stmt):
                if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
                    local.add(node.id)
                elif isinstance(node, ast.arg):
                    local.add(node.arg)
                elif node is not stmt and isinstance(node, DEFINITIONS):
                    local.add(node.name)
            local -= declared_global
        for node in ast.walk(stmt):
            if isinstance(node, ast.Name) and node.id in mapping and node.id not in local:
                node.id = mapping[node.id]
            elif isinstance(node, (ast.Global, ast.Nonlocal)):
                node.names = [mapping.get(n, n) for n in node.names]
