"""One function of a module (an exported one, say) as a candidate program for the sandbox.

``discovery evaluate FILE --function NAME`` evaluates NAME as the task's slot. The file may
hold several functions, adapters and classes the static policy rejects, so the program
that goes to the sandbox is cut out of it: the imports and top-level definitions NAME
needs (transitively), then a slot function that calls NAME. It then meets the same static
policy, contract check and sandbox as any candidate.
"""

from __future__ import annotations

import ast
from typing import Any

from discovery.export.select import ExportError

_DEFINITIONS = (ast.FunctionDef, ast.Assign, ast.AnnAssign, ast.Import, ast.ImportFrom)


def _defined(stmt: ast.stmt) -> set[str]:
    if isinstance(stmt, ast.FunctionDef):
        return {stmt.name}
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {a.asname or a.name.split(".")[0] for a in stmt.names}
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return set()


def _used(stmt: ast.stmt) -> set[str]:
    """Every name the statement mentions (a superset of the globals it needs)."""
    return {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name)}


def program_for_function(source: str, function: str, slot_name: str, signature: str) -> str:
    """A candidate program defining ``slot_name`` as a call of ``function`` from ``source``.

    Raises ``ExportError`` with a one-line reason when ``source`` does not parse or has no
    top-level function ``function``.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError) as exc:
        raise ExportError(f"cannot parse the file: {getattr(exc, 'msg', exc)}") from None
    functions = [s.name for s in tree.body if isinstance(s, ast.FunctionDef)]
    if function not in functions:
        have = ", ".join(n for n in functions if not n.startswith("_"))[:300]
        raise ExportError(f"no top-level function {function!r} in the file (have: {have or 'none'})")
    statements = [s for s in tree.body if isinstance(s, _DEFINITIONS)]
    needed = {function}
    keep: set[int] = set()
    changed = True
    while changed:
        changed = False
        for i, stmt in enumerate(statements):
            if i not in keep and _defined(stmt) & needed:
                keep.add(i)
                needed |= _used(stmt)
                changed = True
    imports = [s for i, s in enumerate(statements) if i in keep and isinstance(s, (ast.Import, ast.ImportFrom))]
    body = [s for i, s in enumerate(statements) if i in keep and not isinstance(s, (ast.Import, ast.ImportFrom))]
    if function != slot_name:
        body.append(_slot_wrapper(slot_name, signature, function, needed))
    module = ast.fix_missing_locations(ast.Module(body=[*imports, *body], type_ignores=[]))
    return ast.unparse(module) + "\n"


def _slot_wrapper(slot_name: str, signature: str, function: str, avoid: set[str]) -> ast.FunctionDef:
    """``def <slot>(<params>): return <function>(<params>)`` with the slot's positional parameters."""
    spec = ast.parse(signature.split("->")[0].rstrip() + ":\n    pass").body[0]
    assert isinstance(spec, ast.FunctionDef)
    params = []
    for a in [*spec.args.posonlyargs, *spec.args.args]:
        name = a.arg
        while name in avoid or name == slot_name:
            name += "_"
        params.append(name)
    # Python 3.12 added FunctionDef.type_params
    extra: dict[str, Any] = {"type_params": []} if "type_params" in ast.FunctionDef._fields else {}
    return ast.FunctionDef(
        name=slot_name,
        args=ast.arguments(
            posonlyargs=[],
            args=[ast.arg(arg=p) for p in params],
            vararg=None,
            kwonlyargs=[],
            kw_defaults=[],
            kwarg=None,
            defaults=[],
        ),
        body=[
            ast.Return(
                value=ast.Call(
                    func=ast.Name(id=function, ctx=ast.Load()),
                    args=[ast.Name(id=p, ctx=ast.Load()) for p in params],
                    keywords=[],
                )
            )
        ],
        decorator_list=[],
        returns=None,
        **extra,
    )
