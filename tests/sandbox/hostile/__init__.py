"""A corpus of hostile candidates for the preference task's ``loss`` slot.

Every program here would be rejected by the static policy (``sandbox.static.policy``); the tests
hand them to the sandbox directly, to check that the OS-level walls hold for a candidate
that got past the first wall. Most cases also run without the run-time guard
(``sandbox.jail.guard``; ``Case.guarded`` False), so that they reach the OS walls behind it; the
guard's own cases (``guarded=True``, at the end of :data:`CASES`) show it refusing attacks
that once got past the static policy. Each case says which statuses are acceptable and, with a
``# <-- line`` marker, which of its own lines the one-line reason must name.

Sources may contain placeholders filled in by the test: ``@PORT@`` (a listener on the host's
127.0.0.1), ``@OUTSIDE_TMP@`` and ``@OUTSIDE_WORK@`` (directories the test created outside
the sandbox), ``@PROJECT@`` (the project root) and ``@SECRET_NAME@`` (the variable holding
the API key in the parent's environment).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

MARKER = "# <-- line"

#: the DPO loss body every "behaves normally otherwise" candidate uses
DPO_BODY = """\
    pi_logratios = policy_chosen_logps - policy_rejected_logps
    ref_logratios = reference_chosen_logps - reference_rejected_logps
    logits = pi_logratios - ref_logratios
    return -F.logsigmoid(beta * logits)
"""
SIGNATURE = (
    "def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):"
)


@dataclass(frozen=True)
class Case:
    """One hostile candidate and what the sandbox must make of it."""

    name: str
    source: str
    expect: tuple[str, ...]  # acceptable sandbox.base.Status values (per backend if a dict is needed)
    stage: str = "contract"
    wall_seconds: float = 60.0
    cpu_seconds: int = 60
    memory_mb: int = 2048
    file_mb: int = 64
    max_processes: int = 64
    #: a substring the reason must contain
    reason_has: tuple[str, ...] = ()
    #: substrings the reason must not contain
    reason_lacks: tuple[str, ...] = ()
    #: statuses other than ``expect`` accepted for one backend only (with the reason why)
    backend_expect: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: run with the run-time guard on (False: the job opts out, to reach the OS walls behind it)
    guarded: bool = False

    def render(self, **values: str) -> str:
        text = self.source.replace("  " + MARKER, "")
        for key, value in values.items():
            text = text.replace(f"@{key}@", value)
        return text

    @property
    def lines(self) -> list[int]:
        """The candidate's own lines (1-based) one of which the reason must name."""
        return [i for i, text in enumerate(self.source.splitlines(), 1) if MARKER in text]

    def expected(self, backend: str) -> tuple[str, ...]:
        return self.expect + self.backend_expect.get(backend, ())


def program(body: str, header: str = "", dpo_tail: bool = False) -> str:
    """A candidate: imports, optional top-level ``header``, then ``loss`` with ``body``."""
    imports = "import math\n\nimport torch\nimport torch.nn.functional as F\n"
    parts = [imports]
    if header:
        parts.append(textwrap.dedent(header).strip("\n") + "\n")
    parts.append("\n" + SIGNATURE + "\n" + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ") + "\n")
    if dpo_tail:
        parts.append(DPO_BODY)
    return "".join(parts)


CASES: list[Case] = [
    # ------------------------------------------------------------------ time
    Case(
        "infinite_loop",
        program("""
        n = 0
        while True:  # <-- line
            n += 1  # <-- line
    """),
        ("timeout",),
        wall_seconds=6,
        reason_has=("wall-clock limit",),
    ),
    Case(
        "sleep_forever",
        program("""
        import time
        time.sleep(10 ** 6)  # <-- line
    """),
        ("timeout",),
        wall_seconds=6,
        reason_has=("wall-clock limit",),
    ),
    Case(
        "cpu_limit",
        program("""
        n = 0
        while True:  # <-- line
            n += 1  # <-- line
    """),
        ("timeout",),
        wall_seconds=30,
        cpu_seconds=2,
        reason_has=("CPU-time limit",),
    ),
    Case(
        "cpu_limit_ignoring_sigxcpu",
        program("""
        import signal
        signal.signal(signal.SIGXCPU, signal.SIG_IGN)
        n = 0
        while True:
            n += 1
    """),
        ("timeout",),
        wall_seconds=30,
        cpu_seconds=1,
        reason_has=("CPU-time limit",),
    ),
    # ------------------------------------------------------------------ memory
    Case(
        "memory_bomb_100gb",
        program("""
        hoard = bytearray(100 * 1024 ** 3)  # <-- line
        return hoard
    """),
        ("memory",),
        reason_has=("out of memory",),
    ),
    Case(
        "memory_bomb_growing_list",
        program("""
        hoard = []
        while True:
            hoard.append(b"x" * (32 * 1024 * 1024))  # <-- line
    """),
        ("memory",),
        memory_mb=1024,
        reason_has=("out of memory",),
    ),
    Case(
        "memory_bomb_torch",
        program("""
        hoard = torch.ones(50_000_000_000)  # <-- line
        return hoard
    """),
        ("memory",),
        reason_has=("out of memory",),
    ),
    Case(
        "raise_rlimits_then_hoard",
        program("""
        import resource
        try:
            resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        except (ValueError, OSError):
            pass
        hoard = []
        while True:
            hoard.append(b"x" * (32 * 1024 * 1024))  # <-- line
    """),
        ("memory",),
        memory_mb=1024,
        reason_has=("out of memory",),
    ),
    # ------------------------------------------------------------------ processes
    Case(
        "fork_bomb",
        program("""
        import os
        while True:
            os.fork()  # <-- line
    """),
        ("error",),
        reason_has=("PermissionError",),
    ),
    Case(
        "thread_bomb",
        program("""
        import threading
        import time
        threads = []
        while True:
            t = threading.Thread(target=time.sleep, args=(600,), daemon=True)
            t.start()  # <-- line
            threads.append(t)
    """),
        ("error", "memory"),
        max_processes=64,
    ),
    Case(
        "os_system_and_subprocess",
        program("""
        import os
        import subprocess
        rc = os.system("touch @OUTSIDE_TMP@/system-ran")
        subprocess.run(["/bin/sh", "-c", "touch @OUTSIDE_TMP@/subprocess-ran"])  # <-- line
    """),
        ("error",),
        reason_has=("PermissionError",),
    ),
    Case(
        "signal_everyone",
        program("""
        import os
        import signal
        results = []
        for target in (-1, os.getppid(), 1):
            if target == os.getpid() or target == 0:
                continue
            try:
                os.kill(target, signal.SIGKILL)
                results.append(f"kill({target}) no error")
            except OSError as exc:
                results.append(f"kill({target}) {type(exc).__name__}")
        raise ValueError("; ".join(results))  # <-- line
    """),
        ("error",),
    ),
    # ------------------------------------------------------------------ output and disk
    Case(
        "stdout_spam",
        program("""
        import sys
        block = "x" * (1 << 20)
        while True:
            sys.stdout.write(block)  # <-- line
    """),
        ("output",),
        reason_has=("file-size limit",),
    ),
    Case(
        "stderr_spam_raw_fd",
        program("""
        import os
        block = b"y" * (1 << 20)
        while True:
            os.write(2, block)  # <-- line
    """),
        ("output",),
        reason_has=("file-size limit",),
    ),
    Case(
        "stdout_spam_default_sigxfsz",
        program("""
        import os
        import signal
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        block = b"z" * (1 << 20)
        while True:
            os.write(1, block)
    """),
        ("output",),
        reason_has=("file-size limit",),
    ),
    Case(
        "disk_filler",
        program("""
        block = b"d" * (16 * 1024 * 1024)
        i = 0
        while True:
            with open(f"fill-{i}.bin", "wb") as fh:
                fh.write(block)
            i += 1
    """),
        ("output",),
        wall_seconds=30,
        file_mb=32,
        reason_has=("scratch directory",),
    ),
    Case(
        "inode_filler",
        program("""
        i = 0
        while True:
            open(f"empty-{i}", "w").close()
            i += 1
    """),
        ("output",),
        wall_seconds=30,
        reason_has=("files in its scratch directory",),
    ),
    # ------------------------------------------------------------------ network, filesystem, secrets
    Case(
        "socket_to_host_loopback",
        program("""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # <-- line
        s.settimeout(3)
        s.connect(("127.0.0.1", @PORT@))
        raise ValueError("CONNECTED")
    """),
        ("error",),
        reason_has=("PermissionError",),
        reason_lacks=("CONNECTED",),
    ),
    Case(
        "write_outside_scratch",
        program("""
        import os
        report = []
        for path in ("@OUTSIDE_TMP@/pwned", "@OUTSIDE_WORK@/pwned", "@PROJECT@/pwned-by-candidate",
                     "/etc/pwned", "/pwned", "../pwned"):
            try:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                with open(path, "w") as fh:
                    fh.write("pwned")
                report.append(f"WROTE {path}")
            except OSError as exc:
                report.append(f"{path}: {type(exc).__name__}")
        raise ValueError("; ".join(report))  # <-- line
    """),
        ("error",),
    ),
    Case(
        "read_api_key",
        program("""
        import glob
        import os
        found = [repr(dict(torch.os.environ)), repr(dict(os.environ))]
        paths = ["/proc/self/environ", "/proc/1/environ", f"/proc/{os.getppid()}/environ"]
        paths += sorted(glob.glob("/proc/[0-9]*/environ"))
        for path in paths:
            try:
                with open(path, "rb") as fh:
                    found.append(path + "=" + fh.read().decode("utf-8", "replace"))
            except OSError as exc:
                found.append(f"{path}: {type(exc).__name__}")
        print("\\n".join(found))
        hits = [f for f in found if "@SECRET_NAME@" in f]
        raise ValueError("found: " + " | ".join(hits or found))  # <-- line
    """),
        ("error",),
    ),
    Case(
        "symlinked_results",
        program("""
        import os
        for name in ("log.txt", "result.pt"):
            try:
                os.remove(name)
            except OSError:
                pass
            os.symlink("/proc/self/environ", name)
        os._exit(0)
    """),
        ("crashed",),
        reason_has=("without a result",),
    ),
    Case(
        "privileges",
        program("""
        import os
        import resource
        status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
        report = [f"uid={os.getuid()}", "caps=" + status["CapEff"].strip()]
        try:
            resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            report.append("rlimit=RAISED")
        except (ValueError, OSError):
            report.append("rlimit=refused")
        try:
            with open("/proc/sys/vm/swappiness") as fh:
                value = fh.read()
            with open("/proc/sys/vm/swappiness", "w") as fh:  # the same value: harmless if it worked
                fh.write(value)
            report.append("sysctl=WRITTEN")
        except OSError:
            report.append("sysctl=refused")
        raise ValueError(" ".join(report))  # <-- line
    """),
        ("error",),
        reason_has=("caps=0000000000000000", "rlimit=refused", "sysctl=refused"),
        reason_lacks=("uid=0 ",),
    ),
    # ------------------------------------------------------------------ crashes and exceptions
    Case(
        "recursion_without_end",
        program("""
        def deeper(n):
            return deeper(n + 1)  # <-- line
        return deeper(0)
    """),
        ("error",),
        reason_has=("recursion without end",),
    ),
    Case(
        "c_stack_overflow",
        program("""
        import sys
        sys.setrecursionlimit(10 ** 7)
        def deeper(n):  # <-- line
            return list(map(deeper, [n + 1]))  # <-- line
        return deeper(0)
    """),
        ("crashed",),
        reason_has=("SIGSEGV",),
    ),
    Case(
        "value_error",
        program("""
        x = policy_chosen_logps - policy_rejected_logps
        raise ValueError("the candidate gave up")  # <-- line
    """),
        ("error",),
        reason_has=("ValueError: the candidate gave up",),
    ),
    Case(
        "multiline_exception",
        program("""
        message = "first line" + chr(10) + "second line" + chr(10) + "z" * 5000
        raise RuntimeError(message)  # <-- line
    """),
        ("error",),
        reason_has=("RuntimeError: first line",),
        reason_lacks=("second line",),
    ),
    Case(
        "sys_exit",
        program("""
        import sys
        sys.exit(3)  # <-- line
    """),
        ("error",),
        reason_has=("SystemExit",),
    ),
    Case(
        "os_exit_early",
        program("""
        import os
        os._exit(0)
    """),
        ("crashed",),
        reason_has=("without a result",),
    ),
    Case(
        "exit_at_import",
        """\
import os

import torch
import torch.nn.functional as F

os._exit(0)


def loss(a, b, c, d, beta):
    return a - b
""",
        ("crashed",),
        reason_has=("without a result",),
    ),
    Case(
        "syntax_error",
        program("""
        return (policy_chosen_logps -  # <-- line
    """),
        ("parse",),
    ),
    Case("no_loss_function", "import torch\n\ndef lost(a, b, c, d, beta):\n    return a\n", ("parse",)),
    # ------------------------------------------------------------------ contract
    Case(
        "nan",
        program("""
        return (policy_chosen_logps - policy_rejected_logps) * float("nan")
    """),
        ("invalid",),
        reason_has=("NaN",),
    ),
    Case(
        "inf",
        program("""
        return (policy_chosen_logps - policy_rejected_logps).abs() + float("inf")
    """),
        ("invalid",),
        reason_has=("infinite",),
    ),
    Case(
        "float64",
        program(
            DPO_BODY.replace("return -F.logsigmoid(beta * logits)", "return -F.logsigmoid(beta * logits).double()")
        ),
        ("invalid",),
        reason_has=("float64",),
    ),
    Case(
        "int_dtype",
        program(
            DPO_BODY.replace("return -F.logsigmoid(beta * logits)", "return (-F.logsigmoid(beta * logits)).long()")
        ),
        ("invalid",),
        reason_has=("int64",),
    ),
    Case(
        "scalar",
        program(DPO_BODY.replace("return -F.logsigmoid(beta * logits)", "return -F.logsigmoid(beta * logits).mean()")),
        ("invalid",),
        reason_has=("shape ()",),
    ),
    Case(
        "column",
        program(
            DPO_BODY.replace("return -F.logsigmoid(beta * logits)", "return -F.logsigmoid(beta * logits).unsqueeze(1)")
        ),
        ("invalid",),
        reason_has=("shape (10, 1)",),
    ),
    Case(
        "nan_in_training",
        program(
            """
        calls[0] += 1
        logits = policy_chosen_logps - policy_rejected_logps
        out = -F.logsigmoid(beta * (logits - reference_chosen_logps + reference_rejected_logps))
        return out * float("nan") if calls[0] > 4 else out
    """,
            header="calls = [0]",
        ),
        ("invalid",),
        stage="train",
        reason_has=("clean seed 0", "NaN"),
    ),
    # ------------------------------------------------------------------ the walls below the policy (evaluation
    # integrity): no socket of any family, a bounded number of descriptors, only the project's packages visible
    Case(
        "unix_socket_and_socketpair",
        program("""
        import socket
        report = []
        for name, make in (("unix", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)),
                           ("pair", socket.socketpair)):
            try:
                make()
                report.append(f"{name}=OPENED")
            except OSError as exc:
                report.append(f"{name}={type(exc).__name__}")
        raise ValueError(" ".join(report))  # <-- line
    """),
        ("error",),
        reason_has=("unix=PermissionError", "pair=PermissionError"),
        reason_lacks=("OPENED",),
    ),
    Case(
        "descriptor_exhaustion",
        program("""
        held = []
        while True:
            held.append(open(f"held-{len(held)}", "w"))  # <-- line
    """),
        ("error",),
        reason_has=("Too many open files",),
    ),
    Case(
        "read_the_checkout",
        program("""
        import os
        report = []
        for name in ("README.md", ".git/HEAD", "runs.db", "pyproject.toml", ".gitignore"):
            try:
                with open(os.path.join("@PROJECT@", name), "rb") as fh:
                    report.append(f"OPENED {name}: {fh.read(40)!r}")
            except OSError as exc:
                report.append(f"{name}: {type(exc).__name__}")
        raise ValueError("; ".join(report))  # <-- line
    """),
        ("error",),
        reason_lacks=("OPENED",),
    ),
    # ------------------------------------------------------------------ the run-time guard (sandbox.jail.guard)
    # attacks that once passed the static policy; the guarded compiler or the guard refuses them
    Case(
        "generator_frame_builtins",
        program("""
        g = (i for i in [0])  # <-- line
        b = g.gi_frame.f_builtins
        os = b["__import__"]("os")
        os.system("touch @OUTSIDE_TMP@/generator-frame-ran")
    """),
        ("parse",),
        reason_has=("GuardRefusal", "generator expressions are not allowed"),
        guarded=True,
    ),
    Case(
        "call_result_module",
        program("""
        T = next(iter([F.torch]))  # <-- line
        T.set_num_threads(64)
        T.storage.io.FileIO("@OUTSIDE_TMP@/call-result-ran", "w")
    """),
        ("error",),
        reason_has=("GuardError", "'torch' of module 'torch.nn.functional' is not allowed"),
        guarded=True,
    ),
    Case(
        "call_result_global_state",
        program("""
        T = (lambda: torch)()
        T.set_num_threads(64)  # <-- line
    """),
        ("error",),
        reason_has=("GuardError", "'set_num_threads' of module 'torch'", "global torch state"),
        guarded=True,
    ),
    Case(
        "call_result_tensor_storage",
        program("""
        t = max([policy_chosen_logps], key=len)
        s = t.untyped_storage()  # <-- line
    """),
        ("error",),
        reason_has=("GuardError", "'untyped_storage' of a torch.Tensor", "raw storage"),
        guarded=True,
    ),
    Case(
        "format_string_dunders",
        program("""
        def helper():
            return 0
        text = "{0.__globals__[__builtins__].__loader__}".format(helper)  # <-- line
        raise ValueError(text)
    """),
        ("error",),
        reason_has=("GuardError", "'format' of a str is not allowed"),
        reason_lacks=("_frozen_importlib",),
        guarded=True,
    ),
]

BY_NAME = {case.name: case for case in CASES}

# ---------------------------------------------------------------------- evaluation hacks (train stage)

#: DPO that also replaces the trusted scorer in every module the sandbox process has loaded
PATCH_SCORER = program(
    DPO_BODY,
    header="""
import sys

def _fake_score(*args, **kwargs):
    return {"fitness": 1e9, "win_rate": 1.0, "kl": 0.0, "reward_gain": 1e9, "pref_accuracy": 1.0}

for _name in ("discovery.tasks.preference.env", "discovery.tasks.preference.task"):
    _module = sys.modules.get(_name)
    if _module is not None:
        _module.score_policy = _fake_score
_task = getattr(sys.modules.get("discovery.tasks.preference.task"), "TASK", None)  # not in the jail at all
if _task is not None:
    type(_task).score = lambda self, *args, **kwargs: 1e9
print('{"fitness": 1e9}')
""",
)

#: DPO that prints a fake fitness and plants a fake result.pt before training normally
FAKE_RESULT = program(
    DPO_BODY,
    header="""
import json
import os

print(json.dumps({"fitness": 1e9, "status": "ok"}))
torch.save({"status": "ok", "stage": "train", "reason": "", "outputs": {"clean/0": {"fitness": 1e9}}},
           "result.pt")
with open(os.path.join(os.environ.get("HOME", "."), "result.json"), "w") as fh:
    fh.write(json.dumps({"fitness": 1e9}))
""",
)

# ---------------------------------------------------------------------- leaks between candidates

#: candidate A: leaves traces everywhere it can, then behaves
LEAVE_TRACES = program(
    DPO_BODY,
    header="""
import builtins
import ctypes
import os
import sys

for _where in (os.getcwd(), os.environ.get("HOME", "."), os.environ.get("TMPDIR", "."), "/tmp", "/dev/shm",
               os.path.dirname(os.getcwd())):
    try:
        with open(os.path.join(_where, "hostile-trace"), "w") as _fh:
            _fh.write("trace")
    except OSError:
        pass
_libc = ctypes.CDLL(None, use_errno=True)
_shm = _libc.shmget(0x5EC12E7, 4096, 0o1666)  # IPC_CREAT | 0666: survives this process unless isolated
if _shm >= 0:
    _addr = _libc.shmat(_shm, None, 0)
builtins.HOSTILE_TRACE = True
torch.HOSTILE_TRACE = True
sys.modules["sandbox.jail.function_server"].HOSTILE_TRACE = True
F.log_softmax = lambda *args, **kwargs: None
torch.manual_seed = lambda *args, **kwargs: None
""",
)

#: candidate B: behaves only if nothing of A is visible
LOOK_FOR_TRACES = program(
    """
    import builtins
    import ctypes
    import os
    import sys
    seen = []
    for where in (os.getcwd(), os.environ.get("HOME", "."), os.environ.get("TMPDIR", "."), "/tmp", "/dev/shm",
                  os.path.dirname(os.getcwd())):
        try:
            if os.path.exists(os.path.join(where, "hostile-trace")):
                seen.append("file in " + where)
        except OSError:
            pass
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.shmget(0x5EC12E7, 0, 0) >= 0:
        seen.append("shared memory segment")
    if getattr(builtins, "HOSTILE_TRACE", False):
        seen.append("builtins")
    if getattr(torch, "HOSTILE_TRACE", False):
        seen.append("torch global")
    if getattr(sys.modules["sandbox.jail.function_server"], "HOSTILE_TRACE", False):
        seen.append("server module global")
    if F.log_softmax(torch.zeros(2), dim=0) is None:
        seen.append("patched log_softmax")
    if seen:
        raise ValueError("LEAKED: " + ", ".join(seen))  # <-- line
""",
    dpo_tail=True,
)
