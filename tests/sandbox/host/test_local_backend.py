"""The local backend: warm template vs fresh interpreter, its notes, and its self-repair."""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from discovery.evaluation import Evaluator
from discovery.tasks import get_task
from discovery.training import run_job
from sandbox.base import Job, Limits, Status
from sandbox.host import local
from sandbox.host.jobfiles import input_key
from sandbox.host.local import LocalSandbox, bubblewrap_problem
from sandbox.jail import runner
from tests.sandbox.listeners import unix_listener

TASK = get_task("preference")
DPO = TASK.baselines["dpo"]
LIMITS = Limits(wall_seconds=60, memory_mb=2048, max_processes=64)
KEY = input_key("clean", 0)

needs_bwrap = pytest.mark.skipif(
    bool(bubblewrap_problem()) and os.environ.get("CI") != "true",
    reason=f"bubblewrap unusable here: {bubblewrap_problem()}",
)


@pytest.fixture(scope="module")
def inputs() -> dict[str, Any]:
    return {KEY: Evaluator(TASK).inputs_for(TASK.suite("discover"), "clean", 0)}


@pytest.fixture(scope="module")
def warm() -> Iterator[LocalSandbox]:
    with LocalSandbox() as box:
        yield box


def past_the_guard(job: Job) -> Job:
    """``job`` with the run-time guard of candidate code (sandbox/jail/guard.py) switched off: these tests are
    about the backend and the OS walls, which must hold for code that got past every check before them."""
    return dataclasses.replace(job, guarded=False)


def train_job(source: str = DPO) -> Job:
    return Job(task="preference", source=source, stage="train", configs=["clean"], seeds=[0], limits=LIMITS)


@needs_bwrap
def test_warm_and_fresh_give_bitwise_identical_dpo_outputs(warm: LocalSandbox, inputs: dict[str, Any]):
    hot = run_job(warm, train_job(), inputs)
    with LocalSandbox(warm=False) as fresh_box:
        cold = run_job(fresh_box, train_job(), inputs)
    again = run_job(warm, train_job(), inputs)
    for outcome in (hot, cold, again):
        assert outcome.status is Status.OK, (outcome.reason, outcome.stderr_tail)
    reference = hot.outputs[KEY]["policy"]
    for other in (cold, again):
        policy = other.outputs[KEY]["policy"]
        assert policy.keys() == reference.keys()
        for name, tensor in reference.items():
            assert torch.equal(policy[name], tensor), name
        for curve in ("curve_loss", "curve_grad_norm", "curve_margin"):
            assert torch.equal(other.outputs[KEY][curve], hot.outputs[KEY][curve])


@needs_bwrap
def test_isolation_notes_name_the_walls(warm: LocalSandbox):
    notes = " ".join(warm.isolation_notes)
    assert "bubblewrap" in notes
    assert "seccomp" in notes and "rlimits" in notes
    if os.geteuid() == 0:
        assert f"uid {warm.job_uid}" in notes


def test_each_sandbox_runs_its_jobs_as_its_own_uid():
    if os.geteuid() != 0:
        pytest.skip("jobs keep the caller's uid when the sandbox is not started as root")
    with (
        LocalSandbox(isolation="none" if bubblewrap_problem() else "auto") as a,
        LocalSandbox(isolation="none" if bubblewrap_problem() else "auto") as b,
    ):
        assert a.job_uid != b.job_uid
        assert a.job_uid not in (0, 65534) and b.job_uid not in (0, 65534)


@needs_bwrap
def test_template_restarts_after_being_killed(warm: LocalSandbox):
    first = run_job(warm, Job(task="preference", source=DPO, stage="contract", limits=LIMITS))
    assert first.ok, first.reason
    assert warm._proc is not None
    old_pid = warm._proc.pid
    os.killpg(old_pid, signal.SIGKILL)  # the whole template process group (bwrap and the template)
    warm._proc.wait(timeout=10)
    second = run_job(warm, Job(task="preference", source=DPO, stage="contract", limits=LIMITS))
    assert second.ok, (second.reason, second.stderr_tail)
    assert warm._proc is not None and warm._proc.pid != old_pid


@needs_bwrap
def test_template_killed_during_a_job_is_a_crash_then_replaced(warm: LocalSandbox):

    sleeper = "import time\n\ndef loss(a, b, c, d, beta):\n    time.sleep(30)\n    return a\n"
    assert run_job(warm, Job(task="preference", source=DPO, stage="contract", limits=LIMITS)).ok
    assert warm._proc is not None
    victim = warm._proc.pid
    killer = threading.Timer(2.0, lambda: os.killpg(victim, signal.SIGKILL))
    killer.start()
    try:
        outcome = run_job(warm, past_the_guard(Job(task="preference", source=sleeper, stage="contract", limits=LIMITS)))
    finally:
        killer.cancel()
    assert outcome.status is Status.CRASHED and "template died" in outcome.reason
    after = run_job(warm, Job(task="preference", source=DPO, stage="contract", limits=LIMITS))
    assert after.ok, after.reason


@needs_bwrap
def test_scratch_is_wiped_after_every_job(warm: LocalSandbox):
    writer = (
        "import os\n\ndef loss(a, b, c, d, beta):\n    open('left-behind', 'w').write('x')\n    return (a - b) * beta\n"
    )
    outcome = run_job(warm, past_the_guard(Job(task="preference", source=writer, stage="contract", limits=LIMITS)))
    assert outcome.ok, outcome.reason
    assert list(warm.root.iterdir()) == []


@needs_bwrap
@pytest.mark.parametrize("mode", ["warm", "fresh"])
def test_timeout_names_the_line_in_both_modes(mode: str, warm: LocalSandbox):
    looper = "def loss(a, b, c, d, beta):\n    while True:\n        pass\n"
    limits = Limits(wall_seconds=4 if mode == "warm" else 8, memory_mb=2048, max_processes=64)
    job = Job(task="preference", source=looper, stage="contract", limits=limits)
    start = time.monotonic()
    if mode == "warm":
        outcome = run_job(warm, job)
    else:
        with LocalSandbox(warm=False) as box:
            outcome = run_job(box, job)
    assert time.monotonic() - start < limits.wall_seconds + 15
    assert outcome.status is Status.TIMEOUT
    assert "line 2:" in outcome.reason or "line 3:" in outcome.reason, outcome.reason


@needs_bwrap
def test_bubblewrap_view_is_reachable_by_the_job_user(warm: LocalSandbox, tmp_path: Path):
    """bwrap run as root creates the directories leading to its binds 0700; ours are 0755, so
    the unprivileged job user can import lazily from the project and the Python prefix."""
    probe = (
        "import importlib\n\ndef loss(a, b, c, d, beta):\n"
        "    importlib.import_module('sandbox.host.jobfiles')\n"
        "    importlib.import_module('json.tool')\n"
        "    return (a - b) * beta\n"
    )
    outcome = run_job(warm, past_the_guard(Job(task="preference", source=probe, stage="contract", limits=LIMITS)))
    assert outcome.ok, (outcome.reason, outcome.stderr_tail)


LEAKY = """import torch
import torch.nn.functional as F

STATE = {"calls": 0}


def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    STATE["calls"] += 1
    if STATE["calls"] > 200:  # one training calls the loss 150 times; more means state leaked across trainings
        raise RuntimeError("module state survived from an earlier training")
    h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * h)
"""


@needs_bwrap
def test_each_training_gets_a_fresh_copy_of_the_candidate(warm: LocalSandbox, inputs: dict[str, Any]):
    """Module-level state cannot carry information from one (configuration, seed) to the next."""
    both = dict(inputs)
    both[input_key("clean", 1)] = Evaluator(TASK).inputs_for(TASK.suite("discover"), "clean", 1)
    job = Job(task="preference", source=LEAKY, stage="train", configs=["clean"], seeds=[0, 1], limits=LIMITS)
    outcome = run_job(warm, job, both)
    assert outcome.ok, outcome.reason
    assert set(outcome.outputs) == {input_key("clean", 0), input_key("clean", 1)}


# ------------------------------------------------------------------------------ the jail's view and walls

ROOT = Path(__file__).resolve().parents[3]

#: reports what the job sees of the checkout (the policy is bypassed: LocalSandbox.run gets it directly)
LOOK_AT_THE_CHECKOUT = """import os
import resource


def loss(a, b, c, d, beta):
    root = os.environ["PROBE_ROOT"]
    read, errors = [], set()
    for name in os.environ["PROBE_FILES"].split(","):
        try:
            with open(os.path.join(root, name), "rb") as fh:
                read.append(name + "=" + repr(fh.read(20)))
        except OSError as exc:
            errors.add(type(exc).__name__)
    import sandbox.host.jobfiles  # noqa: F401 - the jail's own package still imports
    try:
        import discovery.tasks.preference.env  # noqa: F401 - the environments must not be there
        errors.add("discovery-importable")
    except ImportError:
        pass
    listing = ",".join(sorted(os.listdir(root)))
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    raise ValueError(f"listing={listing} nofile={nofile} errors={','.join(sorted(errors))} read={read}")
"""


@needs_bwrap
def test_jail_shows_only_the_sandbox_package_of_the_checkout(tmp_path: Path):
    """README.md, .git, the archive and planted secrets next to the packages are out of the job's
    sight, and so is ``discovery/`` (the tasks, their environments, the trainer): the checkout
    directory holds only what the function server needs (``sandbox/``, a venv in it)."""
    token = os.urandom(4).hex()
    planted = [ROOT / f"runs-secret-{token}.db", ROOT / f".env.secret-{token}"]
    for path in planted:  # unique names, removed in the finally below: nothing stays in the checkout
        path.write_text("SECRET-IN-THE-CHECKOUT")
    files = ["README.md", ".git/HEAD", "pyproject.toml", *(p.name for p in planted)]
    try:
        with LocalSandbox(env_extra={"PROBE_ROOT": str(ROOT), "PROBE_FILES": ",".join(files)}) as box:
            outcome = run_job(
                box,
                past_the_guard(Job(task="preference", source=LOOK_AT_THE_CHECKOUT, stage="contract", limits=LIMITS)),
            )
    finally:
        for path in planted:
            path.unlink(missing_ok=True)
    assert outcome.status is Status.ERROR, outcome.reason
    assert "SECRET" not in outcome.reason + outcome.stderr_tail
    seen = re.match(r"ValueError: listing=(\S*) nofile=(\d+) errors=(\S*) read=\[\]", outcome.reason)
    assert seen, outcome.reason  # nothing was read
    assert seen.group(3) == "FileNotFoundError" and int(seen.group(2)) == runner.MAX_OPEN_FILES
    venv = Path(sys.prefix).resolve()
    allowed = {"sandbox"} | ({venv.relative_to(ROOT).parts[0]} if venv.is_relative_to(ROOT) else set())
    listing = set(seen.group(1).split(","))
    assert listing <= allowed and "sandbox" in listing, listing


def test_bubblewrap_command_never_binds_the_checkout_root():
    if not local.jail_view().checkout:
        pytest.skip("the project is installed into site-packages: there is no checkout to keep out")
    args = local.bubblewrap_command(Path("/tmp/scratch-for-args"))
    binds = [args[i + 1] for i, arg in enumerate(args) if arg in ("--ro-bind", "--bind")]
    root = str(local.project_root().resolve())
    assert f"{root}/sandbox" in binds and f"{root}/discovery" not in binds
    assert not [b for b in binds if root == b or root.startswith(b.rstrip("/") + "/")]
    assert str(Path.home()) not in binds and "/work" not in binds


@needs_bwrap
def test_a_checkout_inside_a_bound_directory_is_covered(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """When the checkout lies inside a directory the jail binds (here: pretend it is the standard
    library under /usr), an empty tmpfs covers it and only the packages are bound on top."""
    stdlib = Path(os.__file__).resolve().parent
    monkeypatch.setattr(local, "project_root", lambda: stdlib)
    monkeypatch.setattr(local, "PACKAGES", ("json", "email"))
    view = local.jail_view()
    assert view.hide and view.checkout == str(stdlib)
    assert set(view.inside) == {str(stdlib / "json"), str(stdlib / "email")}
    args = local.bubblewrap_command(tmp_path)
    listing = subprocess.run([*args, "/bin/ls", "-A", str(stdlib)], capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0, listing.stderr
    assert sorted(listing.stdout.split()) == ["email", "json"]


@needs_bwrap
def test_unix_socket_under_a_bound_path_hears_nothing(tmp_path: Path):
    """A 0777 Unix listener in the directory the jail binds (the sandbox's own root) is visible to
    the job, but the job cannot even create a socket, of any family, nor a socketpair."""
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    path = jobs / "listener.sock"
    probe = f"""import os
import socket
import stat


def loss(a, b, c, d, beta):
    report = ["visible" if stat.S_ISSOCK(os.stat({str(path)!r}).st_mode) else "missing"]
    for name, make in (("unix", lambda: socket.socket(socket.AF_UNIX)), ("pair", socket.socketpair)):
        try:
            client = make()
            if name == "unix":
                client.connect({str(path)!r})
                client.sendall(b"escaped")
            report.append(name + "=OPENED")
        except OSError as exc:
            report.append(name + "=" + type(exc).__name__ + str(exc.errno))
    raise ValueError(" ".join(report))
"""
    with unix_listener(str(path)) as received, LocalSandbox(jobs_root=jobs) as box:
        outcome = run_job(box, past_the_guard(Job(task="preference", source=probe, stage="contract", limits=LIMITS)))
        time.sleep(0.5)
    assert outcome.status is Status.ERROR, outcome.reason
    assert f"visible unix=PermissionError{errno.EPERM} pair=PermissionError{errno.EPERM}" in outcome.reason
    assert received == []


EXHAUST_DESCRIPTORS = """import torch.nn.functional as F

HELD = []


def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    while True:
        HELD.append(open(f"held-{len(HELD)}", "w"))
"""


@needs_bwrap
@pytest.mark.parametrize("mode", ["warm", "fresh"])
def test_a_candidate_that_uses_up_its_descriptors_fails_at_its_line(mode: str, warm: LocalSandbox):
    """EMFILE at the candidate's own line, an error with its reason, never a crash: the runner's
    held-back descriptors still write the result."""
    job = past_the_guard(Job(task="preference", source=EXHAUST_DESCRIPTORS, stage="contract", limits=LIMITS))
    if mode == "warm":
        outcome = run_job(warm, job)
    else:
        with LocalSandbox(warm=False) as box:
            outcome = run_job(box, job)
    assert outcome.status is Status.ERROR, (outcome.reason, outcome.stderr_tail)
    assert "Too many open files" in outcome.reason and outcome.line == 8, outcome.reason
    assert "line 8: `HELD.append(open(" in outcome.reason
    assert run_job(warm, Job(task="preference", source=DPO, stage="contract", limits=LIMITS)).ok
