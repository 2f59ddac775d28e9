"""The hostile-candidate corpus (tests/sandbox/hostile) against both backends.

Every candidate goes to the sandbox directly, past the static policy: these tests are about
the OS walls behind it. Each case must end within its limits with an expected status and a
one-line reason (naming the candidate's line where there is one); the parent process, the
other workers and the machine stay unharmed (no connection reaches the host's loopback,
nothing is written outside the scratch area, the API key in the parent's environment never
shows up anywhere in an outcome, no process or container is left behind); and nothing one
candidate did is visible to the next.

Backends: ``local`` (bubblewrap, warm template) always, ``docker`` through the shared
``docker_image`` fixture (skipped without an engine, failing under CI=true). One sandbox per
backend serves the whole module, so every case also checks that the previous ones left it
working. A table of case -> status/reason is printed in the terminal summary.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from discovery.evaluation import Evaluator
from discovery.tasks import get_task
from discovery.training import run_job
from sandbox.base import Job, Limits, Outcome, Sandbox
from sandbox.host.jobfiles import input_key
from sandbox.host.local import LocalSandbox, bubblewrap_problem
from tests.conftest import HOSTILE_ROWS
from tests.sandbox import hostile
from tests.sandbox.hostile import CASES, Case

ROOT = Path(__file__).resolve().parents[2]
SECRET_NAME = "OPENAI_API_KEY"
SECRET = "sk-secret-test"
TASK = get_task("preference")
DPO = TASK.baselines["dpo"]
QUICK = Limits(wall_seconds=60, cpu_seconds=60, memory_mb=2048, file_mb=64, max_processes=64, threads=1)
#: a killed job must be over within its wall limit plus this much (container start, kill, cleanup)
SLACK_SECONDS = 30.0
#: sandboxes per backend running the corpus side by side
WORKERS = 2


# ------------------------------------------------------------------------------------ fixtures


class Listener:
    """A TCP listener on the host's 127.0.0.1 (never a routable address) that counts accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(peer)
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture(scope="module")
def secret_env() -> Iterator[None]:
    """The agent's API key in the parent's environment, set before any sandbox exists."""
    old = os.environ.get(SECRET_NAME)
    os.environ[SECRET_NAME] = SECRET
    yield
    if old is None:
        os.environ.pop(SECRET_NAME, None)
    else:
        os.environ[SECRET_NAME] = old


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


@pytest.fixture(scope="module")
def outside() -> Iterator[dict[str, Path]]:
    """Directories outside every scratch area: under /tmp and next to the project."""
    dirs = {
        "OUTSIDE_TMP": Path(tempfile.mkdtemp(prefix="hostile-outside-", dir="/tmp")),
        "OUTSIDE_WORK": Path(tempfile.mkdtemp(prefix="hostile-outside-", dir=ROOT.parent)),
    }
    yield dirs
    for path in dirs.values():
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module", params=["local", "docker"])
def sandbox(request: pytest.FixtureRequest, secret_env: None) -> Iterator[Sandbox]:
    """One sandbox per backend for the whole module (created after the secret is set)."""
    if request.param == "local":
        if bubblewrap_problem():
            if os.environ.get("CI") == "true":
                pytest.fail(bubblewrap_problem())
            pytest.skip(bubblewrap_problem())  # never run this corpus without the filesystem wall
        box: Sandbox = LocalSandbox()
    else:
        from sandbox.host.docker_backend import DockerSandbox

        box = DockerSandbox(image=request.getfixturevalue("docker_image"))
    yield box
    box.close()


@pytest.fixture(scope="module")
def evaluator() -> Evaluator:
    """An evaluator whose static policy is switched off: the candidates reach the sandbox."""
    ev = Evaluator(TASK, limits=Limits(wall_seconds=90, memory_mb=3072, max_processes=64))
    ev.static_check = lambda source: None  # type: ignore[method-assign]
    return ev


@pytest.fixture(scope="module")
def train_inputs(evaluator: Evaluator) -> dict[str, Any]:
    suite = TASK.suite("discover")
    return {input_key("clean", 0): evaluator.inputs_for(suite, "clean", 0)}


# ------------------------------------------------------------------------------------ helpers


def job_for(case: Case, source: str) -> Job:
    limits = Limits(
        wall_seconds=case.wall_seconds,
        cpu_seconds=case.cpu_seconds,
        memory_mb=case.memory_mb,
        file_mb=case.file_mb,
        max_processes=case.max_processes,
        threads=1,
    )
    return Job(
        task="preference",
        source=source,
        stage=case.stage,
        suite="discover",
        configs=["clean"],
        seeds=[0],
        limits=limits,
        guarded=case.guarded,
    )


class Unguarded(Sandbox):
    """Runs every job past the run-time guard: the OS walls behind it are what is tested."""

    def __init__(self, box: Sandbox):
        self.box, self.name, self.isolation_notes = box, box.name, box.isolation_notes

    def session(self, spec: Any, seconds: float, max_payload: int = 1 << 28) -> Any:
        return self.box.session(dataclasses.replace(spec, guarded=False), seconds, max_payload)


def leftovers(box: Sandbox) -> set[str]:
    """What this sandbox left running: job processes under its template, or containers other than
    the worker's own (which holds the warm template between sessions)."""
    if isinstance(box, LocalSandbox):
        proc = box._proc
        if proc is None or proc.poll() is not None:
            return set()
        parents: dict[int, int] = {}
        uids: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                uids[int(entry.name)] = entry.stat().st_uid
            except (OSError, ValueError, IndexError):
                continue
        found = set()
        for pid in parents:
            ancestor = parents.get(pid)
            while ancestor and ancestor != proc.pid:
                ancestor = parents.get(ancestor)
            if ancestor == proc.pid and uids.get(pid) != 0:
                found.add(str(pid))
        return found
    client = box.client  # type: ignore[attr-defined]
    live = getattr(getattr(box, "_container", None), "id", None)  # the worker's own container, kept warm
    return {c.id for c in client.containers.list(all=True, filters={"label": "discovery.sandbox=job"}) if c.id != live}


def assert_contained(outcome: Outcome, listener: Listener, outside: dict[str, Path]) -> None:
    """The parent and the machine are unharmed, and nothing secret came back."""
    for text in (outcome.reason, outcome.stderr_tail, repr(outcome.outputs)):
        assert SECRET not in text
    assert "\n" not in outcome.reason and outcome.reason.strip() == outcome.reason
    assert len(outcome.reason) <= 300
    assert listener.accepted == []
    for directory in outside.values():
        assert list(directory.iterdir()) == [], f"written outside the sandbox: {list(directory.iterdir())}"
    assert not (ROOT / "pwned-by-candidate").exists()
    assert os.environ[SECRET_NAME] == SECRET  # the parent process's own state is untouched


# ------------------------------------------------------------------------------------ the corpus


def make_sandbox(backend: str, docker_image: str | None = None) -> Sandbox:
    if backend == "local":
        return LocalSandbox()
    from sandbox.host.docker_backend import DockerSandbox

    return DockerSandbox(image=docker_image or "")


@pytest.fixture(scope="module")
def corpus(
    sandbox: Sandbox,
    listener: Listener,
    outside: dict[str, Path],
    train_inputs: dict[str, Any],
    request: pytest.FixtureRequest,
) -> dict[str, tuple[Outcome, float]]:
    """Every case of the corpus run once on this backend: (outcome, seconds it took).

    WORKERS sandboxes run the cases concurrently (so every case also runs next to another
    hostile one): the module's shared sandbox plus fresh ones of the same backend. The
    slowest cases (those that must be killed) go first.
    """
    backend = sandbox.name
    image = request.getfixturevalue("docker_image") if backend == "docker" else None
    before = leftovers(sandbox)
    extra = [make_sandbox(backend, image) for _ in range(WORKERS - 1)]
    idle: queue.Queue[Sandbox] = queue.Queue()
    for box in [sandbox, *extra]:
        idle.put(box)
    values = dict(
        PORT=str(listener.port), PROJECT=str(ROOT), SECRET_NAME=SECRET_NAME, **{k: str(v) for k, v in outside.items()}
    )

    def run(case: Case) -> tuple[Outcome, float]:
        box = idle.get()
        try:
            start = time.monotonic()
            inputs = train_inputs if case.stage == "train" else None
            outcome = run_job(box, job_for(case, case.render(**values)), inputs)
            return outcome, time.monotonic() - start
        finally:
            idle.put(box)

    ordered = sorted(CASES, key=lambda c: -min(c.wall_seconds, c.cpu_seconds + 5))
    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            futures = {case.name: pool.submit(run, case) for case in ordered}
            results = {name: future.result() for name, future in futures.items()}
    finally:
        for box in extra:
            box.close()
    for case in CASES:
        outcome = results[case.name][0]
        request.config.stash[HOSTILE_ROWS].append((backend, case.name, outcome.status.value, outcome.reason))
    assert leftovers(sandbox) <= before, "the corpus left processes or containers behind"
    return results


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_candidate_is_contained(
    case: Case,
    sandbox: Sandbox,
    corpus: dict[str, tuple[Outcome, float]],
    listener: Listener,
    outside: dict[str, Path],
):
    outcome, elapsed = corpus[case.name]
    assert outcome.status.value in case.expected(sandbox.name), (outcome.status, outcome.reason, outcome.stderr_tail)
    assert outcome.reason, "every failure needs a reason"
    for text in case.reason_has:
        assert text in outcome.reason, outcome.reason
    for text in case.reason_lacks:
        assert text not in outcome.reason, outcome.reason
    if case.lines:
        assert any(f"line {n}:" in outcome.reason for n in case.lines), (case.lines, outcome.reason)
        assert outcome.line in case.lines
    assert elapsed < case.wall_seconds + SLACK_SECONDS
    assert_contained(outcome, listener, outside)


#: corpus cases the static policy lets through: they rely on the OS walls and the contract alone
POLICY_PASSES = {
    "infinite_loop",
    "cpu_limit",
    "memory_bomb_100gb",
    "memory_bomb_growing_list",
    "memory_bomb_torch",
    "recursion_without_end",
    "value_error",
    "multiline_exception",
    "nan",
    "inf",
    "float64",
    "int_dtype",
    "scalar",
    "column",
    "nan_in_training",
}


def test_which_cases_the_static_policy_already_stops():
    """The corpus is about the walls behind the policy; every case that reaches for os, sys,
    sockets, files or signals is stopped by the policy first (the rest need no such access)."""
    from sandbox.static.policy import Policy, check_source

    policy = Policy(allowed_imports=TASK.slot.allowed_imports, slot_name=TASK.slot.name)
    values = dict(PORT="1", PROJECT="/p", SECRET_NAME=SECRET_NAME, OUTSIDE_TMP="/t", OUTSIDE_WORK="/w")
    passing = {case.name for case in CASES if not check_source(case.render(**values), policy)}
    assert passing == POLICY_PASSES
    for source in (hostile.PATCH_SCORER, hostile.FAKE_RESULT, hostile.LEAVE_TRACES, hostile.LOOK_FOR_TRACES):
        assert check_source(source, policy)


# ------------------------------------------------------------------------------------ evaluation hacks


def test_patched_scorer_and_fake_results_do_not_change_fitness(sandbox: Sandbox, evaluator: Evaluator):
    """Scoring happens on the trusted side: what the candidate patches or prints in its own
    process, or plants as result.pt before training, cannot move its fitness."""
    reports = {
        name: evaluator.evaluate(source, Unguarded(sandbox), configs=["clean"], seeds=[0])
        for name, source in (("dpo", DPO), ("patch", hostile.PATCH_SCORER), ("fake", hostile.FAKE_RESULT))
    }
    for name, report in reports.items():
        assert report.ok, (name, report.one_line(), report.log_tail)
    fitness = reports["dpo"].fitness
    assert fitness is not None and abs(fitness.mean) < 100
    assert reports["patch"].fitness == fitness
    assert reports["fake"].fitness == fitness
    assert '{"fitness": 1e9' in reports["patch"].log_tail  # it did run, and its print was ignored


# ------------------------------------------------------------------------------------ isolation


def test_nothing_leaks_into_the_next_candidate(sandbox: Sandbox):
    first = run_job(
        sandbox, Job(task="preference", source=hostile.LEAVE_TRACES, stage="contract", limits=QUICK, guarded=False)
    )
    assert first.ok, (first.reason, first.stderr_tail)
    look = hostile.LOOK_FOR_TRACES
    second = run_job(sandbox, Job(task="preference", source=look, stage="contract", limits=QUICK, guarded=False))
    assert second.ok, second.reason


def test_the_same_sandbox_keeps_working_after_timeouts_and_crashes(sandbox: Sandbox):
    template = sandbox._proc.pid if isinstance(sandbox, LocalSandbox) and sandbox._proc else None
    names = ["sleep_forever", "c_stack_overflow"]
    if isinstance(sandbox, LocalSandbox):  # the cases that hit the shared template hardest
        names += ["os_exit_early", "memory_bomb_growing_list", "signal_everyone", "thread_bomb"]
    for case in (hostile.BY_NAME[name] for name in names):
        quick = Case(
            case.name,
            case.source,
            case.expect,
            wall_seconds=min(case.wall_seconds, 6.0),
            memory_mb=case.memory_mb,
            max_processes=case.max_processes,
        )
        broken = run_job(sandbox, job_for(quick, case.render()))
        assert broken.status.value in case.expected(sandbox.name), (case.name, broken.reason)
        after = run_job(sandbox, Job(task="preference", source=DPO, stage="contract", limits=QUICK))
        assert after.ok, (case.name, after.reason, after.stderr_tail)
    if template is not None:  # the warm template survived every one of them
        assert isinstance(sandbox, LocalSandbox) and sandbox._proc is not None
        assert sandbox._proc.pid == template


def test_other_workers_are_unharmed(secret_env: None, train_inputs: dict[str, Any]):
    """Bombs in one local worker while another trains DPO next to it."""
    if bubblewrap_problem():
        pytest.skip(bubblewrap_problem())
    bombs = [
        hostile.BY_NAME[name]
        for name in (
            "memory_bomb_growing_list",
            "fork_bomb",
            "thread_bomb",
            "stdout_spam",
            "disk_filler",
            "infinite_loop",
        )
    ]
    results: dict[str, Outcome] = {}
    with LocalSandbox() as noisy, LocalSandbox() as quiet:

        def bomb() -> None:
            for case in bombs:
                quick = Case(
                    case.name,
                    case.source,
                    case.expect,
                    wall_seconds=8.0,
                    file_mb=case.file_mb,
                    memory_mb=case.memory_mb,
                    max_processes=case.max_processes,
                )
                results[case.name] = run_job(noisy, job_for(quick, case.render()))

        thread = threading.Thread(target=bomb)
        thread.start()
        calm: list[Outcome] = []
        while thread.is_alive() or not calm:
            job = Job(task="preference", source=DPO, stage="train", configs=["clean"], seeds=[0], limits=QUICK)
            calm.append(run_job(quiet, job, train_inputs))
        thread.join()
    for case in bombs:
        outcome = results[case.name]
        assert outcome.status.value in case.expected("local"), (case.name, outcome.reason)
    assert calm and all(o.ok for o in calm), [o.reason for o in calm if not o.ok]
    reference = calm[0].outputs[input_key("clean", 0)]["policy"]
    for outcome in calm[1:]:  # the neighbour's bombs did not even perturb the numbers
        policy = outcome.outputs[input_key("clean", 0)]["policy"]
        assert all((policy[k] == reference[k]).all() for k in reference)
