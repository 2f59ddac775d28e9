"""The version of a task: a short hash of everything a stored score depends on but the candidate.

An evaluation is a pure function of (the task and its version, the candidate's normalized code,
the suite, the configuration, the seed, the device kind, and, for the held-out suite, the
archive's secret, one per archive). The archive reuses a stored result when all of these agree
(:meth:`discovery.archive.Archive.reusable`); :func:`task_version` is the part that says "the
same task": it changes whenever the task's code or settings change.

It hashes, in this order:

* the task's own code: for a built-in task the whole package directory of its class
  (``discovery/tasks/<name>/*.py``: task, environment, data, baselines); for a user's task file
  (``task.ref``) that file; and the file of any other class in the task's MRO (a subclass
  defined elsewhere). A user task file's sibling modules are not followed;
* the shared trusted code a score goes through (:data:`SHARED_MODULES`, each with why);
* the task's settings as values: its suites (configurations with their params and weights,
  seeds), ``training_seconds``, ``max_output_elements`` and the slot, so that a task object
  changed at run time (a suite with other params) gets another version;
* the versions of Python, torch, numpy and scikit-learn, whose numerics and bundled datasets
  the trainings rely on.

Sources are compared as syntax trees without docstrings (``ast.dump``: no comments, no
formatting, no line numbers), so that editing a comment or a docstring keeps every stored
result, while any change of code does not. A file that does not parse is hashed as bytes. Files
are read through ``importlib.resources`` and modules' ``__file__``, so this works the same from an
installed wheel; the package's own version number is not needed (its sources are hashed).

Left out on purpose: the orchestration that only moves data or refuses a job (the sandbox hosts,
``discovery.trainer_process``, the jail's walls in ``sandbox.jail.runner``/``confine``/``template``,
the static policy, which every candidate passes again before it is evaluated or reused): a change
there makes a job fail or pass, never changes a value it computes.
"""

from __future__ import annotations

import ast
import hashlib
import sys
import threading
import weakref
from collections.abc import Iterator
from importlib import metadata, resources
from pathlib import Path

from discovery.tasks.base import Task

#: (module, why its code can change a stored score), hashed for every task
SHARED_MODULES: tuple[tuple[str, str], ...] = (
    ("discovery.tasks.base", "the trainers' shared helpers: env_seed, descend, contract checks, batching adapters"),
    ("discovery.training", "run_job: the contract check, then the trainings in order, each in a fresh session"),
    ("discovery.slots", "the trusted proxy of the jailed function: forward, backward, update rules"),
    ("discovery.evaluation", "inputs (prepare), the held-out salt, output checks and scoring per cell"),
    ("discovery.devices", "which device the trusted side prepares, trains and scores on"),
    ("sandbox.batching", "vmap, or one copy per training, in the jail"),
    ("sandbox.jail.function_server", "how the jail calls the candidate's function and takes its gradient"),
    ("sandbox.jail.guard", "what the candidate's code may do at run time: a tightened guard re-judges results"),
    ("sandbox.wire", "how tensors cross between the trainer and the jail (dtypes, shapes)"),
)

#: installed distributions whose versions are part of every task version
DISTRIBUTIONS = ("torch", "numpy", "scikit-learn")

#: hex digits kept of the sha256
LENGTH = 16

_cache: weakref.WeakKeyDictionary[Task, str] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def task_version(task: Task) -> str:
    """A short hash that changes when ``task``'s code or settings change (see the module docstring).

    Computed once per task object (tasks are stateless; their suites are fixed)."""
    with _lock:
        cached = _cache.get(task)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for label, part in _parts(task):
        digest.update(f"{label}\0{len(part)}\0".encode())
        digest.update(part)
    version = digest.hexdigest()[:LENGTH]
    with _lock:
        _cache[task] = version
    return version


def device_kind(device: str) -> str:
    """The kind of device a result was computed on, as stored results are matched: ``cpu`` or ``cuda``
    (any ``cuda:N``; the GPUs of one machine compute alike)."""
    return "cuda" if device.startswith("cuda") else "cpu"


def _parts(task: Task) -> Iterator[tuple[str, bytes]]:
    """(label, bytes) of everything hashed, in a fixed order."""
    for name, source in _task_sources(task):
        yield f"task:{name}", _normalized(source)
    for module, _why in SHARED_MODULES:
        yield f"shared:{module}", _normalized(_module_source(module))
    settings = {
        "suites": {name: repr(suite) for name, suite in sorted(task.suites().items())},
        "training_seconds": repr(task.training_seconds),
        "max_output_elements": repr(task.max_output_elements),
        "slot": repr(task.slot),
    }
    yield "settings", repr(sorted(settings.items())).encode()
    yield "environment", _environment().encode()


def _task_sources(task: Task) -> list[tuple[str, bytes]]:
    """(name, source) of the task's own code: its package, its file, its classes' modules."""
    found: dict[str, bytes] = {}
    ref = getattr(task, "ref", "")
    if isinstance(ref, str) and ref.endswith(".py"):
        found[f"file:{Path(ref).name}"] = Path(ref).read_bytes()
    for cls in type(task).__mro__:
        module = cls.__module__
        if module in ("builtins", "abc") or module in found:
            continue
        parts = module.split(".")
        if len(parts) >= 4 and parts[:2] == ["discovery", "tasks"]:  # a built-in task's package
            package = ".".join(parts[:-1])
            for entry in sorted(resources.files(package).iterdir(), key=lambda e: e.name):
                if entry.name.endswith(".py") and entry.is_file():
                    found[f"{package}/{entry.name}"] = entry.read_bytes()
            continue
        loaded = sys.modules.get(module)
        path = getattr(loaded, "__file__", None)
        if path and module not in {m for m, _ in SHARED_MODULES}:
            found[module] = Path(path).read_bytes()
    return sorted(found.items())


def _module_source(module: str) -> bytes:
    """The source of a module of this installation, read as a package resource."""
    package, _, leaf = module.rpartition(".")
    return resources.files(package).joinpath(f"{leaf}.py").read_bytes()


class _StripDocstrings(ast.NodeTransformer):
    def generic_visit(self, node: ast.AST) -> ast.AST:
        node = super().generic_visit(node)
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and _is_docstring(body[0]):
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
        return node


def _is_docstring(stmt: ast.AST) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def _normalized(source: bytes) -> bytes:
    """The source's syntax tree without docstrings (comments and layout never reach it); the bytes
    themselves when it does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return source
    return ast.dump(_StripDocstrings().visit(tree)).encode()


def _environment() -> str:
    versions = [f"python {sys.version_info.major}.{sys.version_info.minor}"]
    for name in DISTRIBUTIONS:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} absent")
    return "; ".join(versions)
