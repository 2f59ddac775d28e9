"""Task registry: built-in tasks by name, or a user's task file by path."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from discovery.tasks.base import (
    ContractError,
    SeedMetrics,
    Slot,
    Suite,
    SuiteConfig,
    Task,
    TrainingFailed,
)

__all__ = [
    "ContractError",
    "SeedMetrics",
    "Slot",
    "Suite",
    "SuiteConfig",
    "Task",
    "TaskNotFound",
    "TrainingFailed",
    "get_task",
    "task_names",
]

BUILTIN = {
    "preference": "discovery.tasks.preference.task",
    "classification": "discovery.tasks.classification.task",
    "optimizer": "discovery.tasks.optimizer.task",
}

_loaded: dict[str, Task] = {}


class TaskNotFound(LookupError):
    """No built-in task of that name and no task file at that path."""


def task_names() -> list[str]:
    """Names of the built-in tasks."""
    return sorted(BUILTIN)


def get_task(ref: str) -> Task:
    """A built-in task by name, or the ``TASK`` object of a Python file given by path."""
    if ref in _loaded:
        return _loaded[ref]
    if ref in BUILTIN:
        task = importlib.import_module(BUILTIN[ref]).TASK
    elif ref.endswith(".py"):
        path = Path(ref).resolve()
        if str(path) in _loaded:
            return _loaded[str(path)]
        if not path.is_file():
            raise TaskNotFound(f"task file {ref} does not exist")
        spec = importlib.util.spec_from_file_location(f"discovery_user_task_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        task = getattr(module, "TASK", None)
        if not isinstance(task, Task):
            raise TaskNotFound(f"task file {ref} defines no TASK = <a discovery.tasks.Task instance>")
        # what sandboxes are told to load: the file itself travels with each job (sandbox.host.jobfiles)
        task.ref = str(path)  # type: ignore[attr-defined]
        _loaded[str(path)] = task
    else:
        raise TaskNotFound(f"unknown task {ref!r} (built-in: {', '.join(task_names())}; or a path to a .py file)")
    _loaded[ref] = task
    return task
