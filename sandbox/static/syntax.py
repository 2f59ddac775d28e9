"""Syntax-tree helpers shared by everything that reads candidate source: scopes, names and imports.

The static policy (:mod:`sandbox.static.policy`), the code hash
(:mod:`discovery.proposers.codehash`), the mutator (:mod:`discovery.proposers.mutations`) and
the exporter (:mod:`discovery.export.rename`) answer the same questions about a parsed program:
which names a node, a statement or a scope binds, what an import binds, how a chain of
attributes is spelled. They answer them here, so that they agree. Standard library only (the
sandbox package may not import ``discovery``); nothing here runs the code it reads.

Scopes follow Python's rules, with one simplification that every caller relies on: a class's
bases and keywords are not walked as part of the enclosing scope (they bind a name only through
an assignment expression, which no candidate needs; classes are rejected by the policy anyway).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator

__all__ = [
    "COMPREHENSIONS",
    "DEFINITIONS",
    "FUNCTIONS",
    "alias_name",
    "all_bound_names",
    "binding_names",
    "capture_names",
    "comprehension_targets",
    "dotted",
    "identifiers",
    "import_bindings",
    "import_table",
    "is_docstring",
    "outer_parts",
    "parameters",
    "scope_bindings",
    "scope_nodes",
    "set_docstring",
    "statement_names",
]

#: expressions with a scope of their own (their targets do not leak into the enclosing one)
COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
#: statements that define a function
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
#: statements that bind their own name and open a scope
DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


# --------------------------------------------------------------------------- spelling


def dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attributes on a name (``a`` for a bare name), else None."""
    names: list[str] = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    names.append(node.id)
    return ".".join(reversed(names))


def is_docstring(stmt: ast.AST) -> bool:
    """Whether ``stmt`` is a bare string statement (a docstring where it comes first)."""
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def set_docstring(fn: ast.FunctionDef, text: str) -> None:
    """Make ``text`` the docstring of ``fn``, replacing the one it has."""
    doc = ast.Expr(value=ast.Constant(value=text))
    if fn.body and is_docstring(fn.body[0]):
        fn.body[0] = doc
    else:
        fn.body.insert(0, doc)


# --------------------------------------------------------------------------- imports


def alias_name(alias: ast.alias) -> str:
    """The name an import alias binds: ``import a.b`` binds ``a``, ``import a.b as c`` and
    ``from a import b as c`` bind ``c`` (``*`` for a star import, which binds nothing by name)."""
    return alias.asname or alias.name.split(".")[0]


def import_bindings(stmt: ast.Import | ast.ImportFrom) -> Iterator[tuple[ast.alias, str, str]]:
    """(alias, bound name, what it is bound to) for each alias of an import statement.

    ``import a.b`` binds ``a`` to ``a``; ``import a.b as c`` binds ``c`` to ``a.b``; ``from .m
    import x as y`` binds ``y`` to ``.m.x`` (the leading dots of a relative import kept).
    """
    for alias in stmt.names:
        if isinstance(stmt, ast.Import):
            if alias.asname:
                yield alias, alias.asname, alias.name
            else:
                root = alias.name.split(".")[0]
                yield alias, root, root
        else:
            module = "." * stmt.level + (stmt.module or "")
            yield alias, alias.asname or alias.name, f"{module}.{alias.name}"


def import_table(tree: ast.Module) -> dict[str, tuple[str, bool]]:
    """Top-level import bindings: bound name -> (qualified target, bound by a from-import).

    Relative and star imports are left out; a later import of a name replaces an earlier one.
    """
    out: dict[str, tuple[str, bool]] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Import) or (isinstance(stmt, ast.ImportFrom) and stmt.level == 0 and stmt.module):
            for alias, name, target in import_bindings(stmt):
                if alias.name != "*":
                    out[name] = (target, isinstance(stmt, ast.ImportFrom))
    return out


# --------------------------------------------------------------------------- what one node binds


def parameters(args: ast.arguments) -> list[ast.arg]:
    """Every parameter: positional-only, positional, keyword-only, then ``*args`` and ``**kwargs``."""
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
    return [a for a in every if a is not None]


def binding_names(node: ast.AST) -> Iterator[str]:
    """The names ``node`` itself binds: a stored or deleted name, a parameter, the name of a
    function or class definition, an exception handler's name. Imports and match patterns
    are not covered (:func:`alias_name`, :func:`capture_names`)."""
    if isinstance(node, ast.Name):
        if not isinstance(node.ctx, ast.Load):
            yield node.id
    elif isinstance(node, ast.arg):
        yield node.arg
    elif isinstance(node, DEFINITIONS):
        yield node.name
    elif isinstance(node, ast.ExceptHandler) and node.name:
        yield node.name


def capture_names(node: ast.AST) -> Iterator[str]:
    """The name a match pattern node captures (``case [x, *rest]``, ``case {**rest}``, ``case _ as y``)."""
    if isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
        yield node.name
    elif isinstance(node, ast.MatchMapping) and node.rest:
        yield node.rest


def all_bound_names(tree: ast.AST) -> set[str]:
    """Every name bound anywhere in ``tree`` other than by importing, whatever its scope."""
    return {name for node in ast.walk(tree) for name in (*binding_names(node), *capture_names(node))}


def statement_names(stmt: ast.stmt) -> list[str]:
    """The names a top-level statement binds, in order: a definition's name, an import's bound
    names, else every name stored anywhere inside it (a coarse reading of compound statements)."""
    if isinstance(stmt, DEFINITIONS):
        return [stmt.name]
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return [alias_name(alias) for alias in stmt.names]
    return [n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]


def identifiers(tree: ast.AST) -> set[str]:
    """Every identifier ``tree`` spells as a name, read or bound (attribute and keyword names
    excepted): what a generated name must not collide with."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
        elif isinstance(node, DEFINITIONS):
            out.add(node.name)
        elif isinstance(node, ast.alias):
            out.add(alias_name(node))
    return out


# --------------------------------------------------------------------------- scopes


def outer_parts(node: ast.AST) -> list[ast.AST]:
    """The parts of a nested scope evaluated in the enclosing one, in evaluation order:
    decorators, defaults and annotations of a function; defaults of a lambda; decorators of a
    class (not its bases, see the module docstring); the first iterable of a comprehension."""
    if isinstance(node, COMPREHENSIONS):
        return [node.generators[0].iter]
    parts: list[ast.AST] = []
    if isinstance(node, DEFINITIONS):
        parts += node.decorator_list
    if isinstance(node, (*FUNCTIONS, ast.Lambda)):
        parts += [d for d in node.args.defaults + node.args.kw_defaults if d is not None]
    if isinstance(node, FUNCTIONS):
        parts += [a.annotation for a in parameters(node.args) if a.annotation is not None]
        if node.returns is not None:
            parts.append(node.returns)
    return parts


def scope_nodes(body: Iterable[ast.AST]) -> Iterator[ast.AST]:
    """The nodes evaluated in the scope whose statements (or, for a lambda, expression) are
    ``body``, in source order (pre-order). A nested function, lambda, class or comprehension is
    yielded, but only its :func:`outer_parts` are entered."""
    stack: list[ast.AST] = list(reversed(list(body)))
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, (*DEFINITIONS, ast.Lambda, *COMPREHENSIONS)):
            children = outer_parts(node)
        else:
            children = list(ast.iter_child_nodes(node))
        stack.extend(reversed(children))


def scope_bindings(body: Iterable[ast.AST]) -> tuple[list[str], set[str]]:
    """Names bound directly in the scope whose statements are ``body``, in order of appearance,
    and the names it declares ``global`` or ``nonlocal`` (left out of the first list).

    Parameters of the function that owns ``body`` are not included, nor names an assignment
    expression inside a comprehension binds.
    """
    bound: list[str] = []
    declared: set[str] = set()
    for node in scope_nodes(body):
        if isinstance(node, (ast.Global, ast.Nonlocal)):
            declared.update(node.names)
            continue
        names = [alias_name(node)] if isinstance(node, ast.alias) and node.name != "*" else []
        for name in (*binding_names(node), *capture_names(node), *names):
            if name not in bound:
                bound.append(name)
    return [n for n in bound if n not in declared], declared


def comprehension_targets(node: ast.AST) -> list[str]:
    """The names a comprehension's ``for`` targets bind in its own scope, in order."""
    out: list[str] = []
    for gen in node.generators:  # type: ignore[attr-defined]
        for sub in ast.walk(gen.target):
            if isinstance(sub, ast.Name) and sub.id not in out:
                out.append(sub.id)
    return out
