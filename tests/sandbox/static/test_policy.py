"""Tests for the static policy (sandbox/static/policy.py): what passes, what is rejected, and where."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest

from sandbox.static.policy import Policy, Violation, check_source
from sandbox.text import annotate

POLICY = Policy()

DPO = '''import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """DPO."""
    logits = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * logits)
'''  # noqa: E501  (the task's reference program, verbatim)

HEADER = """import math
import torch
import torch.nn.functional as F


def loss(x):
"""
BODY_LINE = 7  # the first line of `body` inside program()


def program(body: str) -> str:
    """A candidate whose `loss` runs `body` (dedented) and returns x; body starts at BODY_LINE."""
    return HEADER + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ") + "\n    return x\n"


def reasons(source: str, policy: Policy = POLICY) -> list[str]:
    return [v.one_line() for v in check_source(source, policy)]


def assert_rejected(source: str, line: int, word: str, policy: Policy = POLICY) -> None:
    """Some violation sits on `line` and mentions `word`."""
    found = check_source(source, policy)
    assert any(v.line == line and word in v.reason for v in found), [v.one_line() for v in found]


# -- what passes -------------------------------------------------------------------------


def test_dpo_passes() -> None:
    assert check_source(DPO, POLICY) == []


def test_the_preference_task_baselines_pass() -> None:
    from discovery.tasks.preference.task import PreferenceTask

    baselines = PreferenceTask().baselines
    assert baselines
    for name, source in baselines.items():
        assert reasons(source) == [], name


def test_a_rich_but_harmless_program_passes() -> None:
    source = '''"""An update rule with helpers."""
import math
from math import exp
from torch import nn
from torch.nn import functional as G
from torch.nn.functional import logsigmoid
import torch
import torch.nn.functional as F

BETA: float = 0.1
PAIR = (1, 2.0)
SCALE = 2 * math.pi
EPS, TINY = 1e-8, -1e-30


def _helper(a, b=0.5, *, c=None):
    return a * b if c is None else c


def loss(x, y=BETA):
    """Everything here is allowed."""
    total = 0
    while total < 3:
        total += 1
    squares = [i * i for i in range(total)]
    table = {i: exp(-i) for i in squares}
    pick = lambda t: t.clamp(min=EPS)
    try:
        z = torch.log(pick(x))
    except (ValueError, RuntimeError) as err:
        raise ValueError("bad input") from err
    finally:
        total = 0
    with torch.no_grad():
        w = torch.zeros_like(x).chunk(1)[0]
    w[0] = 1.0
    g = torch.autograd.grad
    h = torch.func.grad
    n = nn.functional.relu(x) + G.softplus(x) + logsigmoid(x) + F.relu(x)
    assert isinstance(x, torch.Tensor)
    return _helper(z + n + w, SCALE) * table[0] * math.exp(-y) * (g is not h)
'''
    assert reasons(source) == []


# -- parsing and size --------------------------------------------------------------------


def test_syntax_error_names_its_line() -> None:
    assert_rejected("import torch\n\ndef loss(x):\n    return x +\n", 4, "syntax error:")


def test_compile_time_error_is_a_syntax_error() -> None:
    assert_rejected("import torch\nreturn 1\n\ndef loss(x):\n    return x\n", 2, "syntax error:")


@pytest.mark.parametrize("source", ["", "   \n\t\n"])
def test_empty_source_is_rejected(source: str) -> None:
    assert check_source(source, POLICY) == [Violation(1, 0, "source is empty")]


def test_source_over_the_limit_is_rejected() -> None:
    found = check_source(DPO, Policy(max_source_chars=100))
    assert len(found) == 1 and found[0].line == 1 and "too long" in found[0].reason


def test_long_string_literal_is_rejected() -> None:
    assert_rejected(program(f"s = '{'a' * 2001}'"), BODY_LINE, "string literal")
    assert reasons(program(f"s = '{'a' * 2000}'")) == []


# -- imports -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "import torch.nn.functional as F",
        "import torch.nn",
        "from torch import nn",
        "from torch.nn import functional as F",
        "from math import exp",
        "from torch.nn.functional import logsigmoid as ls",
    ],
)
def test_allowed_imports(statement: str) -> None:
    assert reasons(f"{statement}\n\n\ndef loss(x):\n    return x\n") == []


@pytest.mark.parametrize(
    ("statement", "word"),
    [
        ("import os", "'os' is not allowed (allowed: torch, torch.nn.functional, math)"),
        ("import os.path", "'os.path' is not allowed"),
        ("import importlib", "'importlib' is not allowed"),
        ("import numpy as np", "'numpy' is not allowed"),
        ("from os import system", "import from 'os'"),
        ("from torch import _C", "private"),
        ("from torch import hub", "torch.hub"),
        ("from torch import multiprocessing", "torch.multiprocessing"),
        ("from torch import distributed", "torch.distributed"),
        ("from torch import utils", "torch.utils"),
        ("from torch import load", "torch.load"),
        ("import torch.utils.cpp_extension", "torch.utils"),
        ("from torch.nn.functional import np", "torch.nn.functional.np"),
        ("from torch.nn.functional import warnings", "standard-library"),
        ("from torch import *", "import *"),
        ("from . import helpers", "relative import"),
        ("from .helpers import x", "relative import"),
    ],
)
def test_rejected_imports(statement: str, word: str) -> None:
    assert_rejected(f"import torch\n{statement}\n\n\ndef loss(x):\n    return x\n", 2, word)


def test_imports_inside_functions_are_checked_too() -> None:
    assert_rejected(program("import subprocess"), BODY_LINE, "'subprocess' is not allowed")


def test_allowed_imports_come_from_the_policy() -> None:
    only_math = Policy(allowed_imports=("math",))
    assert_rejected(program(""), 2, "(allowed: math)", only_math)
    assert reasons("import math\n\n\ndef loss(x):\n    return math.exp(x)\n", only_math) == []


# -- names and attributes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "word"),
    [
        ("y = x.__class__", "'__class__'"),
        ("y = __builtins__", "'__builtins__'"),
        ("y = __import__('os')", "'__import__'"),
        ("y = torch.nn.functional.__dict__", "'__dict__'"),
        ("def __init__(self):\n    pass", "'__init__'"),
    ],
)
def test_double_underscore_names_are_rejected(body: str, word: str) -> None:
    source = program(body)
    assert_rejected(source, BODY_LINE, word)
    assert_rejected(source, BODY_LINE, "double-underscore")


def test_main_guard_is_rejected() -> None:
    source = DPO + '\n\nif __name__ == "__main__":\n    pass\n'
    assert_rejected(source, 11, "top-level 'if'")
    assert_rejected(source, 11, "'__name__'")


@pytest.mark.parametrize("body", ["y = torch._C", "y = torch._dynamo", "y = x._foo"])
def test_private_attributes_are_rejected(body: str) -> None:
    assert_rejected(program(body), BODY_LINE, "private")


@pytest.mark.parametrize(
    "name",
    [
        "exec", "eval", "compile", "open", "globals", "locals", "vars", "getattr", "setattr",
        "delattr", "breakpoint", "input", "memoryview", "help", "exit", "quit", "dir", "type",
        "object", "super", "os", "sys", "subprocess", "socket", "shutil", "builtins", "importlib",
        "ctypes", "pickle", "marshal", "signal", "threading", "multiprocessing", "inspect", "gc",
    ],
)  # fmt: skip
def test_forbidden_names_are_rejected_as_names_and_attributes(name: str) -> None:
    assert_rejected(program(f"y = {name}"), BODY_LINE, f"'{name}'")
    assert_rejected(program(f"y = x.{name}"), BODY_LINE, f"'x.{name}'")
    assert_rejected(program(f"def helper({name}):\n    pass"), BODY_LINE, f"'{name}'")


@pytest.mark.parametrize(
    "attribute",
    [
        "torch.load", "torch.save", "torch.hub", "torch.utils", "torch.ops", "torch.library",
        "torch.classes", "torch.jit", "torch.compile", "torch.multiprocessing", "torch.distributed",
        "torch.backends", "torch.cuda", "torch.set_num_threads", "torch.manual_seed",
        "torch.set_default_dtype", "torch.set_grad_enabled", "torch.os", "torch.platform",
        "F.torch.load", "F.np", "x.numpy",
    ],
)  # fmt: skip
def test_dangerous_torch_attributes_are_rejected(attribute: str) -> None:
    assert_rejected(program(f"y = {attribute}"), BODY_LINE, f"'{attribute}' is not allowed")


@pytest.mark.parametrize(
    "attribute", ["torch.autograd.grad", "torch.func.grad", "torch.trace", "torch.select", "x.chunk"]
)
def test_useful_torch_attributes_are_allowed(attribute: str) -> None:
    assert reasons(program(f"y = {attribute}")) == []


def test_modules_may_only_be_used_through_their_attributes() -> None:
    assert_rejected(program("m = torch"), BODY_LINE, "module 'torch' may only be used through its attributes")


# -- monkeypatching and scope --------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "torch.log = lambda t: t",
        "F.logsigmoid = torch.sigmoid",
        "math.pi = 3",
        "del torch.log",
        "torch.pi += 1",
        "torch.nn.functional.relu = None",
    ],
)
def test_monkeypatching_imports_is_rejected(body: str) -> None:
    assert_rejected(program(body), BODY_LINE, "monkeypatching")


def test_monkeypatching_through_a_local_alias_is_rejected() -> None:
    assert_rejected(program("m = torch.nn\nm.functional.relu = None"), BODY_LINE + 1, "monkeypatching")
    assert_rejected(program("t = [F.relu]\nt[0].x = 1"), BODY_LINE + 1, "monkeypatching")
    assert_rejected(program("def h(m=torch.nn):\n    m.x = 1"), BODY_LINE + 1, "monkeypatching")
    assert_rejected(program("h = lambda: torch.nn\nh().x = 1"), BODY_LINE + 1, "monkeypatch")


@pytest.mark.parametrize(("body", "word"), [("global y", "'global'"), ("nonlocal y", "'nonlocal'")])
def test_global_and_nonlocal_are_rejected(body: str, word: str) -> None:
    source = program(f"y = 1\ndef inner():\n    {body}\n    y = 2")
    assert_rejected(source, BODY_LINE + 2, word)


# -- the top level -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "word"),
    [
        ("class Helper:\n    pass", "class definitions"),
        ("print('hi')", "top-level expression"),
        ("for i in range(3):\n    pass", "top-level 'for'"),
        ("while False:\n    pass", "top-level 'while'"),
        ("X = torch.ones(3)", "constant"),
        ("X = [i for i in range(3)]", "constant"),
        ("f = lambda t: t", "constant"),
        ("torch.x = 1", "plain names"),
        ("@torch.no_grad()\ndef helper(x):\n    return x", "decorator"),
        ("def helper(x=torch.ones(1)):\n    return x", "evaluated at import"),
        ("async def helper():\n    pass", "async"),
        ("with open('x') as f:\n    pass", "top-level 'with'"),
        ("try:\n    pass\nexcept Exception:\n    pass", "top-level 'try'"),
    ],
)
def test_top_level_must_be_side_effect_free(statement: str, word: str) -> None:
    assert_rejected(f"import torch\n{statement}\n\n\n" + DPO.split("\n\n\n")[1], 2, word)


def test_missing_slot_is_reported_on_line_1() -> None:
    found = check_source("import torch\n\n\ndef helper(x):\n    return x\n", POLICY)
    assert found == [Violation(1, 0, "no top-level function named 'loss'")]


def test_nested_slot_does_not_count() -> None:
    assert_rejected("def outer():\n    def loss(x):\n        return x\n    return loss\n", 1, "no top-level")


def test_slot_defined_twice_is_rejected() -> None:
    source = DPO + "\n\ndef loss(x):\n    return x\n"
    assert_rejected(source, 11, "defined more than once (first at line 5)")


def test_slot_rebound_by_assignment_is_rejected() -> None:
    assert_rejected(DPO + "\nloss = 3\n", 10, "rebound")


def test_slot_name_comes_from_the_policy() -> None:
    update = Policy(slot_name="update")
    assert_rejected(DPO, 1, "no top-level function named 'update'", update)
    assert reasons("def update(p, g, lr):\n    return p - lr * g\n", update) == []


# -- exceptions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("handler", "word"),
    [
        ("except:", "bare 'except:'"),
        ("except BaseException:", "'except BaseException'"),
        ("except (ValueError, BaseException):", "'except BaseException'"),
        ("except KeyboardInterrupt:", "'except KeyboardInterrupt'"),
        ("except SystemExit as e:", "'except SystemExit'"),
    ],
)
def test_handlers_that_swallow_signals_are_rejected(handler: str, word: str) -> None:
    source = program(f"try:\n    y = 1\n{handler}\n    pass")
    assert_rejected(source, BODY_LINE + 2, word)


def test_signal_exceptions_cannot_be_smuggled_through_a_name() -> None:
    source = program("E = BaseException\ntry:\n    pass\nexcept E:\n    pass")
    assert_rejected(source, BODY_LINE, "'BaseException'")


def test_return_in_finally_is_rejected() -> None:
    source = program("while True:\n    try:\n        y = 1\n    finally:\n        break")
    assert_rejected(source, BODY_LINE + 4, "'break' inside 'finally'")
    assert reasons(program("try:\n    y = 1\nfinally:\n    for i in x:\n        break")) == []


# -- obfuscation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "word"),
    [
        ("y = getattr(torch, 'lo' + 'ad')", "'getattr'"),
        ("y = torch.__dict__", "'__dict__'"),
        ("y = ().__class__.__bases__[0].__subclasses__()", "'__subclasses__'"),
        ("y = F.__globals__", "'__globals__'"),
        ("import importlib", "'importlib' is not allowed"),
        ("y = __builtins__['exec']", "'__builtins__'"),
        ("y = torch.utils.cpp_extension", "'torch.utils'"),
        ("y = torch.ops.aten", "'torch.ops'"),
        ("y = torch._C._get_tracing_state", "'_C'"),
        ("from os import system", "import from 'os'"),
        ("import os.path", "'os.path' is not allowed"),
        ("f = lambda: open('x')", "'open'"),
        ("torch.log = lambda x: x", "monkeypatching"),
        ("y = math.__dict__", "'__dict__'"),
        ("y = F.torch.hub", "'F.torch.hub'"),
        ("y = vars(torch)['load']", "'vars'"),
        ("y = torch.nn.functional.importlib", "'importlib'"),
        ("match x:\n    case str(__class__=c):\n        pass", "'match'"),
        ("y = f'{x.__class__}'", "'__class__'"),
    ],
)
def test_obfuscation_attempts_are_caught(body: str, word: str) -> None:
    assert_rejected(program(body), BODY_LINE, word)


# -- the allow-list (sandbox.jail.guard) ------------------------------------------------------------


def test_the_reviews_generator_frame_attack_is_refused_at_parse_time() -> None:
    source = program("""
        g = (i for i in [0])
        b = g.gi_frame.f_builtins
        os = b["__import__"]("os")
    """)
    assert_rejected(source, BODY_LINE, "generator expressions are not allowed (generators expose their frames)")
    assert_rejected(source, BODY_LINE + 1, "'g.gi_frame' is not allowed (frames, code objects and tracebacks")
    assert_rejected(source, BODY_LINE + 1, "'g.gi_frame.f_builtins' is not allowed (frames")
    assert_rejected(source, BODY_LINE + 2, "'os'")


def test_the_reviews_call_result_attack_is_refused_at_parse_time() -> None:
    source = program("""
        T = next(iter([F.torch]))
        T.set_num_threads(64)
        T.storage.io.FileIO("x", "w")
    """)
    assert_rejected(
        source, BODY_LINE, "'F.torch' is not allowed ('torch.nn.functional.torch' is a module that is not vetted)"
    )
    assert_rejected(source, BODY_LINE + 1, "'T.set_num_threads' is not allowed (it changes global torch state")
    assert_rejected(source, BODY_LINE + 2, "'T.storage' is not allowed (it reaches the tensor's raw storage")
    assert_rejected(source, BODY_LINE + 2, "'T.storage.io.FileIO' is not allowed")


def test_the_reviews_format_string_attack_is_refused_at_parse_time() -> None:
    source = program("""
        g = [0]
        s = "{0.gi_frame.f_globals[__builtins__].__loader__}".format(g)
        t = "{x.__class__}".format_map({"x": g})
    """)
    assert_rejected(
        source,
        BODY_LINE + 1,
        "is not allowed (format fields read attributes and items of the arguments; use an f-string)",
    )
    assert_rejected(source, BODY_LINE + 2, "format_map' is not allowed (format fields")
    assert reasons(program("s = f'{x.shape[0]} rows, {x.mean():.3f}'")) == []


@pytest.mark.parametrize(
    ("body", "word"),
    [
        ("y = torch.distributions.Normal", "'torch.distributions' is not allowed ('torch.distributions' is a module"),
        ("y = torch.nn.Module", "'torch.nn.Module' is not allowed (not a vetted tensor op of 'torch.nn')"),
        ("y = torch.Generator()", "'torch.Generator' is not allowed"),
        ("y = torch.default_generator", "global random state"),
        ("y = torch.random.seed", "'torch.random' is not allowed"),
        ("y = F.grad", "'F.grad' is not allowed ('torch.nn.functional.grad' is a module that is not vetted)"),
        ("y = F.handle_torch_function", "torch-function dispatch machinery"),
        ("y = torch.sparse_coo_tensor", "indices are not checked"),
        ("y = torch.frombuffer(b'1234', dtype=torch.uint8)", "raw memory buffers"),
        ("y = torch.fork", "other threads"),
        ("y = torch.as_strided(x, (1,), (1,))", "raw strides"),
        ("y = torch.get_device_module()", "device module"),
        ("y = torch.FloatStorage", "'torch.FloatStorage' is not allowed"),
        ("y = torch.set_printoptions", "global torch state"),
        ("y = torch.float32.__reduce__", "double-underscore"),
        ("y = math.pi.hex()", "'math.pi.hex' is not allowed (not a vetted attribute of a float)"),
    ],
)
def test_module_attributes_come_from_the_allow_list(body: str, word: str) -> None:
    assert_rejected(program(body), BODY_LINE, word)


@pytest.mark.parametrize(
    ("body", "word"),
    [
        ("y = x.storage()", "raw storage"),
        ("y = x.untyped_storage()", "raw storage"),
        ("y = x.data_ptr()", "raw memory addresses"),
        ("y = x.grad_fn", "autograd graph"),
        ("y = x.register_hook(abs)", "installs a hook"),
        ("y = x.share_memory_()", "shares memory"),
        ("y = x.pin_memory()", "pins host memory"),
        ("y = x.cuda()", "x.cuda"),
        ("y = x.cpu()", "the harness picks the device"),
        ("y = x.new(3)", "legacy constructor"),
        ("y = x.to_sparse()", "sparse tensors"),
        ("y = x.backward()", "the harness does"),
        ("y = x.as_subclass(torch.Tensor)", "Python class"),
        ("y = x.gi_code", "frames, code objects"),
        ("y = x.f_locals", "frames, code objects"),
        ("y = x.co_consts", "frames, code objects"),
        ("y = x.tb_next", "frames, code objects"),
        ("y = x.cr_frame", "frames, code objects"),
        ("y = x.ag_frame", "frames, code objects"),
        ("y = x.no_such_method()", "not an attribute of a tensor, number, string, container, dtype, device or size"),
        ("y = (lambda: 0).func_name", "not an attribute of a tensor"),
    ],
)
def test_attributes_of_unknown_objects_need_a_vetted_name(body: str, word: str) -> None:
    assert_rejected(program(body), BODY_LINE, word)


@pytest.mark.parametrize(
    "body",
    [
        "y = x.mean(dim=0, keepdim=True).clamp(min=1e-6).log()",
        "y = x.to(x.dtype) + x.to(x.device) + x.to(torch.float32)",
        "y = x.shape.numel() + x.size(0) + x.dim() + x.numel()",
        "y = x.max(0).values + x.sort(0).indices + torch.topk(x, 1).values",
        "y = x.device.index, torch.finfo(x.dtype).eps, x.dtype.is_floating_point",
        "y = {'m': x}.get('m', 0.0), [x].pop(), 'a,b'.split(','), (1.5).is_integer()",
        "y = torch.special.expit(x) + torch.linalg.vector_norm(x) + torch.fft.rfft(x).abs()",
        "y = torch.autograd.grad(x.sum(), [x], create_graph=True)",
        "y = torch.func.vmap(torch.exp)(x)",
        "y = torch.nn.functional.logsigmoid(x) + math.log1p(1.0) + torch.pi",
        "y = next(iter([x])) + sorted([1, 2])[0] + max(map(abs, [1, -2]))",
    ],
)
def test_vetted_attributes_and_builtins_pass(body: str) -> None:
    assert reasons(program(body)) == []


@pytest.mark.parametrize(
    "name",
    [
        "hasattr",
        "id",
        "issubclass",
        "format",
        "ascii",
        "classmethod",
        "property",
        "staticmethod",
        "NotImplemented",
        "Ellipsis",
        "aiter",
        "anext",
        "undefined",
    ],
)
def test_names_must_be_bound_or_vetted_builtins(name: str) -> None:
    assert_rejected(program(f"y = {name}"), BODY_LINE, f"name '{name}' is not allowed (it is not defined")


def test_names_the_candidate_binds_are_fine() -> None:
    source = program("""
        def helper(a, *rest, scale=1.0, **extra):
            return a * scale
        for i, v in enumerate([1]):
            pass
        with torch.no_grad() as nothing:
            pass
        try:
            pass
        except ValueError as err:
            pass
        (n := 3)
        y = [k for k in range(n)], helper(x), i, v, nothing, rest, extra, err
    """)
    assert reasons(source) == []


@pytest.mark.parametrize("body", ["x.grad = None", "x.requires_grad = True", "del x.grad", "x.data += 1"])
def test_attributes_are_read_only(body: str) -> None:
    assert_rejected(program(body), BODY_LINE, "is not allowed (a candidate's attributes are read-only)")


@pytest.mark.parametrize(
    "body", ["def gen():\n    yield 1", "def gen():\n    yield from [1]", "y = sum(v for v in [1, 2])"]
)
def test_generators_are_refused(body: str) -> None:
    found = check_source(program(body), POLICY)
    assert any("generator" in v.reason and v.line in (BODY_LINE, BODY_LINE + 1) for v in found), found


@pytest.mark.parametrize(
    ("statement", "word"),
    [
        ("import torch.distributions", "'torch.distributions' is not a vetted module"),
        ("import torch.nn.init", "'torch.nn.init' is not a vetted module"),
        ("from torch import set_num_threads", "import of 'torch.set_num_threads' is not allowed"),
        ("from torch import Generator", "import of 'torch.Generator' is not allowed"),
        ("from torch import random", "import of 'torch.random' is not allowed"),
        ("from torch.nn.functional import grad", "import of 'torch.nn.functional.grad' is not allowed"),
        ("from torch.nn import Module", "import of 'torch.nn.Module' is not allowed"),
    ],
)
def test_imports_come_from_the_allow_list(statement: str, word: str) -> None:
    assert_rejected(f"import torch\n{statement}\n\n\ndef loss(x):\n    return x\n", 2, word)


@pytest.mark.parametrize(
    "statement",
    [
        "import torch.linalg",
        "from torch import special",
        "from torch.special import expit",
        "from torch import pi",
        "from torch import Tensor",
        "from math import tau",
    ],
)
def test_vetted_imports_pass(statement: str) -> None:
    assert reasons(f"{statement}\n\n\ndef loss(x):\n    return x\n") == []


def test_imports_resolve_statically() -> None:
    """An imported name's attributes are checked against the object it is bound to."""
    assert reasons(program("from torch import nn\ny = nn.functional.relu(x)")) == []
    assert_rejected(program("from torch import nn\ny = nn.Module"), BODY_LINE + 1, "'nn.Module' is not allowed")
    assert_rejected(
        program("from torch.nn import functional as G\ny = G.torch"), BODY_LINE + 1, "'G.torch' is not allowed"
    )
    assert_rejected(program("from math import exp\ny = exp.__self__"), BODY_LINE + 1, "double-underscore")


# -- the report --------------------------------------------------------------------------


def test_all_violations_are_reported_sorted_by_line() -> None:
    source = program("y = torch.load('w')\nz = x.__class__\nimport os")
    found = check_source(source, POLICY)
    assert [v.line for v in found] == [BODY_LINE, BODY_LINE + 1, BODY_LINE + 2]
    assert [v.line for v in found] == sorted(v.line for v in found)
    assert found[0].col == 8  # `torch.load` starts at column 8 of `    y = torch.load('w')`


def test_one_line_and_immutability() -> None:
    v = Violation(3, 0, "import of 'os' is not allowed (allowed: torch, torch.nn.functional, math)")
    assert v.one_line() == "line 3: import of 'os' is not allowed (allowed: torch, torch.nn.functional, math)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.line = 4  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        POLICY.slot_name = "x"  # type: ignore[misc]


def test_annotate_puts_the_note_on_the_right_line() -> None:
    source = program("y = torch.load('w')")
    violation = check_source(source, POLICY)[0]
    annotated = annotate(source, violation.line, violation.reason)
    lines = annotated.splitlines()
    assert lines[BODY_LINE - 1] == f"    y = torch.load('w')  <--- {violation.reason}"
    assert [line for i, line in enumerate(lines) if i != BODY_LINE - 1] == [
        line for i, line in enumerate(source.splitlines()) if i != BODY_LINE - 1
    ]
    assert annotated.endswith("\n") and annotated.count("\n") == source.count("\n")


def test_annotate_edges() -> None:
    assert annotate("a\nb", 2, "here") == "a\nb  <--- here"
    assert annotate("a\r\nb\r\n", 1, "x") == "a  <--- x\r\nb\r\n"
    assert annotate("a\nb\n", 99, "end") == "a\nb  <--- end\n"  # clamped to the last line
    assert annotate("a\nb\n", 0, "two\nlines") == "a  <--- two lines\nb\n"
    assert annotate("", 1, "empty") == "  <--- empty"
