"""Static policy: the first wall a candidate program meets before anything runs.

The trusted side parses the candidate with :mod:`ast` (nothing is executed) and checks it against
an allow-list: imports only of the task's allowed, vetted modules; attributes only where the
allow-list of :mod:`sandbox.jail.guard` has them (on ``torch``, ``F`` and ``math`` chains, whose objects
are known here, the exact entry; on any other expression, a name that some vetted tensor, number,
string, container, dtype, device or size allows); names only when the candidate binds them or they
are vetted builtins; no generators, classes, async code, attribute assignment, monkeypatching, or
handlers that swallow the sandbox's signals; a side-effect-free top level and exactly one slot
function. Every violation names the candidate's line and says why, so the proposer can fix it.

This is not a sandbox on its own. The same allow-list is enforced again at run time on the
actual objects (:func:`sandbox.jail.guard.compile_guarded`: an expression whose type is not known
here, such as a call's result, is checked there as what it really is), and OS isolation comes
after that.
"""

from __future__ import annotations

import ast
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sandbox.jail import guard
from sandbox.jail.guard import BLOCKED_ATTRIBUTES, FORBIDDEN_NAMES
from sandbox.static.syntax import alias_name, all_bound_names, dotted, parameters, statement_names

MAX_STRING_CHARS = 2000

#: prefixes of attribute names, reached from an imported module, that change global state
BLOCKED_MODULE_PREFIXES: dict[str, str] = {
    "set_": "changes global torch state such as threads, dtype or grad mode",
    "register_": "installs a global hook",
}

#: torch functions and tensor methods whose names happen to be standard-library module names
_TORCH_OPS_NAMED_LIKE_STDLIB = frozenset({"chunk", "select", "trace"})

#: exceptions whose handlers would swallow the sandbox's own signals
SIGNAL_EXCEPTIONS = frozenset({"BaseException", "KeyboardInterrupt", "SystemExit", "GeneratorExit"})

#: try statements (``except*`` is Python 3.11+)
_TRY_NODES = tuple(getattr(ast, name) for name in ("Try", "TryStar") if hasattr(ast, name))

_TOP_LEVEL_HELP = (
    "(import must be side-effect free: the top level may only hold imports, function definitions, "
    "constant assignments and a docstring)"
)

#: statement kinds rejected wherever they appear (reported once, by the per-node check)
_REJECTED_ANYWHERE = (ast.ClassDef, ast.AsyncFunctionDef, ast.Match, ast.Global, ast.Nonlocal)


@dataclass(frozen=True)
class Violation:
    """One reason a candidate is rejected, at a 1-based line and 0-based column of its source."""

    line: int
    col: int
    reason: str

    def one_line(self) -> str:
        """The violation as ``line N: reason``."""
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True)
class Policy:
    """What a candidate program may contain."""

    allowed_imports: tuple[str, ...] = ("torch", "torch.nn.functional", "math")
    slot_name: str = "loss"  # the function the candidate must define at top level
    max_source_chars: int = 20000


def check_source(source: str, policy: Policy) -> list[Violation]:
    """Check a candidate's source against ``policy`` without running it.

    Returns every violation found, sorted by line (an empty list means the source passed).
    """
    if not source.strip():
        return [Violation(1, 0, "source is empty")]
    if len(source) > policy.max_source_chars:
        return [Violation(1, 0, f"source is too long: {len(source)} characters (limit {policy.max_source_chars})")]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. invalid escape sequences: not our concern
            tree = ast.parse(source)
            compile(tree, "<candidate>", "exec")  # compile-time errors ('return' outside function, ...)
    except SyntaxError as exc:
        return [Violation(exc.lineno or 1, max((exc.offset or 1) - 1, 0), f"syntax error: {exc.msg}")]
    except (ValueError, RecursionError, MemoryError) as exc:
        return [Violation(1, 0, f"syntax error: {exc or 'source is nested too deeply'}")]
    try:
        found = _Checker(tree, policy).run()
    except RecursionError:
        return [Violation(1, 0, "source is nested too deeply to check")]
    return sorted(set(found), key=lambda v: (v.line, v.col, v.reason))


def _shown(node: ast.expr) -> str:
    """A short rendering of ``node`` for a reason: ``torch.utils``, ``x.view(-1).cuda``."""
    try:
        text = dotted(node) or ast.unparse(node)
    except RecursionError:
        text = getattr(node, "attr", "expression")
    return text if len(text) <= 60 else "..." + text[-57:]


def _target_root(node: ast.expr) -> tuple[ast.expr, bool]:
    """The innermost object an assignment target hangs off, and whether a call was crossed."""
    through_call = False
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call, ast.Starred)):
        if isinstance(node, ast.Call):
            through_call = True
            node = node.func
        else:
            node = node.value
    return node, through_call


#: what :meth:`_Checker.static_value` returns for an expression whose object is not known statically
_UNKNOWN = object()


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _is_static(node: ast.expr) -> bool:
    """Whether evaluating ``node`` at import time has no effects: literals, names, arithmetic, tuples."""
    allowed = (
        ast.Constant, ast.Name, ast.Attribute, ast.UnaryOp, ast.BinOp, ast.Tuple, ast.List, ast.Dict,
        ast.Subscript, ast.expr_context, ast.operator, ast.unaryop,
    )  # fmt: skip
    return all(isinstance(child, allowed) for child in ast.walk(node))


class _Checker:
    """One pass over a parsed candidate; collects violations."""

    def __init__(self, tree: ast.Module, policy: Policy) -> None:
        self.tree = tree
        self.policy = policy
        self.found: list[Violation] = []
        self.parents: dict[ast.AST, ast.AST] = {
            child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)
        }
        self.modules: set[str] = set()  # names bound by `import x` / `import x.y as z`
        self.imported: set[str] = set()  # every name bound by an import
        self.tainted: set[str] = set()  # names that may hold an imported object
        self.static: dict[str, Any] = {}  # names bound by a vetted import -> the object they hold
        self.bound = all_bound_names(tree)  # names the candidate binds other than by importing

    def add(self, node: ast.AST, reason: str) -> None:
        line = getattr(node, "lineno", 1) or 1
        self.found.append(Violation(line, getattr(node, "col_offset", 0) or 0, reason))

    def reported(self, node: ast.AST, before: int) -> bool:
        """Whether a violation at ``node``'s position was added since ``len(self.found)`` was ``before``."""
        line, col = getattr(node, "lineno", 1) or 1, getattr(node, "col_offset", 0) or 0
        return any(v.line == line and v.col == col for v in self.found[before:])

    def run(self) -> list[Violation]:
        self.check_top_level()
        for node in ast.walk(self.tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                self.check_import(node)
        self.compute_taint()
        handler_types = {
            id(n)
            for node in ast.walk(self.tree)
            if isinstance(node, ast.ExceptHandler) and node.type is not None
            for n in ast.walk(node.type)
        }
        for node in ast.walk(self.tree):
            self.check_node(node, handler_types)
        return self.found

    # -- the top level -------------------------------------------------------------------

    def check_top_level(self) -> None:
        slot = self.policy.slot_name
        first_def: ast.FunctionDef | None = None
        for stmt in self.tree.body:
            if isinstance(stmt, ast.FunctionDef):
                self.check_import_time_parts(stmt)
                if stmt.name == slot:
                    if first_def is None:
                        first_def = stmt
                    else:
                        self.add(
                            stmt,
                            f"function '{slot}' is defined more than once (first at line {first_def.lineno})",
                        )
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                self.check_constant_assignment(stmt)
            elif isinstance(stmt, ast.Expr):
                if not isinstance(stmt.value, ast.Constant):
                    self.add(stmt, f"top-level expression is not allowed {_TOP_LEVEL_HELP}")
            elif not isinstance(stmt, (ast.Import, ast.ImportFrom, ast.Pass, *_REJECTED_ANYWHERE)):
                kind = type(stmt).__name__.lower()
                self.add(stmt, f"top-level '{kind}' statement is not allowed {_TOP_LEVEL_HELP}")
            if not isinstance(stmt, ast.FunctionDef) and slot in statement_names(stmt):
                self.add(stmt, f"top-level name '{slot}' is rebound; it must be the function only")
        if first_def is None:
            self.found.append(Violation(1, 0, f"no top-level function named '{slot}'"))

    def check_constant_assignment(self, stmt: ast.Assign | ast.AnnAssign) -> None:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        for target in targets:
            names = target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target]
            if not all(isinstance(name, ast.Name) for name in names):
                self.add(stmt, "top-level assignment may only bind plain names")
                return
        parts = [stmt.value] if stmt.value is not None else []
        if isinstance(stmt, ast.AnnAssign):
            parts.append(stmt.annotation)
        if not all(_is_static(part) for part in parts):
            self.add(
                stmt,
                "top-level assignment must be a constant (literals, arithmetic, tuples): "
                "calls, lambdas and comprehensions would run at import",
            )

    def check_import_time_parts(self, fn: ast.FunctionDef) -> None:
        """Decorators, defaults and annotations of a top-level function are evaluated at import."""
        if fn.decorator_list:
            self.add(
                fn.decorator_list[0],
                f"decorator on top-level function '{fn.name}' is not allowed (it runs at import)",
            )
        args = fn.args
        parts = [*args.defaults, *(d for d in args.kw_defaults if d is not None)]
        parts += [a.annotation for a in parameters(args) if a.annotation is not None]
        if fn.returns is not None:
            parts.append(fn.returns)
        for part in parts:
            if not _is_static(part):
                self.add(
                    part,
                    f"default or annotation in '{fn.name}' must be a constant (it is evaluated at import)",
                )

    # -- imports -------------------------------------------------------------------------

    def allowed_text(self) -> str:
        return ", ".join(self.policy.allowed_imports)

    def path_problem(self, path: str) -> str | None:
        """Why importing ``path`` (a dotted name) is not allowed, or None if it is."""
        allowed = self.policy.allowed_imports
        if path not in allowed and not any(path.startswith(module + ".") for module in allowed):
            return f"import of '{path}' is not allowed (allowed: {self.allowed_text()})"
        parts = path.split(".")
        for i, part in enumerate(parts):
            prefix = ".".join(parts[: i + 1])
            if part.startswith("_"):
                return f"import of '{path}' is not allowed ('{prefix}' is private)"
            if part in FORBIDDEN_NAMES:
                return f"import of '{path}' is not allowed ('{part}' is a forbidden name)"
            if i > 0 and part in BLOCKED_ATTRIBUTES:
                return f"import of '{path}' is not allowed ('{prefix}' {BLOCKED_ATTRIBUTES[part]})"
            if i > 0 and self.stdlib_leak(part):
                return f"import of '{path}' is not allowed ('{prefix}' is a standard-library module)"
        return None

    @staticmethod
    def stdlib_leak(name: str) -> bool:
        return name in sys.stdlib_module_names and name not in _TORCH_OPS_NAMED_LIKE_STDLIB

    @staticmethod
    def vetted_problem(path: str, name: str | None = None) -> str | None:
        """Why importing ``path`` (or ``name`` from it) is outside the guard's allow-list, or None."""
        modules = guard.vetted().modules
        parts = path.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix not in modules:
                return (
                    f"import of '{path}' is not allowed ('{prefix}' is not a vetted module; "
                    f"vetted: {', '.join(guard.VETTED_MODULES)})"
                )
        if name is not None:
            why = guard.module_refusal(modules[path], name)
            if why is not None:
                return f"import of '{path}.{name}' is not allowed ({why})"
        return None

    def check_import(self, node: ast.Import | ast.ImportFrom) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                problem = self.path_problem(alias.name) or self.vetted_problem(alias.name)
                if problem:
                    self.add(node, problem)
                bound = alias_name(alias)
                self.modules.add(bound)
                self.imported.add(bound)
                if not problem:
                    self.static[bound] = guard.vetted().modules[alias.name if alias.asname else bound]
            return
        if node.level:
            self.add(node, f"relative import 'from {'.' * node.level}{node.module or ''}' is not allowed")
            return
        module = node.module or ""
        for alias in node.names:
            if alias.name == "*":
                self.add(node, f"'from {module} import *' is not allowed (import names explicitly)")
                continue
            bound = alias_name(alias)
            self.imported.add(bound)
            problem = self.path_problem(f"{module}.{alias.name}")
            if problem and self.path_problem(module) is not None:
                problem = f"import from '{module}' is not allowed (allowed: {self.allowed_text()})"
            problem = problem or self.vetted_problem(module, alias.name)
            if problem:
                self.add(node, problem)
            else:
                self.static[bound] = getattr(guard.vetted().modules[module], alias.name)

    # -- names that may hold an imported object -------------------------------------------

    def holds_import(self, node: ast.expr) -> bool:
        """Whether ``node`` may evaluate to (or contain) an imported object or part of one."""
        stack = [node]
        while stack:
            node = stack.pop()
            if isinstance(node, ast.Name):
                if node.id in self.imported or node.id in self.tainted:
                    return True
            elif isinstance(node, (ast.Attribute, ast.Subscript, ast.Starred)):
                stack.append(node.value)
            elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                stack.extend(node.elts)
            elif isinstance(node, ast.Dict):
                stack.extend(node.values)
            elif isinstance(node, ast.IfExp):
                stack.extend([node.body, node.orelse])
            elif isinstance(node, ast.BoolOp):
                stack.extend(node.values)
            elif isinstance(node, ast.NamedExpr):
                stack.append(node.value)
            elif isinstance(node, ast.Lambda):
                stack.append(node.body)
            elif isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp)):
                stack.append(node.elt)
            elif isinstance(node, ast.DictComp):
                stack.append(node.value)
        return False

    def bindings(self) -> Iterator[tuple[ast.expr, ast.expr]]:
        """(target, value) pairs for every assignment-like binding in the source."""
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    yield target, node.value
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)) and node.value is not None:
                yield node.target, node.value
            elif isinstance(node, (ast.For, ast.comprehension)):
                yield node.target, node.iter
            elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                yield node.optional_vars, node.context_expr
            elif isinstance(node, ast.arguments):  # default values bind parameters too
                positional = [*node.posonlyargs, *node.args]
                pairs = [*zip(positional[len(positional) - len(node.defaults) :], node.defaults, strict=True)]
                pairs += [(a, d) for a, d in zip(node.kwonlyargs, node.kw_defaults, strict=True) if d is not None]
                for arg, default in pairs:
                    yield ast.Name(id=arg.arg, ctx=ast.Store()), default

    def compute_taint(self) -> None:
        """Follow imported objects through local names (``m = torch.nn``; ``t = (F,)``)."""
        pairs = list(self.bindings())
        changed = True
        while changed:
            changed = False
            for target, value in pairs:
                if not self.holds_import(value):
                    continue
                for part in ast.walk(target):
                    root, _ = _target_root(part) if isinstance(part, ast.expr) else (part, False)
                    if isinstance(root, ast.Name) and root.id not in self.tainted:
                        self.tainted.add(root.id)
                        changed = True

    # -- every node ----------------------------------------------------------------------

    def check_identifier(self, node: ast.AST, name: str, what: str) -> None:
        if _is_dunder(name):
            self.add(node, f"{what} '{name}' is not allowed (double-underscore names reach interpreter internals)")
        elif name in FORBIDDEN_NAMES:
            self.add(node, f"{what} '{name}' is not allowed (forbidden name)")

    def check_node(self, node: ast.AST, handler_types: set[int]) -> None:
        if isinstance(node, ast.Name):
            self.check_name(node, handler_types)
        elif isinstance(node, ast.Attribute):
            self.check_attribute(node)
        elif isinstance(node, ast.Subscript) and not isinstance(node.ctx, ast.Load):
            self.check_store(node)
        elif isinstance(node, ast.arg):
            self.check_identifier(node, node.arg, "argument name")
        elif isinstance(node, ast.alias) and node.asname:
            self.check_identifier(node, node.asname, "import alias")
        elif isinstance(node, ast.FunctionDef):
            self.check_identifier(node, node.name, "function name")
        elif isinstance(node, ast.ExceptHandler):
            self.check_handler(node)
        elif isinstance(node, _TRY_NODES):
            self.check_finally(node)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            keyword = "global" if isinstance(node, ast.Global) else "nonlocal"
            self.add(node, f"'{keyword}' statements are not allowed")
        elif isinstance(node, ast.ClassDef):
            self.add(node, f"class definitions are not allowed (class '{node.name}')")
        elif isinstance(node, ast.Match):
            self.add(node, "'match' statements are not allowed (class patterns read attributes by name)")
        elif isinstance(node, (ast.AsyncFunctionDef, ast.AsyncFor, ast.AsyncWith, ast.Await)):
            self.add(node, "async code is not allowed")
        elif isinstance(node, ast.GeneratorExp):
            self.add(
                node,
                "generator expressions are not allowed (generators expose their frames); "
                "use a list comprehension, e.g. sum([... for ...])",
            )
        elif isinstance(node, (ast.Yield, ast.YieldFrom)):
            keyword = "yield" if isinstance(node, ast.Yield) else "yield from"
            self.add(node, f"'{keyword}' is not allowed (generators expose their frames)")
        elif isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
            if len(node.value) > MAX_STRING_CHARS:
                self.add(
                    node,
                    f"string literal is too long: {len(node.value)} characters (limit {MAX_STRING_CHARS})",
                )

    def check_name(self, node: ast.Name, handler_types: set[int]) -> None:
        before = len(self.found)
        self.check_identifier(node, node.id, "name")
        if node.id in SIGNAL_EXCEPTIONS and id(node) not in handler_types:
            self.add(node, f"name '{node.id}' is not allowed (catch Exception, not the sandbox's signals)")
        if (
            isinstance(node.ctx, ast.Load)
            and node.id not in self.bound
            and node.id not in self.imported
            and node.id not in guard.ALLOWED_BUILTINS
            and not self.reported(node, before)
        ):
            self.add(
                node, f"name '{node.id}' is not allowed (it is not defined in the candidate and not a vetted builtin)"
            )
        parent = self.parents.get(node)
        if (
            node.id in self.modules
            and isinstance(node.ctx, ast.Load)
            and not (isinstance(parent, ast.Attribute) and parent.value is node)
        ):
            self.add(node, f"module '{node.id}' may only be used through its attributes (e.g. {node.id}.exp)")

    def check_attribute(self, node: ast.Attribute) -> None:
        before = len(self.found)
        self.check_attribute_by_name(node)
        if self.reported(node, before):
            return
        if not isinstance(node.ctx, ast.Load):
            self.add(
                node,
                f"assigning to or deleting the attribute '{_shown(node)}' is not allowed "
                "(a candidate's attributes are read-only)",
            )
            return
        receiver = self.static_value(node.value)
        why = guard.name_refusal(node.attr) if receiver is _UNKNOWN else guard.refusal(receiver, node.attr)
        if why is not None:
            self.add(node, f"'{_shown(node)}' is not allowed ({why})")

    def static_value(self, node: ast.expr) -> Any:
        """The object ``node`` evaluates to when it is a chain of vetted attributes on a vetted import
        (``torch.nn.functional``, ``F.relu``), else _UNKNOWN."""
        if isinstance(node, ast.Name):
            if node.id in self.static and node.id not in self.bound:
                return self.static[node.id]
            return _UNKNOWN
        if isinstance(node, ast.Attribute):
            base = self.static_value(node.value)
            if base is _UNKNOWN or guard.refusal(base, node.attr) is not None:
                return _UNKNOWN
            return getattr(base, node.attr, _UNKNOWN)
        return _UNKNOWN

    def check_attribute_by_name(self, node: ast.Attribute) -> None:
        """The deny-lists: dunder, private, forbidden and blocked names, and monkeypatching."""
        name = node.attr
        shown = _shown(node)
        root, _ = _target_root(node.value)
        from_import = isinstance(root, ast.Name) and (root.id in self.imported or root.id in self.tainted)
        if _is_dunder(name):
            self.add(
                node,
                f"attribute '{name}' is not allowed (double-underscore names reach interpreter internals)",
            )
        elif name.startswith("_"):
            self.add(node, f"attribute '{name}' is not allowed (private attributes reach torch internals)")
        elif name in FORBIDDEN_NAMES:
            self.add(node, f"'{shown}' is not allowed ('{name}' is a forbidden name)")
        elif name in BLOCKED_ATTRIBUTES:
            self.add(node, f"'{shown}' is not allowed (it {BLOCKED_ATTRIBUTES[name]})")
        elif from_import and self.stdlib_leak(name):
            self.add(node, f"'{shown}' is not allowed (it reaches the standard-library module '{name}')")
        elif from_import:
            for prefix, why in BLOCKED_MODULE_PREFIXES.items():
                if name.startswith(prefix):
                    self.add(node, f"'{shown}' is not allowed (it {why})")
        if not isinstance(node.ctx, ast.Load):
            self.check_store(node)

    def check_store(self, node: ast.Attribute | ast.Subscript) -> None:
        """Reject assigning to or deleting parts of imported modules (monkeypatching)."""
        root, through_call = _target_root(node)
        shown = f"'{_shown(node)}'"
        if isinstance(root, ast.Name) and root.id in self.imported:
            self.add(node, f"assigning to or deleting {shown} is not allowed (monkeypatching imported '{root.id}')")
        elif isinstance(root, ast.Name) and root.id in self.tainted:
            self.add(
                node,
                f"assigning to or deleting {shown} is not allowed "
                f"('{root.id}' may hold an imported module: monkeypatching)",
            )
        elif through_call and isinstance(node, ast.Attribute):
            self.add(
                node,
                "assigning to an attribute of a call's result is not allowed (it could monkeypatch a module)",
            )

    def check_handler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.check_identifier(node, node.name, "exception name")
        if node.type is None:
            self.add(node, "bare 'except:' is not allowed (it swallows the sandbox's signals; catch Exception)")
            return
        for part in ast.walk(node.type):
            name = getattr(part, "id", None) or getattr(part, "attr", None)
            if name in SIGNAL_EXCEPTIONS:
                self.add(
                    node,
                    f"'except {name}' is not allowed (it swallows the sandbox's signals; catch Exception)",
                )
            elif not isinstance(part, (ast.Name, ast.Attribute, ast.Tuple, ast.expr_context)):
                self.add(node, "an except clause must name exception classes directly (e.g. except ValueError)")
                return

    def check_finally(self, node: ast.stmt) -> None:
        """'return', 'break' or 'continue' in a finally block silently drops any exception."""
        stack: list[tuple[ast.AST, bool]] = [(stmt, False) for stmt in getattr(node, "finalbody", [])]
        while stack:
            current, in_loop = stack.pop()
            if isinstance(current, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                continue
            if isinstance(current, ast.Return) or (isinstance(current, (ast.Break, ast.Continue)) and not in_loop):
                keyword = type(current).__name__.lower()
                self.add(
                    current,
                    f"'{keyword}' inside 'finally' is not allowed (it swallows the sandbox's signals)",
                )
            for child in ast.iter_child_nodes(current):
                # a loop's body may break out of that loop; its else clause may not
                inside = isinstance(current, (ast.For, ast.While, ast.AsyncFor)) and child in current.body
                stack.append((child, in_loop or inside))
