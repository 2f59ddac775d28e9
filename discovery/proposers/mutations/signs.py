"""Sign analysis: which signs an expression can take, and the domain checks built on it (no
possibly zero divisor, no possibly non-positive value under ``log``, ``sqrt`` or a fractional
power, no torch function applied to a Python number) that every mutation must pass."""

from __future__ import annotations

import ast
from collections import Counter
from typing import cast

from discovery.proposers.mutations.patterns import callee, qualify
from discovery.proposers.mutations.table import SCALAR_ARGS
from discovery.proposers.mutations.trees import (
    arg_names,
    const_value,
    find_function,
    is_number,
    parent_map,
    tensor_names,
    tensorish,
)
from sandbox.static.syntax import import_table

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
_NONNEG_FNS = frozenset({"torch.sqrt", "torch.nn.functional.hardsigmoid", "math.sqrt", "torch.nn.functional.relu6"})
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


class Signs:
    """Which signs (-1, 0, +1) an expression of one function can take, as far as can be shown."""

    def __init__(self, fn: ast.FunctionDef, tree: ast.Module):
        self.bindings = import_table(tree)
        self.env: dict[str, frozenset] = {}
        for stmt in tree.body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                value = const_value(stmt.value)
                if value is not None:
                    self.env[stmt.targets[0].id] = self._const_sign(value)
        for a in arg_names(fn):
            self.env[a] = _POS if a in SCALAR_ARGS else _ANY
        stores = Counter(
            n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del))
        )
        for name in stores:
            self.env[name] = _ANY
        for stmt in fn.body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                name = stmt.targets[0].id
                if stores[name] == 1 and name not in arg_names(fn):
                    self.env[name] = self.sign(stmt.value)

    @staticmethod
    def _const_sign(value: float) -> frozenset:
        return _POS if value > 0 else _NEG if value < 0 else frozenset({0})

    def sign(self, node: ast.AST) -> frozenset:
        if isinstance(node, ast.Constant):
            return self._const_sign(cast(float, node.value)) if is_number(node) else _ANY
        if isinstance(node, ast.Name):
            return self.env.get(node.id, _ANY)
        if isinstance(node, ast.Attribute):
            if qualify(node, self.bindings) in ("math.pi", "math.e", "math.tau", "math.inf"):
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
            exponent = const_value(node.right)
            if left == _POS:
                return _POS
            if exponent is not None and float(exponent).is_integer():
                return _sign_even(left) if int(exponent) % 2 == 0 else left
            return _ANY
        return _ANY

    def _call(self, node: ast.Call) -> frozenset:
        found = callee(node, self.bindings)
        if found is None:
            return _ANY
        name, arg = found
        if arg is None:
            return _ANY
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
            low = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "min"), None)
            value = const_value(low) if low is not None else None
            if value is not None and value > 0:
                return _POS
            if value is not None and value == 0:
                return frozenset(x if x > 0 else 0 for x in inner)
        return _ANY


def violates(node: ast.AST, signs: Signs) -> bool:
    """True if ``node`` needs an operand in a restricted domain that cannot be shown to hold."""
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)):
            return 0 in signs.sign(node.right)
        if isinstance(node.op, ast.Pow):
            exponent = const_value(node.right)
            if exponent is not None and float(exponent).is_integer():
                return exponent < 0 and 0 in signs.sign(node.left)
            return signs.sign(node.left) != _POS
        return False
    if isinstance(node, ast.Call):
        found = callee(node, signs.bindings)
        if found is None:
            return False
        name, arg = found
        if arg is None:
            return False
        if name in _NEEDS_POSITIVE:
            return signs.sign(arg) != _POS
        if name in _NEEDS_ABOVE_MINUS_ONE:
            return -1 in signs.sign(arg)
        return name in _BOUNDED_DOMAIN
    return False


def needs_tensor(node: ast.AST, bindings: dict, tensors: set[str]) -> bool:
    """True if ``node`` is a torch function or tensor method applied to something not a tensor."""
    if not isinstance(node, ast.Call):
        return False
    qualified = qualify(node.func, bindings)
    if qualified is None:
        if isinstance(node.func, ast.Attribute):  # a method: x.sum(), x.clamp(...)
            return not tensorish(node.func.value, tensors)
        return False  # a helper function
    if not qualified.startswith("torch.") or qualified in _SCALAR_OK_TORCH:
        return False
    return not node.args or not tensorish(node.args[0], tensors)


def count_violations(fn: ast.FunctionDef, tree: ast.Module) -> int:
    """How many domain checks ``fn`` already fails (a mutation may not add to them)."""
    signs = Signs(fn, tree)
    return sum(violates(node, signs) for node in ast.walk(fn))


def context_ok(tree: ast.Module, fn_name: str, changed: ast.AST, old_violations: int) -> bool:
    """The changed node and every enclosing expression stay in their domain, and no new doubt."""
    fn = find_function(tree, fn_name)
    if fn is None:
        return False
    signs = Signs(fn, tree)
    tensors = tensor_names(fn)
    parents = parent_map(fn)
    node: ast.AST | None = changed
    while node is not None and node is not fn:
        if violates(node, signs) or needs_tensor(node, signs.bindings, tensors):
            return False
        node = parents.get(id(node))
    return sum(violates(n, signs) for n in ast.walk(fn)) <= old_violations
