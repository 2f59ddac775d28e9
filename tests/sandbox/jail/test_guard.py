"""The run-time guard (sandbox/jail/guard.py): every attribute read checked on the object it is made on.

In-process: what the guard allows and refuses on actual objects, the guarded compiler's outright
refusals, imports and builtins, and that every shipped candidate (baselines, controls, seed
programs, the README's loss, the offline proposer's outputs) behaves the same guarded as plain.
Through the real sandbox and the CLI: candidates that pass the static policy but reach a
forbidden object at run time, and attacks handed to the sandbox past the policy, end with a
one-line reason that names their line.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from discovery.evaluation import Evaluator
from discovery.tasks import get_task, task_names
from discovery.tasks.base import ContractError, Task
from discovery.training import run_job
from sandbox.base import Job, Limits, Outcome, Status
from sandbox.host.jobfiles import input_key
from sandbox.host.local import LocalSandbox, bubblewrap_problem
from sandbox.jail.guard import ALLOWED_BUILTINS, GuardError, GuardRefusal, compile_guarded, make_getattr, vetted
from sandbox.static.policy import Policy, check_source

ROOT = Path(__file__).resolve().parents[3]
PREFERENCE = get_task("preference")
LIMITS = Limits(wall_seconds=60, memory_mb=2048, max_processes=64)
IMPORTS = "import math\n\nimport torch\nimport torch.nn.functional as F\n\n\n"
SIGNATURE = (
    "def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):\n"
)
BODY_LINE = 8  # the first line of a body inside candidate()
DPO_RETURN = "    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))\n"

needs_bwrap = pytest.mark.skipif(
    bool(bubblewrap_problem()) and os.environ.get("CI") != "true",
    reason=f"bubblewrap unusable here: {bubblewrap_problem()}",
)


def candidate(body: str) -> str:
    """A preference candidate whose ``loss`` runs ``body`` (from BODY_LINE), then returns DPO."""
    return IMPORTS + SIGNATURE + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ") + "\n" + DPO_RETURN


def load(source: str, task: Task = PREFERENCE) -> Callable[..., Any]:
    code, base = compile_guarded(source, "candidate.py", task.slot.allowed_imports)
    namespace = {"__name__": "candidate", **base}
    exec(code, namespace)
    return namespace[task.slot.name]


def run_loss(source: str) -> Any:
    x = torch.randn(4, requires_grad=True)
    return load(source)(x, x * 2, x * 0, x * 0, 0.1)


# -- every shipped candidate runs guarded ------------------------------------------------------


def shipped_candidates() -> Iterator[tuple[str, str, str]]:
    """(task, name, source) of every baseline, control and seed program, the example task's and the README's."""
    for ref in [*task_names(), str(ROOT / "examples" / "regression_task.py")]:
        task = get_task(ref)
        programs = {
            **task.baselines,
            **{f"control {k}": v for k, v in getattr(task, "controls", {}).items()},
            "seed program": task.seed_program,
        }
        for name, source in programs.items():
            yield ref, name, source
    readme = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "def loss(" in b)
    yield "preference", "README", block


SHIPPED = list(shipped_candidates())


@pytest.mark.parametrize(("ref", "name", "source"), SHIPPED, ids=[f"{Path(r).stem}-{n}" for r, n, _ in SHIPPED])
def test_every_shipped_candidate_passes_the_policy_and_its_contract_guarded(ref: str, name: str, source: str):
    task = get_task(ref)
    assert check_source(source, Policy(task.slot.allowed_imports, task.slot.name)) == []
    task.contract_check(load(source, task))


def outcome_of(task: Task, fn: Callable[..., Any]) -> str:
    try:
        task.contract_check(fn)
    except (Exception, GuardError) as exc:  # noqa: BLE001 - compared between the two runs
        return type(exc).__name__
    return "ok"


@pytest.mark.parametrize("task_name", task_names())
def test_the_offline_proposers_outputs_behave_the_same_guarded(task_name: str):
    """Mutants and crossovers that pass the policy give the same contract outcome guarded as plain."""
    from discovery.proposers.mutations import crossover, mutate

    task = get_task(task_name)
    policy = Policy(task.slot.allowed_imports, task.slot.name)
    parents = list(task.baselines.values())
    rng = random.Random(7)
    checked = 0
    for i in range(40):
        parent = rng.choice(parents)
        if i % 3:
            child = mutate(parent, "p", rng, task.slot.name)
        else:
            child = crossover(parent, "a", rng.choice(parents), "b", rng, task.slot.name)
        assert check_source(child.code, policy) == [], child.code
        plain: dict[str, Any] = {}
        exec(child.code, plain)
        guarded = outcome_of(task, load(child.code, task))
        assert guarded == outcome_of(task, plain[task.slot.name]), child.code
        assert guarded != "GuardError"
        checked += 1
    assert checked == 40


# -- what the guard allows and refuses, on actual objects -------------------------------------


def a_generator() -> Iterator[int]:
    yield 0


def a_frame() -> Any:
    return sys._getframe()


REFUSED: list[tuple[str, Callable[[], Any], str, str]] = [
    ("generator frame", a_generator, "gi_frame", "frames, code objects and tracebacks"),
    ("frame builtins", a_frame, "f_builtins", "frames, code objects and tracebacks"),
    ("frame globals", a_frame, "f_globals", "frames, code objects and tracebacks"),
    ("code object", lambda: a_frame.__code__, "co_consts", "frames, code objects and tracebacks"),
    ("function globals", lambda: a_frame, "__globals__", "double-underscore"),
    ("class bases", lambda: 1, "__class__", "double-underscore"),
    ("str.format", lambda: "{0.gi_frame}", "format", "use an f-string"),
    ("str.format_map", lambda: "{x}", "format_map", "use an f-string"),
    ("F.torch", lambda: F, "torch", "'torch.nn.functional.torch' is a module that is not vetted"),
    ("F.grad", lambda: F, "grad", "'torch.nn.functional.grad' is a module that is not vetted"),
    ("torch.set_num_threads", lambda: torch, "set_num_threads", "changes global torch state"),
    ("torch.storage", lambda: torch, "storage", "is a module that is not vetted"),
    ("torch.load", lambda: torch, "load", "unpickles files"),
    ("torch.manual_seed", lambda: torch, "manual_seed", "global random state"),
    ("torch.from_file", lambda: torch, "from_file", "reads files"),
    ("torch.default_generator", lambda: torch, "default_generator", "global random state"),
    ("torch.utils", lambda: torch, "utils", "cpp_extension"),
    ("torch.nn.Module", lambda: torch.nn, "Module", "not a vetted tensor op of 'torch.nn'"),
    ("math.__loader__", lambda: __import__("math"), "__loader__", "double-underscore"),
    ("os module", lambda: os, "system", "module 'os' is not vetted"),
    ("tensor storage", lambda: torch.ones(2), "untyped_storage", "raw storage"),
    ("tensor data_ptr", lambda: torch.ones(2), "data_ptr", "raw memory addresses"),
    ("tensor cuda", lambda: torch.ones(2), "cuda", "the harness picks the device"),
    ("tensor grad_fn", lambda: torch.ones(2, requires_grad=True) * 2, "grad_fn", "autograd graph"),
    ("tensor hook", lambda: torch.ones(2), "register_hook", "installs a hook"),
    ("tensor numpy", lambda: torch.ones(2), "numpy", "numpy"),
    ("tensor private", lambda: torch.ones(2), "_version", "private"),
    ("tensor to_sparse", lambda: torch.ones(2), "to_sparse", "sparse tensors"),
    ("parameter storage", lambda: torch.nn.Parameter(torch.ones(2)), "storage", "raw storage"),
    ("class attribute", lambda: torch.Tensor, "storage", "attributes of classes are not allowed"),
    ("str class", lambda: str, "format", "use an f-string"),
    ("builtin function", lambda: len, "__self__", "double-underscore"),
    ("bound method", lambda: torch.ones(2).mean, "__self__", "double-underscore"),
    ("exception", lambda: ValueError("x"), "args", "have readable attributes"),
    ("dict fromkeys", lambda: {}, "fromkeys", "not a vetted attribute of a dict"),
    ("none", lambda: None, "x", "have readable attributes"),
]


@pytest.mark.parametrize(("label", "make", "name", "fragment"), REFUSED, ids=[r[0] for r in REFUSED])
def test_the_guard_refuses_on_the_actual_object(label: str, make: Callable[[], Any], name: str, fragment: str):
    with pytest.raises(GuardError) as caught:
        make_getattr()(make(), name)
    message = str(caught.value)
    assert fragment in message and f"'{name}'" in message
    assert "\n" not in message and len(message) < 300


ALLOWED: list[tuple[str, Callable[[], Any], str]] = [
    ("tensor method", lambda: torch.ones(2), "mean"),
    ("tensor property", lambda: torch.ones(2), "shape"),
    ("tensor grad", lambda: torch.ones(2), "grad"),
    ("parameter method", lambda: torch.nn.Parameter(torch.ones(2)), "detach"),
    ("F op", lambda: F, "logsigmoid"),
    ("F python op", lambda: F, "cross_entropy"),
    ("torch op", lambda: torch, "logsumexp"),
    ("torch.nn.functional chain", lambda: torch.nn, "functional"),
    ("torch.special", lambda: torch, "special"),
    ("torch.autograd.grad", lambda: torch.autograd, "grad"),
    ("torch.func.vmap", lambda: torch.func, "vmap"),
    ("torch dtype", lambda: torch, "float32"),
    ("torch class", lambda: torch, "Tensor"),
    ("torch constant", lambda: torch, "pi"),
    ("math function", lambda: __import__("math"), "exp"),
    ("dict get", lambda: {}, "get"),
    ("list append", lambda: [], "append"),
    ("str join", lambda: "", "join"),
    ("float is_integer", lambda: 1.0, "is_integer"),
    ("size numel", lambda: torch.ones(2).shape, "numel"),
    ("dtype query", lambda: torch.float32, "is_floating_point"),
    ("device type", lambda: torch.device("cpu"), "type"),
    ("finfo eps", lambda: torch.finfo(torch.float32), "eps"),
    ("return tuple field", lambda: torch.ones(3).max(0), "indices"),
]


@pytest.mark.parametrize(("label", "make", "name"), ALLOWED, ids=[a[0] for a in ALLOWED])
def test_the_guard_allows_vetted_reads(label: str, make: Callable[[], Any], name: str):
    obj = make()
    got = make_getattr()(obj, name)
    expected = getattr(obj, name)
    assert got is expected or got == expected


def test_decisions_are_cached_per_type_and_name():
    guard = make_getattr()
    t = torch.ones(2)
    assert guard(t, "sum") == t.sum
    cache = next(
        c.cell_contents
        for c in guard.__closure__ or ()
        if isinstance(c.cell_contents, dict) and (torch.Tensor, "sum") in c.cell_contents
    )
    assert cache[(torch.Tensor, "sum")] is True


def test_to_keeps_a_tensor_on_its_device():
    guard = make_getattr()
    x = torch.ones(2)
    assert guard(x, "to")(torch.float64).dtype == torch.float64
    assert guard(x, "to")(x.device).device == x.device
    assert guard(x, "to")("cpu", dtype=torch.float16).dtype == torch.float16
    assert guard(x, "to")(torch.zeros(1, dtype=torch.int64)).dtype == torch.int64
    for device in ("meta", torch.device("meta")):
        with pytest.raises(GuardError, match="the harness picks the device"):
            guard(x, "to")(device)
    with pytest.raises(GuardError, match="the harness picks the device"):
        guard(x, "to")(device="meta")


def test_the_allow_list_is_derived_from_torch():
    table = vetted()
    assert {"logsigmoid", "softplus", "cross_entropy", "one_hot"} <= table.module_names["torch.nn.functional"]
    assert {"exp", "sigmoid", "relu", "where", "einsum", "float32", "Tensor", "special"} <= table.module_names["torch"]
    assert (
        not {
            "load",
            "save",
            "set_num_threads",
            "manual_seed",
            "utils",
            "hub",
            "jit",
            "compile",
            "cuda",
            "ops",
            "from_numpy",
            "frombuffer",
            "default_generator",
            "backends",
        }
        & table.module_names["torch"]
    )
    assert (
        not {"torch", "np", "importlib", "warnings", "grad", "handle_torch_function"}
        & table.module_names["torch.nn.functional"]
    )
    assert {"mean", "clamp", "gather", "detach", "to", "shape", "dtype", "device", "grad"} <= table.tensor
    assert (
        not {
            "storage",
            "untyped_storage",
            "data_ptr",
            "share_memory_",
            "pin_memory",
            "cuda",
            "numpy",
            "grad_fn",
            "register_hook",
            "type",
            "new",
        }
        & table.tensor
    )
    assert "format" not in table.any_value and "gi_frame" not in table.any_value


# -- the guarded compiler ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("g = (i for i in [0])", "generator expressions are not allowed"),
        ("def gen():\n    yield 1  # here", "'yield' is not allowed"),
        ("def gen():\n    yield from [1]  # here", "'yield from' is not allowed"),
        ("class A:\n    pass", "class definitions are not allowed"),
        ("policy_chosen_logps.grad = None", "assigning to or deleting the attribute 'grad'"),
        ("del policy_chosen_logps.grad", "assigning to or deleting the attribute 'grad'"),
        ("x = policy_chosen_logps._version", "private attributes"),
        ("x = __builtins__", "name '__builtins__' is not allowed"),
        ("__guard_getattr__ = lambda o, n: 1", "name '__guard_getattr__' is not allowed"),
        ("x = __guard_getattr__(F, 'torch')", "name '__guard_getattr__' is not allowed"),
        ("try:\n    pass\nexcept:  # here\n    pass", "bare 'except:'"),
        ("match beta:\n    case _:\n        pass", "'match' statements are not allowed"),
        ("global y", "'global' statements are not allowed"),
        ("from . import x", "relative imports are not allowed"),
    ],
)
def test_the_guarded_compiler_refuses_with_the_line(body: str, fragment: str):
    with pytest.raises(GuardRefusal) as caught:
        compile_guarded(candidate(body), "candidate.py")
    line = BODY_LINE + next((i for i, text in enumerate(body.splitlines()) if "# here" in text), 0)
    assert caught.value.lineno == line and caught.value.filename == "candidate.py"
    assert fragment in str(caught.value) and "\n" not in str(caught.value)
    assert isinstance(caught.value, SyntaxError)  # the runner reports it as a parse failure


def test_a_real_syntax_error_stays_a_syntax_error():
    with pytest.raises(SyntaxError) as caught:
        compile_guarded("def loss(x:\n    return x\n", "candidate.py")
    assert not isinstance(caught.value, GuardRefusal)


def test_lambdas_comprehensions_fstrings_and_helpers_work():
    source = candidate("""
        squares = [v * v for v in range(3)]
        table = {k: math.exp(-k) for k in squares}
        pick = lambda t: t.clamp(min=-50.0)
        def helper(t, scale=2.0):
            return t * scale
        note = f"{policy_chosen_logps.shape[0]} pairs, {table[0]:.1f}"
        with torch.no_grad():
            w = torch.zeros_like(policy_chosen_logps).chunk(1)[0]
        assert note.startswith("4 pairs") and isinstance(w, torch.Tensor)
        policy_chosen_logps = helper(pick(policy_chosen_logps), 1.0) + w + sum([t.sum() for t in [w]])
    """)
    assert check_source(source, Policy()) == []
    assert run_loss(source).shape == (4,)


def test_guard_errors_cannot_be_caught_by_the_candidate():
    source = candidate("""
        try:
            x = policy_chosen_logps.untyped_storage()
        except Exception:
            x = None
    """)
    with pytest.raises(GuardError, match="untyped_storage"):
        run_loss(source)


@pytest.mark.parametrize(
    ("body", "error", "fragment"),
    [
        ("import os", GuardError, "import of 'os' is not allowed"),
        ("import torch.utils.data", GuardError, "import of 'torch.utils.data' is not allowed"),
        ("from torch import load", GuardError, "import of 'torch.load' is not allowed"),
        ("from torch.nn.functional import torch", GuardError, "import of 'torch.nn.functional.torch'"),
        ("open('x', 'w')", NameError, "'open'"),
        ("getattr(torch, 'load')", NameError, "'getattr'"),
        ("hasattr(torch, 'load')", NameError, "'hasattr'"),
        ("type(beta)", NameError, "'type'"),
        ("vars(torch)", NameError, "'vars'"),
    ],
)
def test_imports_and_builtins_are_cut_down(body: str, error: type[BaseException], fragment: str):
    with pytest.raises(error, match=re.escape(fragment)):
        run_loss(candidate(body))


def test_imports_follow_the_tasks_allowed_imports():
    only_math = get_task("optimizer").slot.allowed_imports
    assert only_math == ("torch", "math")
    source = "import torch.nn.functional as F\n\n\ndef update(param, grad, state, lr, step):\n    return param\n"
    code, base = compile_guarded(source, "candidate.py", ("math",))
    with pytest.raises(GuardError, match="import of 'torch.nn.functional' is not allowed"):
        exec(code, dict(base))
    code, base = compile_guarded(source, "candidate.py", only_math)
    exec(code, dict(base))  # torch.nn.functional lies under torch


def test_builtins_are_the_allow_list():
    _, base = compile_guarded("x = 1\n", "candidate.py")
    assert set(base["__builtins__"]) == ALLOWED_BUILTINS | {"__import__"}


# -- through the real sandbox and the CLI ----------------------------------------------------

#: candidates that pass the static policy and are refused at run time, on the line marked
RUN_TIME_ONLY = {
    "module through a call": (
        candidate("""
        G = (lambda: torch.nn.functional)()
        m = G.grad
    """),
        BODY_LINE + 1,
        "'grad' of module 'torch.nn.functional' is not allowed",
    ),
    "module through a list": (
        candidate("""
        M = [torch.special][0]
        y = M.norm(policy_chosen_logps)
    """),
        BODY_LINE + 1,
        "'norm' of module 'torch.special' is not allowed",
    ),
    "name of another type": (
        candidate("""
        k = policy_chosen_logps.keys()
    """),
        BODY_LINE,
        "'keys' of a torch.Tensor is not allowed",
    ),
}

#: the review's attacks, handed to the sandbox past the static policy (which refuses each of them)
PAST_THE_POLICY = {
    "generator frame": (
        candidate("""
        g = (i for i in [0])
        b = g.gi_frame.f_builtins
        os = b["__import__"]("os")
    """),
        BODY_LINE,
        Status.PARSE,
        "GuardRefusal: generator expressions are not allowed",
    ),
    "call result": (
        candidate("""
        T = next(iter([F.torch]))
        T.set_num_threads(64)
        T.storage.io.FileIO("x", "w")
    """),
        BODY_LINE,
        Status.ERROR,
        "GuardError: 'torch' of module 'torch.nn.functional' is not allowed",
    ),
    "call result, torch itself": (
        candidate("""
        T = (lambda: torch)()
        T.set_num_threads(64)
    """),
        BODY_LINE + 1,
        Status.ERROR,
        "GuardError: 'set_num_threads' of module 'torch' is not allowed",
    ),
    "format string": (
        candidate("""
        g = [0]
        s = "{0.gi_frame.f_globals[__builtins__].__loader__}".format(g)
    """),
        BODY_LINE + 1,
        Status.ERROR,
        "GuardError: 'format' of a str is not allowed",
    ),
    "format string on a function": (
        candidate("""
        def helper():
            return 0
        s = "{0.__globals__[__builtins__]}".format(helper)
    """),
        BODY_LINE + 2,
        Status.ERROR,
        "GuardError: 'format' of a str is not allowed",
    ),
}


@pytest.fixture(scope="module")
def box() -> Iterator[LocalSandbox]:
    with LocalSandbox() as sandbox:
        yield sandbox


def assert_refused(outcome: Outcome, line: int, status: Status, fragment: str) -> None:
    assert outcome.status is status, (outcome.status, outcome.reason, outcome.stderr_tail)
    assert fragment in outcome.reason, outcome.reason
    assert f"(line {line}: `" in outcome.reason and outcome.line == line, outcome.reason
    assert "\n" not in outcome.reason and len(outcome.reason) <= 300


@needs_bwrap
@pytest.mark.parametrize("name", sorted(RUN_TIME_ONLY))
def test_run_time_refusals_in_the_sandbox(box: LocalSandbox, name: str):
    source, line, fragment = RUN_TIME_ONLY[name]
    assert check_source(source, Policy()) == []  # the static policy cannot see these
    outcome = run_job(box, Job(task="preference", source=source, stage="contract", limits=LIMITS))
    assert_refused(outcome, line, Status.ERROR, "GuardError: " + fragment)
    assert outcome.stage == "contract"


@needs_bwrap
@pytest.mark.parametrize("name", sorted(PAST_THE_POLICY))
def test_the_reviews_attacks_are_refused_in_the_sandbox_past_the_policy(box: LocalSandbox, name: str):
    source, line, status, fragment = PAST_THE_POLICY[name]
    assert check_source(source, Policy())  # the static policy refuses each of them too
    outcome = run_job(box, Job(task="preference", source=source, stage="contract", limits=LIMITS))
    assert_refused(outcome, line, status, fragment)


@needs_bwrap
def test_every_training_runs_the_guarded_code(box: LocalSandbox):
    """The contract check passes (batch 10); a training batch reaches the refused read."""
    source = candidate("""
        if policy_chosen_logps.shape[0] != 10:
            G = (lambda: torch.nn.functional)()
            m = G.grad
    """)
    assert check_source(source, Policy()) == []
    inputs = {input_key("clean", 0): Evaluator(PREFERENCE).inputs_for(PREFERENCE.suite("discover"), "clean", 0)}
    job = Job(task="preference", source=source, stage="train", configs=["clean"], seeds=[0], limits=LIMITS)
    outcome = run_job(box, job, inputs)
    assert_refused(outcome, BODY_LINE + 2, Status.ERROR, "GuardError: 'grad' of module 'torch.nn.functional'")
    assert outcome.stage == "train"


@needs_bwrap
def test_a_run_time_refusal_through_the_cli(tmp_path: Path):
    source, line, fragment = RUN_TIME_ONLY["module through a call"]
    path = tmp_path / "sneaky.py"
    path.write_text(source)
    proc = subprocess.run(
        [sys.executable, "-m", "discovery.cli", "evaluate", str(path), "--json", "--seeds", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["status"] == "error" and report["stage"] == "contract", report
    assert report["reason"].startswith("GuardError: " + fragment), report["reason"]
    assert report["reason"].endswith(f"(line {line}: `m = G.grad`)") and report["line"] == line


@needs_bwrap
def test_a_policy_refusal_of_an_attack_through_the_cli(tmp_path: Path):
    source = PAST_THE_POLICY["call result"][0]
    path = tmp_path / "attack.py"
    path.write_text(source)
    proc = subprocess.run(
        [sys.executable, "-m", "discovery.cli", "evaluate", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["status"] == "policy" and report["line"] == BODY_LINE, report
    assert report["reason"].startswith(f"line {BODY_LINE}: 'F.torch' is not allowed"), report["reason"]


def test_contract_errors_are_still_contract_errors():
    """A bad candidate that touches nothing forbidden fails as before (the guard adds nothing)."""
    with pytest.raises(ContractError, match="shape"):
        PREFERENCE.contract_check(load(candidate("return (policy_chosen_logps - policy_rejected_logps).mean()")))
