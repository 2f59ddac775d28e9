"""Build the exported module (or its JSON twin) from chosen candidates, injection-proof by construction.

Nothing from the archive is ever formatted into code. The module is an ``ast.Module``:
each candidate's parsed program, with its top-level names renamed (``rename``), its slot
function's docstring set as an ``ast.Constant``, and metadata as literal nodes parsed from
``repr()`` of plain str/float/int/None values; ``ast.unparse`` writes it. The text is then
parsed again and must give exactly the tree that was built, bind exactly the expected
top-level names, and compile.
"""

from __future__ import annotations

import ast
import json
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from discovery.export.identifiers import export_names, is_safe_identifier, unique_identifier
from discovery.export.rename import HEADER_IMPORTS, MovedProgram, RenameError, move_program, original_docstring
from discovery.export.select import Chosen, ExportError
from discovery.tasks import Task
from sandbox.base import Status

HEADER_SOURCE = "import math\nimport torch\nimport torch.nn.functional as F\n"
REGISTRY = "REGISTRY"
METADATA = "METADATA"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass
class Exported:
    """One exported function: its name in the module, the candidate, its renamed program."""

    name: str
    chosen: Chosen
    program: MovedProgram
    docstring: str


@dataclass
class Bundle:
    """Everything an export writes, before rendering as Python or JSON."""

    task: Task
    items: list[Exported]
    adapter: list[ast.stmt]
    archive: str
    generated_at: str
    skipped: list[str]  # one line per candidate left out (``prepare(skip_invalid=True)``)


def clean_text(value: Any, limit: int = 4000) -> str:
    """Archive text made fit for a docstring: valid UTF-8, no control characters but newline and tab."""
    text = str(value).encode("utf-8", "replace").decode("utf-8")
    text = _CONTROL.sub(" ", text.replace("\r\n", "\n").replace("\r", "\n"))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def literal(value: Any) -> ast.expr:
    """An AST literal for a plain value, made by parsing its ``repr()`` and checked to evaluate back to it.

    Accepts str, bool, int, float (non-finite becomes None), None, and lists, tuples (as lists)
    and str-keyed dicts of those.
    """
    if isinstance(value, dict):
        return ast.Dict(keys=[literal(str(k)) for k in value], values=[literal(v) for v in value.values()])
    if isinstance(value, (list, tuple)):
        return ast.List(elts=[literal(v) for v in value], ctx=ast.Load())
    if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
        value = None
    if value is not None and not isinstance(value, (str, bool, int, float)):
        raise TypeError(f"not a plain value: {type(value).__name__}")
    if isinstance(value, str):
        value = clean_text(value, 100_000)
    node = ast.parse(repr(value), mode="eval").body
    if not isinstance(node, (ast.Constant, ast.UnaryOp)) or ast.literal_eval(node) != value:
        raise ValueError(f"repr of {type(value).__name__} is not its literal")
    return node


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _ci(ci: tuple[float | None, float | None]) -> str:
    low, high = ci
    return "" if low is None or high is None else f", 95% CI {_fmt(low)} to {_fmt(high)}"


def _seeds(seeds: Sequence[int]) -> str:
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}" + (f": {', '.join(map(str, seeds))}" if seeds else "")


def _status(c: Chosen) -> list[str]:
    """The status line(s): ``ok``, or the status a candidate stopped at, its reason, and what that means."""
    if c.status == Status.OK:
        return ["Status: ok (evaluated on the whole discover suite)"]
    reason = " ".join(clean_text(c.reason, 600).split()) or "no reason recorded"
    scores = "partial scores (the configurations and seeds it ran)" if c.fitness is not None else "no fitness"
    return textwrap.wrap(
        f"Status: {clean_text(c.status, 40)} ({reason}). Not a fully evaluated candidate: {scores}.", 96
    )


def docstring(c: Chosen, export_name: str, task: Task, own_doc: str | None) -> str:
    """The exported function's docstring: name, status (and reason when not ok), thought, fitness with
    CI, run, parents, date, and how to reproduce the score."""
    parents = ", ".join(f"{pid} ({clean_text(name, 80)})" if name else pid for pid, name in c.parents) or "none"
    heldout = (
        f"{_fmt(c.heldout_fitness)}{_ci(c.heldout_ci)} over {_seeds(c.heldout_seeds)}"
        if c.heldout_fitness is not None
        else "not evaluated"
    )
    n = len(c.seeds)
    standard = c.status == Status.OK and (list(task.suite("discover").with_seeds(n).seeds) == c.seeds if n else False)
    again = f"discovery evaluate THIS_FILE --function {export_name} --task {c.task_ref} --seeds {n}" if standard else ""
    lines = [
        f"{clean_text(c.name, 200) or '(unnamed)'}: discovered {task.slot.name} for task {c.task}"
        + (" (a baseline)" if c.is_baseline else "")
        + ".",
        "",
        *_status(c),
        *(
            textwrap.wrap("Thought: " + " ".join(clean_text(c.thought).split()), 96)
            if c.thought.strip()
            else ["Thought: (none recorded)"]
        ),
        "",
        f"Discover fitness: {_fmt(c.fitness)}{_ci(c.fitness_ci)} over {_seeds(c.seeds)}",
        f"Held-out fitness: {heldout}",
        f"Candidate: {c.id}, run {c.run_id}, generation {c.generation}, proposer {clean_text(c.proposer, 80)}",
        f"Parents: {parents}",
        f"Date: {c.date}",
    ]
    if again:
        lines.append(f"Reproduce: {again}")
    if own_doc and own_doc.strip() and " ".join(own_doc.split()) != " ".join(c.thought.split()):
        lines += ["", "Original docstring:", *clean_text(own_doc).strip().splitlines()]
    body = "\n".join(lines[:1] + [("    " + ln) if ln else "" for ln in lines[1:]])
    return body + "\n    "


def _top_names(body: list[ast.stmt]) -> set[str]:
    """The names top-level statements bind (functions, classes, imports, assignments)."""
    names: set[str] = set()
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            names.add(stmt.name)
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            names.update(a.asname or a.name.split(".")[0] for a in stmt.names)
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            for target in stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def _problem(c: Chosen, task: Task) -> str | None:
    """Why the candidate's code cannot be exported (the task's static policy rejects it), or None."""
    from discovery.evaluation import signature_problem
    from sandbox.static.policy import Policy, check_source

    violations = check_source(c.code, Policy(allowed_imports=task.slot.allowed_imports, slot_name=task.slot.name))
    if violations:
        return violations[0].one_line()
    problem = signature_problem(c.code, task.slot.name, task.slot.signature)
    return f"line {problem[0]}: {problem[1]}" if problem else None


def prepare(chosen: list[Chosen], task: Task, archive: str, skip_invalid: bool = False) -> Bundle:
    """Rename and document every chosen candidate.

    A candidate whose code the task's static policy rejects (a tampered archive, a stricter
    policy) raises ``ExportError``, or with ``skip_invalid`` is left out and named in ``skipped``.
    """
    tasks = sorted({c.task for c in chosen})
    if len(tasks) != 1:
        raise ExportError(f"the candidates belong to several tasks ({', '.join(tasks)}); export one task at a time")
    try:
        adapter = ast.parse(task.export_adapter()).body
    except SyntaxError as exc:
        raise ExportError(f"task {task.name}: its export adapter does not parse ({exc.msg})") from None
    skipped: list[str] = []
    usable = []
    for c in chosen:
        why = _problem(c, task)
        if why is None:
            usable.append(c)
        elif skip_invalid:
            skipped.append(f"{c.id}: the static policy rejects it ({why})")
        else:
            raise ExportError(f"candidate {c.id} does not pass the static policy ({why}); not exported")
    if not usable:
        raise ExportError(f"no candidate passes the static policy ({'; '.join(skipped)[:300]})")
    reserved = {*HEADER_IMPORTS, REGISTRY, METADATA, *_top_names(adapter)}
    slot = task.slot.name
    names = export_names([(c.name, c.id) for c in usable], reserved, prefix=slot if slot.isidentifier() else "fn")
    taken = reserved | set(names)
    items = []
    for c, name in zip(usable, names, strict=True):
        tree = ast.parse(c.code)
        doc = docstring(c, name, task, original_docstring(tree, slot))

        def helper_name(old: str, name: str = name) -> str:
            return unique_identifier(f"_{name}__{old}", taken)

        try:
            moved = move_program(tree, slot, name, helper_name, doc)
        except (RenameError, RecursionError) as exc:
            raise ExportError(f"candidate {c.id} cannot be exported: {exc}") from None
        items.append(Exported(name=name, chosen=c, program=moved, docstring=doc))
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Bundle(task=task, items=items, adapter=adapter, archive=archive, generated_at=now, skipped=skipped)


def metadata(item: Exported) -> dict[str, Any]:
    """The plain-data description of one exported function."""
    c = item.chosen
    return {
        "candidate": c.id,
        "name": c.name,
        "run": c.run_id,
        "task": c.task,
        "is_baseline": c.is_baseline,
        "fitness": c.fitness,
        "fitness_ci": list(c.fitness_ci),
        "seeds": list(c.seeds),
        "heldout_fitness": c.heldout_fitness,
        "heldout_ci": list(c.heldout_ci),
        "heldout_seeds": list(c.heldout_seeds),
        "parents": [pid for pid, _ in c.parents],
        "date": c.date,
        "proposer": c.proposer,
        "generation": c.generation,
        "thought": c.thought,
        "status": c.status,
        "reason": c.reason,
    }


def _module_doc(bundle: Bundle) -> str:
    task = bundle.task
    names = ", ".join(item.name for item in bundle.items)
    return (
        f"Discovered `{task.slot.name}` functions (task {task.name}) exported by `discovery` from "
        f"{clean_text(bundle.archive, 300)} on {bundle.generated_at}.\n\n"
        "Importing it needs only torch (an adapter built on another library, such as a TRL trainer,\n"
        "imports that library when first used). Each function has the slot's signature:\n\n"
        f"    {task.slot.signature}\n\n"
        f"Functions: {names}.\n{REGISTRY} maps each name to its function, {METADATA} to its scores and lineage;\n"
        "the adapters at the end make them usable where the field expects them.\n"
    )


def build_tree(bundle: Bundle) -> tuple[ast.Module, set[str]]:
    """The module's syntax tree and the top-level names it must bind."""
    header = ast.parse(HEADER_SOURCE).body
    body: list[ast.stmt] = [ast.Expr(value=ast.Constant(value=_module_doc(bundle))), *header]
    expected = {*HEADER_IMPORTS, REGISTRY, METADATA, *_top_names(bundle.adapter)}
    for item in bundle.items:
        body += item.program.imports
        expected |= set(item.program.mapping.values())
    for item in bundle.items:
        body += item.program.body
    registry = ast.Dict(
        keys=[literal(i.name) for i in bundle.items], values=[ast.Name(id=i.name, ctx=ast.Load()) for i in bundle.items]
    )
    body.append(ast.Assign(targets=[ast.Name(id=REGISTRY, ctx=ast.Store())], value=registry))
    meta = ast.Dict(keys=[literal(i.name) for i in bundle.items], values=[literal(metadata(i)) for i in bundle.items])
    body.append(ast.Assign(targets=[ast.Name(id=METADATA, ctx=ast.Store())], value=meta))
    body += bundle.adapter
    module = ast.Module(body=body, type_ignores=[])
    return ast.fix_missing_locations(module), expected


def _layout(module: ast.Module, n_head: int) -> str:
    """``ast.unparse`` statement by statement: the docstring, the imports together, then two blank
    lines between definitions (the caller checks that the text parses back to ``module``)."""
    parts = [ast.unparse(ast.Module(body=[stmt], type_ignores=[])) for stmt in module.body]
    return parts[0] + "\n" + "\n".join(parts[1:n_head]) + "\n\n\n" + "\n\n\n".join(parts[n_head:]) + "\n"


def render_module(bundle: Bundle) -> str:
    """The exported module's source, verified: it re-parses to the built tree, binds only the
    expected names, registers only safe identifiers, and compiles."""
    module, expected = build_tree(bundle)
    try:
        n_head = 1 + len(ast.parse(HEADER_SOURCE).body) + sum(len(i.program.imports) for i in bundle.items)
        text = _layout(module, n_head)
        reparsed = ast.parse(text)
        compile(reparsed, "<export>", "exec")
    except (SyntaxError, ValueError, RecursionError) as exc:
        raise ExportError(f"internal error: the generated module does not compile ({exc})") from None
    if ast.dump(reparsed) != ast.dump(module):
        raise ExportError("internal error: the generated module does not parse back to the tree that was built")
    bound = _top_names(reparsed.body)
    if bound != expected:
        raise ExportError(f"internal error: the generated module binds unexpected names {sorted(bound ^ expected)}")
    allowed = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.Assign, ast.AnnAssign, ast.ClassDef)
    adapter_start = len(reparsed.body) - len(bundle.adapter)
    for i, stmt in enumerate(reparsed.body):
        if i == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue
        if not isinstance(stmt, allowed) or (isinstance(stmt, ast.ClassDef) and i < adapter_start):
            raise ExportError(f"internal error: unexpected top-level {type(stmt).__name__} in the generated module")
    registry = next(
        s
        for s in reparsed.body
        if isinstance(s, ast.Assign) and isinstance(s.targets[0], ast.Name) and s.targets[0].id == REGISTRY
    )
    keys = [ast.literal_eval(k) for k in registry.value.keys]  # type: ignore[attr-defined]
    if keys != [i.name for i in bundle.items] or not all(is_safe_identifier(k) for k in keys):
        raise ExportError("internal error: the registry holds an unsafe name")
    return text


def function_source(item: Exported) -> str:
    """A standalone module with the header imports and one exported function (with its helpers)."""
    body = [*ast.parse(HEADER_SOURCE).body, *item.program.imports, *item.program.body]
    return ast.unparse(ast.fix_missing_locations(ast.Module(body=body, type_ignores=[]))) + "\n"


def render_json(bundle: Bundle) -> str:
    """The same content as data: per function its name, code and metadata."""
    functions = []
    for item in bundle.items:
        entry = {"function": item.name, **metadata(item)}
        entry["parents"] = [{"id": pid, "name": name} for pid, name in item.chosen.parents]
        entry["code"] = item.chosen.code  # the archived candidate: defines the slot, `discovery evaluate` runs it
        entry["source"] = function_source(item)  # the function as exported, standalone
        entry["docstring"] = item.docstring
        functions.append(entry)
    data = {
        "format": "discovery-export",
        "version": 1,
        "task": bundle.task.name,
        "slot": bundle.task.slot.name,
        "signature": bundle.task.slot.signature,
        "archive": bundle.archive,
        "generated_at": bundle.generated_at,
        "functions": functions,
    }
    return json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
