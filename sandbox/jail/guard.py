"""The run-time wall behind the static policy: candidate code that checks every attribute it reads.

:func:`compile_guarded` parses a candidate, refuses what must never run (generators, classes, async
code, ``match``, attribute assignment, double-underscore names, private attributes, bare
``except:``), rewrites every attribute read ``a.b`` into ``__guard_getattr__(a, "b")`` and returns
the code object with its globals: builtins cut down to :data:`ALLOWED_BUILTINS`, an ``__import__``
that imports only the vetted modules, and the guard under a double-underscore name, which a
candidate cannot write (the rewrite refuses such names, and so does the static policy).

The guard lets a read through only when the *actual* object is vetted and the name is on its
allow-list (see :func:`vetted`):

* the vetted modules, recognised by identity (``torch``, ``torch.nn.functional``, ``math``,
  torch's pure submodules ``special``, ``linalg`` and ``fft``; ``torch.nn`` only for its
  ``functional``, ``torch.autograd`` only for ``grad``, ``torch.func`` only for its transforms):
  their tensor-op functions, dtypes and constants, derived from the modules themselves minus
  deny-lists (files, global state, devices, threads, compilers, raw memory);
* tensors: the public names of ``torch.Tensor`` minus a deny-list (``storage``, ``data_ptr``,
  ``cuda``, hooks, ...); ``to`` keeps the tensor on its own device;
* plain numbers, strings and containers with their side-effect-free methods (``str.format`` and
  ``format_map`` are not among them: their fields read attributes; f-strings are fine, their
  fields are ordinary expressions that the rewrite guards);
* torch's dtypes, devices, ``Size``, ``finfo``/``iinfo`` and the named tuples ops return.

Everything else, such as a module reached through a call, a frame, a code object, a function, a
class or an exception, has no attribute a candidate may read. A refusal raises :class:`GuardError`
(a ``BaseException``, so ``except Exception`` cannot swallow it) with a one-line reason; the
runner adds the candidate's line. The static policy (:mod:`sandbox.static.policy`) uses the same
allow-list, and the name tables here, at parse time.
"""

from __future__ import annotations

import ast
import builtins
import functools
import sys
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

#: the name the rewritten code calls the guard by (double-underscore: no candidate can spell it)
GETATTR_NAME = "__guard_getattr__"

#: builtins a candidate may use (everything else, ``getattr``, ``type``, ``open``, ... is absent)
ALLOWED_BUILTINS = frozenset(
    {
        "abs", "all", "any", "bool", "bytearray", "bytes", "callable", "chr", "complex", "dict", "divmod",
        "enumerate", "filter", "float", "frozenset", "int", "isinstance", "iter", "len", "list", "map",
        "max", "min", "next", "ord", "pow", "print", "range", "repr", "reversed", "round", "set", "slice",
        "sorted", "str", "sum", "tuple", "zip",
        "ArithmeticError", "AssertionError", "Exception", "FloatingPointError", "IndexError", "KeyError",
        "LookupError", "NotImplementedError", "OverflowError", "RuntimeError", "StopIteration",
        "TypeError", "ValueError", "ZeroDivisionError",
    }
)  # fmt: skip

#: modules a candidate may hold and read vetted names from (the task's allowed imports narrow imports)
VETTED_MODULES = (
    "torch", "torch.nn", "torch.nn.functional", "torch.special", "torch.linalg", "torch.fft",
    "torch.autograd", "torch.func", "math",
)  # fmt: skip

#: vetted modules whose allow-list is written out here instead of derived from the module
FIXED_MODULE_NAMES: dict[str, frozenset[str]] = {
    "torch.nn": frozenset({"functional"}),
    "torch.autograd": frozenset({"grad"}),
    "torch.func": frozenset({"grad", "grad_and_value", "vmap", "jacrev", "jacfwd", "hessian", "vjp", "jvp"}),
}

#: Python functions defined in these modules are tensor ops (torch's own, re-exported in torch.*)
FUNCTIONAL_MODULES = frozenset({"torch.functional", "torch._lowrank", "torch.nn.functional"})

#: other Python functions of the torch namespace that are plain queries or tensor ops
TORCH_EXTRA_FUNCTIONS = frozenset({"is_tensor", "is_storage", "typename", "vmap", "get_default_device"})

#: torch classes a candidate may hold (construct, pass to isinstance); their own attributes stay closed
VETTED_CLASSES = frozenset(
    {"Tensor", "Size", "dtype", "device", "finfo", "iinfo", "no_grad", "enable_grad", "inference_mode", "LinAlgError"}
)

#: names rejected wherever they appear, as a variable or as an attribute
FORBIDDEN_NAMES = frozenset(
    {
        "exec", "eval", "compile", "open", "__import__", "globals", "locals", "vars",
        "getattr", "setattr", "delattr", "breakpoint", "input", "memoryview", "help",
        "exit", "quit", "license", "credits", "copyright", "dir", "type", "object", "super",
        "os", "sys", "subprocess", "socket", "shutil", "builtins", "importlib", "ctypes",
        "pickle", "marshal", "signal", "threading", "multiprocessing", "inspect", "gc",
    }
)  # fmt: skip

#: attribute names that lead (from torch, F or numpy) to files, processes, compilers or global state
BLOCKED_ATTRIBUTES: dict[str, str] = {
    "load": "reads and unpickles files",
    "save": "writes files",
    "from_file": "reads files",
    "tofile": "writes files",
    "serialization": "reads and writes files",
    "package": "imports packaged code",
    "hub": "downloads and runs code",
    "utils": "reaches cpp_extension and data loaders",
    "cpp": "reaches the C++ API",
    "ops": "reaches the raw operator registry",
    "library": "registers native operators",
    "classes": "reaches TorchScript classes",
    "jit": "compiles code",
    "compiler": "compiles code",
    "fx": "generates and executes code",
    "export": "traces and writes programs",
    "onnx": "writes model files",
    "profiler": "writes trace files",
    "distributed": "opens network connections",
    "backends": "changes global backend flags",
    "cuda": "controls devices; the harness picks the device",
    "mps": "controls devices; the harness picks the device",
    "xpu": "controls devices; the harness picks the device",
    "mtia": "controls devices; the harness picks the device",
    "manual_seed": "changes the global random state; the harness seeds",
    "seed": "changes the global random state; the harness seeds",
    "use_deterministic_algorithms": "changes global torch state",
    "numpy": "leaves torch for numpy, whose file and pickle APIs are not vetted",
    "np": "leaves torch for numpy, whose file and pickle APIs are not vetted",
}

#: module attributes refused by name, with the reason (on top of BLOCKED_ATTRIBUTES)
MODULE_DENIED: dict[str, str] = {
    "fork": "starts TorchScript tasks on other threads",
    "wait": "waits on TorchScript tasks of other threads",
    "init_num_threads": "changes torch's thread pools",
    "frombuffer": "reads raw memory buffers",
    "to_dlpack": "exports raw memory",
    "get_device_module": "returns a device module",
    "get_file_path": "reads the file system layout",
    "prepare_multiprocessing_environment": "starts multiprocessing",
    "default_generator": "is the global random state; the harness seeds",
    "get_rng_state": "reads the global random state",
    "initial_seed": "reads the global random state",
    "classproperty": "builds classes",
    "cond": "is a compiler control-flow operator",
    "while_loop": "is a compiler control-flow operator",
    "merge_type_from_type_comment": "is a TorchScript internal",
    "unify_type_list": "is a TorchScript internal",
    "has_torch_function": "is torch-function dispatch machinery",
    "has_torch_function_unary": "is torch-function dispatch machinery",
    "has_torch_function_variadic": "is torch-function dispatch machinery",
    "handle_torch_function": "is torch-function dispatch machinery",
    "boolean_dispatch": "is torch-function dispatch machinery",
}

#: prefixes of module attribute names refused, with the reason
MODULE_DENIED_PREFIXES: dict[str, str] = {
    "set_": "changes global torch state such as threads, dtype or grad mode",
    "register_": "installs a global hook",
    "autocast": "changes the global autocast state",
    "clear_autocast": "changes the global autocast state",
    "from_": "reads files, buffers or foreign memory",
    "import_ir": "parses TorchScript",
    "parse_": "parses TorchScript",
    "sparse_": "builds sparse tensors whose indices are not checked",
    "sym_": "is a symbolic-shape internal of the compiler",
    "as_strided": "views memory through raw strides and offsets",
    "fbgemm_": "calls a backend-specific kernel directly",
    "mkldnn_": "calls a backend-specific kernel directly",
    "miopen_": "calls a backend-specific kernel directly",
    "cudnn_": "calls a backend-specific kernel directly",
    "quantize": "calls a quantized kernel directly",
    "quantized_": "calls a quantized kernel directly",
    "fake_quantize": "calls a quantized kernel directly",
    "fused_moving_avg": "calls a quantized kernel directly",
}

#: public tensor attributes refused, with the reason
TENSOR_DENIED: dict[str, str] = {
    "storage": "reaches the tensor's raw storage, and through it files and shared memory",
    "untyped_storage": "reaches the tensor's raw storage, and through it files and shared memory",
    "storage_type": "reaches the storage classes",
    "data_ptr": "exposes raw memory addresses",
    "set_": "replaces the tensor's storage",
    "new": "is the legacy constructor that accepts raw storages",
    "as_strided": "views memory through raw strides and offsets",
    "as_strided_": "views memory through raw strides and offsets",
    "as_strided_scatter": "views memory through raw strides and offsets",
    "share_memory_": "shares memory with other processes",
    "pin_memory": "pins host memory for devices",
    "record_stream": "reaches device streams",
    "numpy": "leaves torch for numpy, whose file and pickle APIs are not vetted",
    "register_hook": "installs a hook",
    "register_post_accumulate_grad_hook": "installs a hook",
    "grad_fn": "reaches the autograd graph's nodes, their hooks and saved tensors",
    "backward": "runs autograd; the harness does",
    "as_subclass": "changes the tensor's Python class",
    "module_load": "loads state into modules",
    "type": "resolves type names and moves tensors between devices (use .to(dtype))",
    "cpu": "moves the tensor to another device; the harness picks the device (use x.device)",
    "cuda": "moves the tensor to another device; the harness picks the device (use x.device)",
    "xpu": "moves the tensor to another device; the harness picks the device (use x.device)",
    "mps": "moves the tensor to another device; the harness picks the device (use x.device)",
    "ipu": "moves the tensor to another device; the harness picks the device (use x.device)",
    "hpu": "moves the tensor to another device; the harness picks the device (use x.device)",
    "mtia": "moves the tensor to another device; the harness picks the device (use x.device)",
}

#: prefixes of public tensor attributes refused, with the reason
TENSOR_DENIED_PREFIXES: dict[str, str] = {
    "to_sparse": "builds sparse tensors, whose index tensors can be rewritten without bounds checks",
    "sparse_": "resizes or masks sparse tensors, whose indices are not checked",
    "resize_as_sparse": "resizes sparse tensors, whose indices are not checked",
    "to_mkldnn": "converts to a backend-specific layout",
}

#: attribute-name prefixes of frames, code objects, tracebacks, generators and coroutines
FRAME_PREFIXES = ("gi_", "f_", "co_", "tb_", "cr_", "ag_")
FRAME_REASON = "frames, code objects and tracebacks reach the interpreter's internals"
FORMAT_REASON = "format fields read attributes and items of the arguments; use an f-string"

_INT = frozenset(
    {
        "bit_length",
        "bit_count",
        "conjugate",
        "denominator",
        "numerator",
        "real",
        "imag",
        "as_integer_ratio",
        "is_integer",
    }
)
_FLOAT = frozenset({"as_integer_ratio", "conjugate", "imag", "is_integer", "real"})
_STR = frozenset(
    {
        "capitalize",
        "casefold",
        "center",
        "count",
        "endswith",
        "expandtabs",
        "find",
        "index",
        "isalnum",
        "isalpha",
        "isascii",
        "isdecimal",
        "isdigit",
        "isidentifier",
        "islower",
        "isnumeric",
        "isprintable",
        "isspace",
        "istitle",
        "isupper",
        "join",
        "ljust",
        "lower",
        "lstrip",
        "partition",
        "removeprefix",
        "removesuffix",
        "replace",
        "rfind",
        "rindex",
        "rjust",
        "rpartition",
        "rsplit",
        "rstrip",
        "split",
        "splitlines",
        "startswith",
        "strip",
        "swapcase",
        "title",
        "upper",
        "zfill",
    }
)
_LIST = frozenset({"append", "clear", "copy", "count", "extend", "index", "insert", "pop", "remove", "reverse", "sort"})
_TUPLE = frozenset({"count", "index"})
_DICT = frozenset({"clear", "copy", "get", "items", "keys", "pop", "popitem", "setdefault", "update", "values"})
_SET = frozenset(
    {
        "add",
        "clear",
        "copy",
        "difference",
        "difference_update",
        "discard",
        "intersection",
        "intersection_update",
        "isdisjoint",
        "issubset",
        "issuperset",
        "pop",
        "remove",
        "symmetric_difference",
        "symmetric_difference_update",
        "union",
        "update",
    }
)
#: plain Python types and the attributes a candidate may read on their instances
PLAIN_ATTRIBUTES: dict[type, frozenset[str]] = {
    int: _INT, bool: _INT, float: _FLOAT, complex: frozenset({"conjugate", "imag", "real"}),
    str: _STR, list: _LIST, tuple: _TUPLE, dict: _DICT, set: _SET,
    frozenset: _SET & {"copy", "difference", "intersection", "isdisjoint", "issubset", "issuperset",
                       "symmetric_difference", "union"},
    range: frozenset({"count", "index", "start", "step", "stop"}), slice: frozenset({"start", "step", "stop"}),
}  # fmt: skip


class GuardError(BaseException):
    """A candidate reached for something the guard refuses (not an ``Exception``: it cannot be caught)."""


class GuardRefusal(SyntaxError):
    """A candidate contains a construct the guarded compiler refuses (reported like a syntax error)."""

    def __str__(self) -> str:
        return str(self.msg)


@dataclass(frozen=True)
class Vetted:
    """The allow-list, built from the installed torch: what a candidate may read, per object."""

    modules: dict[str, Any]  # path -> module object
    module_names: dict[str, frozenset[str]]  # path -> attribute names a candidate may read
    by_id: dict[int, str]  # id(module) -> path
    tensor: frozenset[str]  # attribute names of tensors
    types: dict[type, frozenset[str]]  # plain Python and torch value types -> attribute names
    return_fields: frozenset[str]  # field names of torch.return_types named tuples
    any_value: frozenset[str]  # every name some vetted non-module value allows (for parse time)


def _denied_module_name(name: str) -> str | None:
    """Why a module attribute is refused by its name alone (None when the name is not denied)."""
    if name.startswith("_"):
        return "private attributes reach torch internals"
    if name in FORBIDDEN_NAMES:
        return f"'{name}' is a forbidden name"
    if name in BLOCKED_ATTRIBUTES:
        return f"it {BLOCKED_ATTRIBUTES[name]}"
    if name in MODULE_DENIED:
        return f"it {MODULE_DENIED[name]}"
    for prefix, why in MODULE_DENIED_PREFIXES.items():
        if name.startswith(prefix):
            return f"it {why}"
    return None


def _vetted_value(path: str, name: str, value: Any, torch: Any) -> bool:
    """Whether ``value`` (the attribute ``name`` of module ``path``) is something a candidate may hold."""
    if isinstance(value, types.BuiltinFunctionType):
        return True
    if isinstance(value, types.FunctionType):
        return value.__module__ in FUNCTIONAL_MODULES or (path == "torch" and name in TORCH_EXTRA_FUNCTIONS)
    if isinstance(value, type):
        return name in VETTED_CLASSES
    if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
        return True
    return isinstance(value, float) or value is None  # pi, e, inf, nan, newaxis


def _module_names(path: str, module: Any, torch: Any) -> frozenset[str]:
    if path in FIXED_MODULE_NAMES:
        return FIXED_MODULE_NAMES[path]
    names = set()
    for name, value in vars(module).items():
        if _denied_module_name(name) is None and _vetted_value(path, name, value, torch):
            names.add(name)
    if path == "torch":  # the vetted submodules are reached through torch
        names |= {p.split(".")[1] for p in VETTED_MODULES if p.startswith("torch.")}
    return frozenset(names)


@functools.cache
def vetted() -> Vetted:
    """The allow-list, derived once per process from the installed torch and math."""
    import importlib

    import torch
    import torch.return_types

    modules = {path: importlib.import_module(path) for path in VETTED_MODULES}
    module_names = {path: _module_names(path, module, torch) for path, module in modules.items()}
    denied = TENSOR_DENIED.keys() | BLOCKED_ATTRIBUTES.keys() | FORBIDDEN_NAMES
    tensor = frozenset(
        n for n in dir(torch.Tensor) if not n.startswith("_") and n not in denied and _tensor_denial(n) is None
    )
    torch_types = {
        torch.Size: _TUPLE | {"numel"},
        torch.dtype: frozenset({"is_complex", "is_floating_point", "is_signed", "itemsize", "to_complex", "to_real"}),
        torch.device: frozenset({"index", "type"}),
        torch.finfo: frozenset({"bits", "dtype", "eps", "max", "min", "resolution", "smallest_normal", "tiny"}),
        torch.iinfo: frozenset({"bits", "dtype", "max", "min"}),
    }
    fields: set[str] = set()
    for kind in vars(torch.return_types).values():
        if isinstance(kind, type) and kind.__module__ == "torch.return_types":
            fields.update(getattr(kind, "__match_args__", ()))
    all_types = {**PLAIN_ATTRIBUTES, **torch_types}
    any_value = frozenset(tensor.union(fields, *all_types.values()))
    return Vetted(
        modules=modules,
        module_names=module_names,
        by_id={id(m): p for p, m in modules.items()},
        tensor=tensor,
        types=all_types,
        return_fields=frozenset(fields),
        any_value=any_value,
    )


# -- decisions ---------------------------------------------------------------------------------


def _tensor_denial(name: str) -> str | None:
    """Why the tensor attribute ``name`` is refused by the deny-lists (None: not denied there)."""
    if name in TENSOR_DENIED:
        return f"it {TENSOR_DENIED[name]}"
    for prefix, why in TENSOR_DENIED_PREFIXES.items():
        if name.startswith(prefix):
            return f"it {why}"
    return None


def _kind_text(kind: type) -> str:
    return f"a {kind.__name__}" if kind.__module__ == "builtins" else f"a {kind.__module__}.{kind.__name__}"


def _name_reason(name: str) -> str | None:
    """A reason that holds for ``name`` on any object (None: it depends on the object)."""
    if name.startswith("__") and name.endswith("__"):
        return "double-underscore names reach interpreter internals"
    if name.startswith("_"):
        return "private attributes reach interpreter and torch internals"
    if name.startswith(FRAME_PREFIXES):
        return FRAME_REASON
    if name in ("format", "format_map"):
        return FORMAT_REASON
    return None


def module_refusal(module: Any, name: str) -> str | None:
    """Why reading ``name`` from the module object ``module`` is refused (None: it is allowed)."""
    table = vetted()
    path = table.by_id.get(id(module))
    if path is None:
        shown = getattr(module, "__name__", "?")
        return f"module '{shown}' is not vetted (vetted: {', '.join(VETTED_MODULES)})"
    if name in table.module_names[path]:
        return None
    why = _name_reason(name) or _denied_module_name(name)
    if why is None:
        value = vars(module).get(name)
        if isinstance(value, types.ModuleType):
            why = f"'{path}.{name}' is a module that is not vetted"
        else:
            why = f"not a vetted tensor op of '{path}'"
    return why


def type_verdict(kind: type, name: str) -> Literal[True] | str | Callable[[Any], Any]:
    """The guard's decision for reading ``name`` on an instance of ``kind`` (not a module): True,
    a reason for refusing, or a function that builds a checked replacement from the object."""
    import torch

    table = vetted()
    why = _name_reason(name)
    if why is not None:
        return why
    if issubclass(kind, torch.Tensor):
        if name == "to":
            return _checked_to
        if name in table.tensor:
            return True
        return _tensor_denial(name) or f"not a vetted attribute of {_kind_text(kind)}"
    allowed = table.types.get(kind)
    if allowed is None and kind.__module__ == "torch.return_types":
        allowed = frozenset(getattr(kind, "__match_args__", ()))
    if allowed is None and issubclass(kind, type):
        return "attributes of classes are not allowed (their methods and namespaces reach everything)"
    if allowed is None:
        return (
            "only tensors, numbers, strings, containers and torch's dtypes, devices and sizes have readable attributes"
        )
    return True if name in allowed else f"not a vetted attribute of {_kind_text(kind)}"


def refusal(obj: Any, name: str) -> str | None:
    """Why reading ``obj.name`` is refused, or None when the guard allows it (uncached)."""
    if isinstance(obj, types.ModuleType):
        return module_refusal(obj, name)
    verdict = type_verdict(type(obj), name)
    return verdict if isinstance(verdict, str) else None


def name_refusal(name: str) -> str | None:
    """Why ``x.name`` is refused whatever ``x`` is (None: some vetted non-module object allows it)."""
    why = _name_reason(name)
    if why is not None:
        return why
    if name in vetted().any_value:
        return None
    return (
        _tensor_denial(name)
        or _denied_module_name(name)
        or "not an attribute of a tensor, number, string, container, dtype, device or size"
    )


def what(obj: Any) -> str:
    """``module 'torch'``, ``a Tensor``, ``a generator``: how a refusal names the object."""
    if isinstance(obj, types.ModuleType):
        return f"module '{getattr(obj, '__name__', '?')}'"
    if isinstance(obj, type):
        return f"the class '{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}'"
    return _kind_text(type(obj))


def _checked_to(tensor: Any) -> Callable[..., Any]:
    """``tensor.to`` that refuses to move the tensor to another device (dtypes and tensors are fine)."""
    import torch

    method, home = tensor.to, tensor.device

    def to(*args: Any, **kwargs: Any) -> Any:
        for value in (*args, kwargs.get("device")):
            if value is None or isinstance(value, (bool, torch.dtype, torch.Tensor)):
                continue
            if isinstance(value, (str, int, torch.device)):
                try:
                    target = torch.device(value)
                except (RuntimeError, TypeError, ValueError) as exc:
                    raise GuardError(f"'to' with the device {value!r} is not allowed ({exc})") from None
                if target.type != home.type or (target.index is not None and target.index != home.index):
                    raise GuardError(
                        f"'to({value!r})' is not allowed (it moves a tensor on {home} to another "
                        "device; the harness picks the device, use x.device)"
                    )
        return method(*args, **kwargs)

    return to


def make_getattr() -> Callable[[Any, str], Any]:
    """The guard the rewritten code calls for every ``a.b``: decisions cached per (type, name)."""
    table = vetted()
    module_type = types.ModuleType
    module_names = {id(m): table.module_names[p] for p, m in table.modules.items()}
    verdicts: dict[tuple[type, str], Any] = {}

    def guard_getattr(obj: Any, name: str) -> Any:
        kind = type(obj)
        if kind is module_type:
            allowed = module_names.get(id(obj))
            if allowed is not None and name in allowed:
                return getattr(obj, name)
            raise GuardError(f"'{name}' of {what(obj)} is not allowed ({module_refusal(obj, name)})")
        verdict = verdicts.get((kind, name))
        if verdict is None:
            verdict = verdicts[(kind, name)] = type_verdict(kind, name)
        if verdict is True:
            return getattr(obj, name)
        if isinstance(verdict, str):
            raise GuardError(f"'{name}' of {what(obj)} is not allowed ({verdict})")
        return verdict(obj)

    return guard_getattr


def importable(allowed_imports: Iterable[str]) -> frozenset[str]:
    """The vetted module paths that ``allowed_imports`` (a task's allowed imports) let a candidate import."""
    allowed = tuple(allowed_imports)
    return frozenset(p for p in VETTED_MODULES if any(p == a or p.startswith(a + ".") for a in allowed))


def make_import(allowed_imports: Iterable[str]) -> Callable[..., Any]:
    """An ``__import__`` that imports only vetted modules under ``allowed_imports``, and from them
    only names on their allow-lists."""
    paths = importable(allowed_imports)
    real_import = builtins.__import__
    shown = ", ".join(sorted(paths))

    def guarded_import(
        name: str, globals: Any = None, locals: Any = None, fromlist: Sequence[str] | None = (), level: int = 0
    ) -> Any:
        if level:
            raise GuardError("relative imports are not allowed")
        if name not in paths:
            raise GuardError(f"import of '{name}' is not allowed (allowed: {shown})")
        module = real_import(name, None, None, fromlist, 0)
        target = sys.modules[name]
        for item in fromlist or ():
            why = module_refusal(target, item)
            if why is not None:
                raise GuardError(f"import of '{name}.{item}' is not allowed ({why})")
        return module

    return guarded_import


# -- the rewrite -------------------------------------------------------------------------------


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


#: constructs the guarded compiler refuses outright, with the reason
_REFUSED_NODES: dict[type, str] = {
    ast.ClassDef: "class definitions are not allowed",
    ast.AsyncFunctionDef: "async code is not allowed",
    ast.AsyncFor: "async code is not allowed",
    ast.AsyncWith: "async code is not allowed",
    ast.Await: "async code is not allowed",
    ast.Yield: "'yield' is not allowed (generators expose their frames)",
    ast.YieldFrom: "'yield from' is not allowed (generators expose their frames)",
    ast.GeneratorExp: "generator expressions are not allowed (generators expose their frames; use a list)",
    ast.Global: "'global' statements are not allowed",
    ast.Nonlocal: "'nonlocal' statements are not allowed",
    ast.Match: "'match' statements are not allowed (class patterns read attributes unguarded)",
}


def _identifiers(node: ast.AST) -> Iterable[str]:
    """The identifiers a node introduces or reads by name."""
    if isinstance(node, ast.Name):
        yield node.id
    elif isinstance(node, ast.arg):
        yield node.arg
    elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
        yield node.name
    elif isinstance(node, ast.alias):
        yield from node.name.split(".")
        if node.asname:
            yield node.asname
    elif isinstance(node, ast.ExceptHandler) and node.name:
        yield node.name
    elif isinstance(node, ast.keyword) and node.arg:
        yield node.arg


def _refusal_in(tree: ast.AST) -> tuple[ast.AST, str] | None:
    """The first construct (in source order) that the guarded compiler refuses, and why."""
    found: list[tuple[int, int, str, ast.AST]] = []

    def add(node: ast.AST, reason: str) -> None:
        found.append((getattr(node, "lineno", 1), getattr(node, "col_offset", 0), reason, node))

    for node in ast.walk(tree):
        reason = _REFUSED_NODES.get(type(node))
        if reason is not None:
            add(node, reason)
        for name in _identifiers(node):
            if _is_dunder(name):
                add(node, f"name '{name}' is not allowed (double-underscore names reach interpreter internals)")
        if isinstance(node, ast.Attribute):
            if node.attr.startswith("_"):
                add(node, f"attribute '{node.attr}' is not allowed (private attributes reach internals)")
            if not isinstance(node.ctx, ast.Load):
                add(node, f"assigning to or deleting the attribute '{node.attr}' is not allowed")
        elif isinstance(node, ast.ExceptHandler) and node.type is None:
            add(node, "bare 'except:' is not allowed (catch Exception)")
        elif isinstance(node, ast.ImportFrom) and node.level:
            add(node, "relative imports are not allowed")
    if not found:
        return None
    line, col, reason, node = min(found, key=lambda f: (f[0], f[1]))
    return node, reason


class _Rewriter(ast.NodeTransformer):
    """``a.b`` (a read) becomes ``__guard_getattr__(a, "b")`` at the same source position."""

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        value = self.visit(node.value)
        call = ast.Call(func=ast.Name(GETATTR_NAME, ast.Load()), args=[value, ast.Constant(node.attr)], keywords=[])
        return ast.copy_location(call, node)


def guarded_globals(allowed_imports: Iterable[str] = ("torch", "torch.nn.functional", "math")) -> dict[str, Any]:
    """Globals for guarded code: the cut-down builtins, the guarded import, and the guard itself."""
    safe = {name: getattr(builtins, name) for name in ALLOWED_BUILTINS}
    safe["__import__"] = make_import(allowed_imports)
    return {"__builtins__": safe, GETATTR_NAME: make_getattr()}


def compile_guarded(
    source: str, filename: str, allowed_imports: Iterable[str] = ("torch", "torch.nn.functional", "math")
) -> tuple[types.CodeType, dict[str, Any]]:
    """Compile a candidate so that every attribute read is checked at run time.

    Returns the code object and the globals to run it in (copy them for each run). Raises
    SyntaxError for a source that does not parse and :class:`GuardRefusal` (a SyntaxError, naming
    the line) for a construct the guard refuses outright.
    """
    tree = ast.parse(source, filename)
    refused = _refusal_in(tree)
    if refused is not None:
        node, reason = refused
        lines = source.splitlines()
        line = getattr(node, "lineno", 1)
        text = lines[line - 1] if 0 < line <= len(lines) else ""
        raise GuardRefusal(reason, (filename, line, getattr(node, "col_offset", 0) + 1, text))
    tree = ast.fix_missing_locations(_Rewriter().visit(tree))
    code = compile(tree, filename, "exec", dont_inherit=True)
    return code, guarded_globals(allowed_imports)
