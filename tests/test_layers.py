"""The import layers of the project, read from the source with :mod:`ast` (nothing is imported).

* no import cycle between the modules of ``discovery/`` and ``sandbox/`` (imports inside
  functions count too: a lazy import that dodges a cycle at import time is still one);
* nothing in ``sandbox/`` imports ``discovery``;
* ``sandbox.jail`` (runs inside the jail) imports only the shared modules, ``sandbox.static`` and
  itself, never ``sandbox.host``; ``sandbox.host`` (the trusted side) never imports ``sandbox.jail``;
* the shared modules ``sandbox.base``, ``sandbox.text`` and ``sandbox.wire`` import no other
  sandbox module but each other, in one direction.

An edge goes from a module to what it imports: ``import a.b`` and ``from a.b import c`` (``c`` not a
submodule) to ``a.b``; ``from a import b`` to the submodule ``a.b`` when there is one. A package's
``__init__`` that imports its own submodules is therefore no cycle with them, unless one of them
imports names of the ``__init__`` back.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("discovery", "sandbox")
#: modules both sides of the sandbox share
SHARED = frozenset({"sandbox.base", "sandbox.batching", "sandbox.text", "sandbox.wire"})


@cache
def module_files(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Every module of ``packages`` by its dotted name (a package by its own name, for its ``__init__``)."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterable[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        children = list(ast.iter_child_nodes(node))
        if isinstance(node, ast.If) and _is_type_checking(node):
            children = node.orelse
        stack.extend(children)


def _base_package(modules: dict[str, Path], module: str, level: int) -> str:
    """The package a relative import of ``level`` dots in ``module`` starts from."""
    is_package = modules[module].name == "__init__.py"
    parts = module.split(".") if is_package else module.split(".")[:-1]
    return ".".join(parts[: len(parts) - (level - 1)])


@cache
def imports_of(module: str, root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> frozenset[str]:
    """The dotted names ``module`` imports (project modules or not), resolved as the module docstring says."""
    modules = module_files(root, packages)
    tree = ast.parse(modules[module].read_text(), str(modules[module]))
    targets: set[str] = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        source = node.module or ""
        if node.level:
            base = _base_package(modules, module, node.level)
            source = f"{base}.{source}" if source else base
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            targets.add(sub if sub in modules else source)
    targets.discard(module)
    return frozenset(targets)


def graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Project module -> the project modules it imports."""
    modules = module_files(root, packages)
    return {m: {t for t in imports_of(m, root, packages) if t in modules} for m in modules}


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    """One cycle of ``edges`` as ``[a, b, ..., a]``, or [] when there is none (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for start in sorted(edges):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return []


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _offending(modules: Iterable[str], allowed: Callable[[str, str], bool]) -> list[str]:
    """``"m imports t"`` for every import of ``modules`` that ``allowed(m, t)`` refuses."""
    return sorted(f"{m} imports {t}" for m in modules for t in imports_of(m) if not allowed(m, t))


def test_the_modules_are_found():
    modules = module_files()
    for name in (
        "discovery.cli",
        "sandbox.base",
        "sandbox.wire",
        "sandbox.jail.guard",
        "sandbox.host.local",
        "sandbox.static.policy",
    ):
        assert name in modules, name


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) == []


def test_an_init_importing_its_submodules_is_a_cycle_only_when_they_import_its_names(tmp_path: Path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from .a import A\nfrom pkg.b import B\n")
    (package / "a.py").write_text("from . import b\nA = 1\n")
    (package / "b.py").write_text("import pkg.c\nB = 2\n")
    (package / "c.py").write_text("def f():\n    from pkg import sub\n")
    (package / "sub").mkdir()
    (package / "sub" / "__init__.py").write_text("from .. import c\n")
    edges = graph(tmp_path, ("pkg",))
    assert edges == {
        "pkg": {"pkg.a", "pkg.b"},
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.c"},
        "pkg.c": {"pkg.sub"},
        "pkg.sub": {"pkg.c"},
    }
    assert find_cycle(edges) == ["pkg.c", "pkg.sub", "pkg.c"]  # the lazy import counts
    other = tmp_path / "other"
    other.mkdir()
    (other / "pkg").mkdir()
    (other / "pkg" / "__init__.py").write_text("from .a import A\n")
    (other / "pkg" / "a.py").write_text("from pkg import NAME\nA = 1\n")  # a name of the __init__: a cycle
    assert find_cycle(graph(other, ("pkg",))) == ["pkg", "pkg.a", "pkg"]


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_sandbox_never_imports_discovery():
    sandbox = [m for m in module_files() if _inside(m, "sandbox")]
    bad = _offending(sandbox, lambda m, t: not _inside(t, "discovery"))
    assert not bad, bad


def test_the_jail_imports_only_the_shared_modules_the_static_check_and_itself():
    jail = [m for m in module_files() if _inside(m, "sandbox.jail")]
    bad = _offending(
        jail,
        lambda m, t: (
            not _inside(t, "sandbox") or t in SHARED or _inside(t, "sandbox.jail") or _inside(t, "sandbox.static")
        ),
    )
    assert not bad, bad


def test_the_host_never_imports_the_jail():
    host = [m for m in module_files() if _inside(m, "sandbox.host")]
    bad = _offending(host, lambda m, t: not _inside(t, "sandbox.jail"))
    assert not bad, bad


def test_the_shared_modules_import_only_each_other_one_way():
    bad = _offending(SHARED, lambda m, t: not _inside(t, "sandbox") or t in SHARED)
    assert not bad, bad
    shared = {m: {t for t in imports_of(m) if t in SHARED} for m in SHARED}
    cycle = find_cycle(shared)
    assert not cycle, "the shared modules import each other both ways: " + " -> ".join(cycle)
