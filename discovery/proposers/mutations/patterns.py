"""Expression patterns: templates of the placeholder ``X`` (``F.logsigmoid(X)``), matched against
a program whatever its import aliases (and ``x.exp()`` for ``torch.exp(x)``), and instantiated
with the program's own module names."""

from __future__ import annotations

import ast
import copy

from discovery.proposers.mutations.names import Env
from discovery.proposers.mutations.trees import is_number
from sandbox.static.syntax import dotted

_TEMPLATE_BINDINGS = {"torch": "torch", "F": "torch.nn.functional", "math": "math"}
_QUAL_ALIASES = {
    "torch.nn.functional.sigmoid": "torch.sigmoid",
    "torch.nn.functional.tanh": "torch.tanh",
    "torch.nn.functional.relu": "torch.relu",
    "torch.special.expit": "torch.sigmoid",
    "torch.arctan": "torch.atan",
    "torch.absolute": "torch.abs",
}


_TEMPLATES: dict[str, ast.expr] = {}


def _template(src: str) -> ast.expr:
    if src not in _TEMPLATES:
        _TEMPLATES[src] = ast.parse(src, mode="eval").body
    return _TEMPLATES[src]


def qualify(node: ast.AST, bindings: dict) -> str | None:
    """Fully qualified name of a module attribute reference (``F.softplus`` -> torch.nn.functional...)."""
    spelled = dotted(node)
    if spelled is None:
        return None
    root, _, rest = spelled.partition(".")
    if root not in bindings:
        return None
    target = bindings[root]
    if isinstance(target, tuple):
        target = target[0]
    qualified = f"{target}.{rest}" if rest else target
    return _QUAL_ALIASES.get(qualified, qualified)


def callee(node: ast.Call, bindings: dict) -> tuple[str, ast.expr | None] | None:
    """(qualified function, first argument) of a call; ``x.f()`` is read as ``torch.f(x)``."""
    qualified = qualify(node.func, bindings)
    if qualified is not None:
        return qualified, (node.args[0] if node.args else None)
    if isinstance(node.func, ast.Attribute):
        name = f"torch.{node.func.attr}"
        return _QUAL_ALIASES.get(name, name), node.func.value
    return None


def match_template(template: str, node: ast.AST, bindings: dict) -> ast.expr | None:
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
        qualified = qualify(t, _TEMPLATE_BINDINGS)
        if qualified is not None:
            return isinstance(n, (ast.Name, ast.Attribute)) and qualify(n, bindings) == qualified
    if (
        isinstance(t, ast.Call)
        and isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and not n.args
        and not n.keywords
        and qualify(n.func, bindings) is None
        and len(t.args) == 1
        and not t.keywords
        and isinstance(t.args[0], ast.Name)
        and t.args[0].id == "X"
    ):  # method form: x.exp() for torch.exp(x)
        method = _QUAL_ALIASES.get(f"torch.{n.func.attr}", f"torch.{n.func.attr}")
        return method == qualify(t.func, _TEMPLATE_BINDINGS) and _unify(t.args[0], n.func.value, bindings, binds)
    if type(t) is not type(n):
        return False
    if isinstance(t, ast.Constant):
        if is_number(t) and is_number(n):
            return t.value == n.value
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


def instantiate(template: str, x: ast.expr, env: Env) -> ast.expr:
    """``template`` with ``X`` replaced by a copy of ``x`` and module names resolved in ``env``."""

    class _Fill(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.expr:
            if node.id == "X":
                return copy.deepcopy(x)
            if node.id in _TEMPLATE_BINDINGS:
                return env.expr_for(_TEMPLATE_BINDINGS[node.id])
            return node

    return _Fill().visit(copy.deepcopy(_template(template)))
