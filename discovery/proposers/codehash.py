"""A hash of a candidate program that ignores everything that cannot change its behaviour.

Two candidates that differ only in formatting, comments, docstrings, type annotations or
the names of their local variables get the same :func:`normalized_hash`; changing a
constant (beyond 6 significant digits), an operator or a called function changes it.

Normalization, on the syntax tree:

* docstrings and other bare string statements are dropped (comments never reach the tree);
* annotations are dropped (``x: T = v`` becomes ``x = v``);
* local variables of every function, lambda and comprehension are renamed ``v0, v1, ...``
  in order of first appearance. The parameters of top-level functions (the slot's
  arguments, which callers may pass by keyword), module-level names, imported module
  aliases and attribute names keep their spelling;
* numeric constants are rounded to 6 significant digits and written as floats, so
  ``2``, ``2.0`` and ``2.0000001`` are the same constant.

Source that does not parse is hashed as its raw text with surrounding whitespace stripped.
"""

from __future__ import annotations

import ast
import hashlib

from sandbox.static.syntax import comprehension_targets, is_docstring, parameters, scope_bindings

__all__ = ["normalize_source", "normalized_hash"]


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def normalized_hash(source: str) -> str:
    """sha256 (hex) of the normalized syntax tree of ``source`` (see the module docstring)."""
    normalized = normalize_source(source)
    return _sha256(normalized if normalized is not None else source.strip())


def normalize_source(source: str) -> str | None:
    """The normalized text that :func:`normalized_hash` hashes, or None if it does not parse."""
    try:
        tree = ast.parse(source)
        tree = _StripDocs().visit(tree)
        tree = _RoundConstants().visit(tree)
        _Renamer().visit(tree)
        ast.fix_missing_locations(tree)
        return ast.unparse(tree)
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
        return None


# --------------------------------------------------------------------------- docstrings


class _StripDocs(ast.NodeTransformer):
    """Drop bare string statements (docstrings included) and annotations."""

    def generic_visit(self, node: ast.AST) -> ast.AST:
        node = super().generic_visit(node)
        for name in ("body", "orelse", "finalbody"):
            body = getattr(node, name, None)
            if not isinstance(body, list) or not body or not isinstance(body[0], ast.stmt):
                continue
            kept = [s for s in body if not is_docstring(s)]
            if not kept and name == "body":
                kept = [ast.Pass()]
            setattr(node, name, kept)
        return node

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.annotation = None
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.returns = None
        return self.generic_visit(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        node.returns = None
        return self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        if node.value is None:
            return ast.Pass()
        return self.generic_visit(ast.Assign(targets=[node.target], value=node.value))


# --------------------------------------------------------------------------- constants


class _RoundConstants(ast.NodeTransformer):
    def visit_Constant(self, node: ast.Constant) -> ast.Constant:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return node
        try:
            return ast.Constant(value=float(f"{value:.6g}"))
        except OverflowError:
            return node


# --------------------------------------------------------------------------- local names


class _Scope:
    def __init__(self, names: list[str], parent: _Scope | None):
        self.names = set(names)
        self.mapping: dict[str, str] = {}
        self.parent = parent


class _Renamer(ast.NodeVisitor):
    """Rename the locals of every function, lambda and comprehension to v0, v1, ..."""

    def __init__(self) -> None:
        self.scope: _Scope | None = None
        self.counter = 0

    def _lookup(self, name: str) -> str | None:
        scope = self.scope
        while scope is not None:
            if name in scope.names:
                if name not in scope.mapping:
                    scope.mapping[name] = f"v{self.counter}"
                    self.counter += 1
                return scope.mapping[name]
            scope = scope.parent
        return None

    def visit_Name(self, node: ast.Name) -> None:
        new = self._lookup(node.id)
        if new is not None:
            node.id = new

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        node.names = [self._lookup(n) or n for n in node.names]

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            node.name = self._lookup(node.name) or node.name
        self.generic_visit(node)

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        args = node.args
        for default in args.defaults + [d for d in args.kw_defaults if d is not None]:
            self.visit(default)
        body = node.body if isinstance(node.body, list) else [node.body]
        if not isinstance(node, ast.Lambda):
            for decorator in node.decorator_list:
                self.visit(decorator)
            if self.scope is not None:  # a nested def is a local of the enclosing function
                node.name = self._lookup(node.name) or node.name
        params = [a.arg for a in parameters(args)]
        names, _ = scope_bindings(body)  # annotations are gone: they bind nothing here
        top_level = self.scope is None and not isinstance(node, ast.Lambda)
        local = names + ([] if top_level else params)
        # top-level parameters are not renamed, but they still shadow nothing outside
        scope = _Scope([n for n in local if not (top_level and n in params)], self.scope)
        self.scope = scope
        if not top_level:
            for a in parameters(args):
                a.arg = self._lookup(a.arg) or a.arg
        for stmt in body:
            self.visit(stmt)
        self.scope = scope.parent

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._visit_function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._visit_function(node)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._visit_function(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if self.scope is not None:
            node.name = self._lookup(node.name) or node.name
        self.generic_visit(node)

    def _visit_comprehension(self, node: ast.AST, elements: list[ast.AST]) -> None:
        generators: list[ast.comprehension] = node.generators  # type: ignore[attr-defined]
        self.visit(generators[0].iter)  # evaluated in the enclosing scope
        scope = _Scope(comprehension_targets(node), self.scope)
        self.scope = scope
        for i, gen in enumerate(generators):
            self.visit(gen.target)
            if i:
                self.visit(gen.iter)
            for cond in gen.ifs:
                self.visit(cond)
        for element in elements:
            self.visit(element)
        self.scope = scope.parent

    def visit_ListComp(self, node: ast.ListComp) -> None:
        self._visit_comprehension(node, [node.elt])

    def visit_SetComp(self, node: ast.SetComp) -> None:
        self._visit_comprehension(node, [node.elt])

    def visit_GeneratorExp(self, node: ast.GeneratorExp) -> None:
        self._visit_comprehension(node, [node.elt])

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._visit_comprehension(node, [node.key, node.value])
