"""``discovery export``: discovered functions as a plain importable Python module (or JSON).

``export(db, ...)`` reads the archive read-only, chooses candidates (``select``), renames each
candidate's program into a shared module with safe unique names (``identifiers``,
``rename``) and renders it, verified, as Python or JSON (``module``). ``program`` cuts one
function back out of such a module for ``discovery evaluate --function``.
"""

from __future__ import annotations

from pathlib import Path

from discovery.export.module import Bundle, prepare, render_json, render_module
from discovery.export.program import program_for_function
from discovery.export.select import Chosen, ExportError, choose

__all__ = [
    "Bundle",
    "Chosen",
    "ExportError",
    "choose",
    "export",
    "load_task_of",
    "prepare",
    "program_for_function",
    "render_json",
    "render_module",
]

FORMATS = ("py", "json")


def load_task_of(chosen: list[Chosen]):  # noqa: ANN201 - a discovery.tasks.Task
    """The task of the chosen candidates (by the reference their run used, else by name)."""
    from discovery.tasks import TaskNotFound, get_task

    names = sorted({c.task for c in chosen})
    if len(names) != 1:
        raise ExportError(f"the candidates belong to several tasks ({', '.join(names)}); export one task at a time")
    for ref in dict.fromkeys([chosen[0].task_ref, chosen[0].task]):
        try:
            task = get_task(ref)
        except TaskNotFound:
            continue
        except Exception as exc:  # a broken task file
            raise ExportError(f"cannot load task {ref}: {type(exc).__name__}: {exc}") from None
        if task.name == names[0]:
            return task
    raise ExportError(f"cannot load task {names[0]!r} of the candidates (not built in, and its task file is gone)")


def export(
    db: str | Path,
    run_id: str | None = None,
    top: int | None = None,
    candidate_ids: tuple[str, ...] | list[str] = (),
    fmt: str = "py",
    task: str | None = None,
) -> tuple[str, list[tuple[str, Chosen]], list[str]]:
    """The exported text (a Python module or JSON), (export name, candidate) for each function,
    best first, and one line per candidate of ``top`` left out because the static policy rejects it.

    Raises ``ExportError`` with a one-line reason for anything a user can get wrong.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r} (use py or json)")
    chosen = choose(db, run_id=run_id, top=top, candidate_ids=tuple(candidate_ids), task=task)
    bundle = prepare(chosen, load_task_of(chosen), Path(db).name, skip_invalid=not candidate_ids)
    text = render_module(bundle) if fmt == "py" else render_json(bundle)
    return text, [(item.name, item.chosen) for item in bundle.items], bundle.skipped
