"""The Docker backend against a real engine, with the registry-free test image.

The session fixture ``docker_image`` (tests/conftest.py) starts an engine
(``.ci/docker-engine.sh``) and builds ``discovery-sandbox:test`` (``.ci/docker-test-image.sh``).
When either fails the tests are skipped, except under ``CI=true`` where that is a failure.

Three kinds of test: the engine's walls, with a plain command in a fresh container that has a
worker's walls and a session's identity (a session's own seccomp filter would hide them); the
worker container itself (its configuration, and what a session's process sees from inside it);
and whole sessions and jobs (``run_job``), one warm template serving them one after another.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from discovery.tasks import get_task
from discovery.training import run_job
from sandbox.base import Job, Limits, Outcome, Status
from sandbox.host.docker_backend import (
    CONTAINER_JOB_DIR,
    EVENTS_FIFO,
    IPC_SYSCTLS,
    REQUESTS_FIFO,
    SANDBOX_UID,
    STARTED_SECONDS,
    TEMPLATE_CAPABILITIES,
    TEMPLATE_MEMORY_MB,
    TEMPLATE_PIDS,
    DockerSandbox,
    DockerUnavailable,
    container_limits,
)
from sandbox.host.session import JailEnded
from sandbox.wire import JailSpec

LABEL_FILTER = {"label": "discovery.sandbox=job"}
#: for plain commands in a fresh container
QUICK = Limits(wall_seconds=30, memory_mb=512, max_processes=64, threads=1)
#: for sessions: a child of the template has torch mapped already (its address space counts)
SESSION = Limits(wall_seconds=30, cpu_seconds=30, memory_mb=2048, max_processes=64, threads=1)
DPO = get_task("preference").baselines["dpo"]
#: capability bits (linux/capability.h)
CAP_BITS = {"CHOWN": 0, "KILL": 5, "SETGID": 6, "SETUID": 7}
SECRET = "sk-test-must-not-leak"


@pytest.fixture(scope="session")
def box(docker_image: str):
    sandbox = DockerSandbox(image=docker_image)
    yield sandbox
    sandbox.close()


def _job_containers(box: DockerSandbox) -> set[str]:
    return {c.id for c in box.client.containers.list(all=True, filters=LABEL_FILTER)}


def _py(code: str) -> list[str]:
    return ["python", "-c", code]


def _call(box: DockerSandbox, source: str, limits: Limits = SESSION, seconds: float = 30.0) -> tuple[Any, Outcome]:
    """Call ``f()`` of ``source`` (past the run-time guard: the walls behind it are tested) once in a
    fresh session; (its return value or None, the session's outcome)."""
    spec = JailSpec(source=source, slot="f", guarded=False, limits=limits)
    try:
        with box.session(spec, seconds) as session:
            out = session.request({"op": "call", "args": [], "grad": []})["out"]
    except JailEnded as ended:
        return None, ended.outcome
    assert session.outcome is not None
    return out, session.outcome


def _limits(**changes: Any) -> Limits:
    """SESSION with ``changes``."""
    return replace(SESSION, **changes)


def _probe(box: DockerSandbox, body: str, limits: Limits = SESSION) -> dict[str, Any]:
    """What a session's process reports about itself: ``body`` fills the dict ``out``."""
    lines = "\n".join("    " + line for line in body.strip().splitlines())
    out, outcome = _call(
        box, f"def f():\n    import json, os\n    out = {{}}\n{lines}\n    return json.dumps(out)\n", limits
    )
    assert outcome.ok and out is not None, (outcome.reason, outcome.stderr_tail)
    return json.loads(out)


# ---------------------------------------------------------------- no engine needed


def test_container_limits_leave_room_for_the_template():
    assert container_limits(Limits(memory_mb=1024, max_processes=64, threads=2)) == (
        1024 + TEMPLATE_MEMORY_MB,
        64 + TEMPLATE_PIDS,
        2,
    )
    assert container_limits(Limits(max_processes=0, threads=0))[1:] == (0, 1)  # no pids limit asked: none


@pytest.mark.docker
def test_missing_image_is_reported(docker_image: str):
    with pytest.raises(DockerUnavailable, match="not found locally"):
        DockerSandbox(image="discovery-sandbox:no-such-tag")


# ---------------------------------------------------------------- the engine's walls


@pytest.mark.docker
def test_isolation_notes(box: DockerSandbox):
    notes = " ".join(box.isolation_notes)
    for word in (
        "one docker container per worker",
        "warm template",
        "network",
        "read-only",
        "65534",
        "capabilities",
        "IPC",
        "memory",
        "pids",
        "wiped after each session",
        "no GPU",
    ):
        assert word in notes


@pytest.mark.docker
def test_no_network_not_even_the_hosts_loopback(box: DockerSandbox):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))  # only the host's loopback, never a routable address
    listener.listen(1)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, peer = listener.accept()
            except (TimeoutError, OSError):
                continue
            accepted.append(peer)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    code = f"""
import socket
print("interfaces", sorted(name for _, name in socket.if_nameindex()))
s = socket.socket()
s.settimeout(3)
try:
    s.connect(("127.0.0.1", {port}))
except OSError as exc:
    print("blocked", type(exc).__name__)
else:
    print("CONNECTED")
"""
    try:
        rc, out = box._run_command(_py(code), QUICK)
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
    assert rc == 0, out
    assert "blocked ConnectionRefusedError" in out, out
    assert "CONNECTED" not in out
    assert "interfaces ['lo']" in out, out
    assert accepted == []


@pytest.mark.docker
def test_root_filesystem_is_read_only_and_nothing_else_is_writable(box: DockerSandbox):
    """A worker's container lives on from session to session: nothing outside a session's own
    directory may be writable (no /tmp tmpfs, no /dev/shm), or one candidate could leave files
    for the next."""
    code = """
import errno, sys
for path in ("/owned", "/etc/passwd", sys.prefix + "/owned", "/tmp/owned", "/dev/shm/owned", "/var/tmp/owned"):
    try:
        open(path, "w").write("x")
    except OSError as exc:
        print(path, errno.errorcode[exc.errno])
    else:
        print(path, "WRITTEN")
"""
    rc, out = box._run_command(_py(code), QUICK)
    assert rc == 0, out
    assert "WRITTEN" not in out
    assert "/owned EROFS" in out
    assert "/tmp/owned EROFS" in out
    assert "/dev/shm/owned ENOENT" in out  # ipc_mode=none: no /dev/shm at all


@pytest.mark.docker
def test_no_ipc_object_can_be_created(box: DockerSandbox):
    """SysV shared memory, semaphores and message queues and POSIX message queues would outlive
    a session in the worker's IPC namespace: none can be made."""
    code = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
print("shm", libc.shmget(0x5EC12E7, 4096, 0o1666))
print("sem", libc.semget(0x5EC12E7, 1, 0o1666))
print("msg", libc.msgget(0x5EC12E7, 0o1666))
rt = ctypes.CDLL("librt.so.1", use_errno=True)
print("mq", rt.mq_open(b"/trace", os.O_CREAT | os.O_RDWR, 0o666, None))
"""
    rc, out = box._run_command(_py(code), QUICK)
    assert rc == 0, out
    for kind in ("shm", "sem", "msg", "mq"):
        assert f"{kind} -1" in out, out


@pytest.mark.docker
def test_runs_unprivileged(box: DockerSandbox):
    code = """
import os
print("ids", os.getuid(), os.geteuid(), os.getgid(), os.getgroups())
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print("caps", status["CapEff"].strip(), status["CapPrm"].strip())
print("nnp", status["NoNewPrivs"].strip())
"""
    rc, out = box._run_command(_py(code), QUICK)
    assert rc == 0, out
    assert "ids 65534 65534 65534 [" in out, out
    assert "caps 0000000000000000 0000000000000000" in out, out
    assert "nnp 1" in out, out


@pytest.mark.docker
def test_host_environment_does_not_leak(box: DockerSandbox, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    code = "import os\nfor k, v in sorted(os.environ.items()): print(k, v)"
    rc, out = box._run_command(_py(code), QUICK)
    assert rc == 0, out
    assert "OPENAI_API_KEY" not in out and SECRET not in out
    assert "PROXY" not in out.upper()
    assert "HOME /tmp" in out


@pytest.mark.docker
def test_fork_bomb_is_contained_and_cleaned_up(box: DockerSandbox):
    before = _job_containers(box)
    limits = Limits(wall_seconds=15, memory_mb=512, max_processes=32, threads=1)
    start = time.monotonic()
    rc, out = box._run_command(_py("import os\nwhile True: os.fork()"), limits)
    elapsed = time.monotonic() - start
    assert elapsed < limits.wall_seconds + 30
    # forks beyond the pids limit fail with EAGAIN
    assert "BlockingIOError" in out or "Resource temporarily unavailable" in out, out[-2000:]
    assert _job_containers(box) <= before
    # the engine (and the host) still answer
    assert box._run_command(_py("print('alive')"), QUICK) == (0, "alive\n")


@pytest.mark.docker
def test_wall_clock_timeout_kills_the_container(box: DockerSandbox):
    before = _job_containers(box)
    start = time.monotonic()
    rc, _ = box._run_command(_py("import time; time.sleep(60)"), Limits(wall_seconds=2, memory_mb=256))
    assert rc == -1
    assert time.monotonic() - start < 20
    assert _job_containers(box) <= before


@pytest.mark.docker
def test_memory_limit_is_an_oom_kill(box: DockerSandbox):
    limits = Limits(wall_seconds=30, memory_mb=128, max_processes=16)
    code, timed_out, oom, _, _ = box._execute(_py("x = bytearray(512 * 2**20); print(len(x))"), limits)
    assert not timed_out
    assert oom, code
    assert code == 137


# ---------------------------------------------------------------- the worker's container


@pytest.mark.docker
def test_worker_container_has_the_walls(docker_image: str, monkeypatch: pytest.MonkeyPatch):
    """The long-lived container of a worker: the walls of the command containers above, the
    template as its root with only the four capabilities it needs, no GPU even for a worker
    that owns one, and the limits of one session plus the template's room."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with DockerSandbox(image=docker_image, gpus=["0"]) as sandbox:
        assert sandbox.gpu == "0"
        assert "GPU 0 for this worker's trusted trainer; the jail sees no GPU" in sandbox.isolation_notes
        assert sandbox._container is None  # started lazily
        out, outcome = _call(sandbox, "def f():\n    return 'ok'\n")
        assert (out, outcome.status) == ("ok", Status.OK), outcome.reason
        sandbox._container.reload()
        attrs = sandbox._container.attrs
        host, config = attrs["HostConfig"], attrs["Config"]
        assert host["NetworkMode"] == "none"
        assert host["ReadonlyRootfs"] is True
        assert host["IpcMode"] == "none"
        assert not host.get("Privileged")
        # the only tmpfs: an empty, read-only cover over the image's copy of the trusted package
        assert host["Tmpfs"] == {"/opt/discovery/src/discovery": "ro,size=4k,mode=0555"}
        assert host["CapDrop"] == ["ALL"]
        assert sorted(host["CapAdd"]) == sorted(TEMPLATE_CAPABILITIES)
        assert "no-new-privileges" in host["SecurityOpt"]
        assert host["Sysctls"] == IPC_SYSCTLS
        assert not host.get("DeviceRequests") and not host.get("Devices")
        memory, pids, cpus = container_limits(SESSION)
        assert host["Memory"] == host["MemorySwap"] == memory * 2**20
        assert host["PidsLimit"] == pids
        assert host["NanoCpus"] == cpus * 10**9
        assert host["Init"] is True
        assert host["Binds"] == [f"{sandbox.root}:{CONTAINER_JOB_DIR}:rw"]
        assert config["User"] == "0:0"
        assert config["Labels"]["discovery.sandbox"] == "job"
        assert not any(SECRET in entry or "OPENAI" in entry for entry in config["Env"])
        assert "CUDA_VISIBLE_DEVICES=" in config["Env"]
        # the template's FIFOs are gone from the host directory once it has opened them
        assert not (sandbox.root / REQUESTS_FIFO).exists() and not (sandbox.root / EVENTS_FIFO).exists()
        assert list(sandbox.root.iterdir()) == []  # and the session's directory was wiped
        assert oct(sandbox.root.stat().st_mode & 0o777) == oct(0o711)


@pytest.mark.docker
def test_a_session_is_unprivileged_and_cannot_reach_its_template(box: DockerSandbox):
    """Inside the worker's container, a session's process is uid 65534 without any capability,
    under no-new-privileges and its own seccomp filter, and cannot signal or inspect the
    template, init or anything but itself, nor write outside its own directory; the image's
    ``discovery/`` (the tasks, their environments, the trainer) is covered by an empty tmpfs."""
    report = _probe(
        box,
        """
out["ids"] = [os.getuid(), os.geteuid(), os.getgid(), os.getgroups()]
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
keys = ("CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd", "NoNewPrivs", "Seccomp")
out["status"] = {k: status[k].strip() for k in keys}
out["cwd"] = os.getcwd()
out["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
out["kill"] = {}
for pid in out["pids"]:
    if pid != os.getpid():
        try:
            os.kill(pid, 0)
            out["kill"][pid] = "ALLOWED"
        except OSError as exc:
            out["kill"][pid] = type(exc).__name__
try:
    open("/proc/%d/environ" % os.getppid()).read()
    out["environ"] = "READ"
except OSError as exc:
    out["environ"] = type(exc).__name__
out["write"] = {}
for path in ("/job/owned", "/tmp/owned", "/dev/shm/owned", "/owned", "/job/template-requests", "/job/template-events"):
    try:
        open(path, "w").write("x")
        out["write"][path] = "WRITTEN"
    except OSError as exc:
        out["write"][path] = type(exc).__name__
try:
    out["job"] = os.listdir("/job")
except OSError as exc:
    out["job"] = type(exc).__name__
import ctypes
out["shm"] = ctypes.CDLL(None, use_errno=True).shmget(0x5EC12E7, 4096, 0o1666)
out["trusted"] = os.listdir("/opt/discovery/src/discovery")
try:
    import discovery.tasks.preference.env  # noqa: F401 - the environments must not be there
    out["import"] = "IMPORTED"
except ImportError as exc:
    out["import"] = type(exc).__name__
import sandbox.jail.function_server  # noqa: F401 - the jail's own package is there
out["env"] = dict(os.environ)
""",
    )
    assert report["ids"] == [SANDBOX_UID, SANDBOX_UID, SANDBOX_UID, []], report
    status = report["status"]
    assert status["CapEff"] == status["CapPrm"] == status["CapInh"] == status["CapAmb"] == "0" * 16, status
    allowed = sum(1 << CAP_BITS[name] for name in TEMPLATE_CAPABILITIES)
    assert int(status["CapBnd"], 16) & ~allowed == 0, status  # nothing beyond the template's, and no way back
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2", status
    assert report["cwd"].startswith(f"{CONTAINER_JOB_DIR}/session-"), report
    assert len(report["pids"]) == 3, report  # init, the template, itself: no session before it lives on
    assert set(report["kill"].values()) == {"PermissionError"}, report
    assert report["environ"] == "PermissionError"
    assert "WRITTEN" not in report["write"].values(), report
    assert report["job"] == "PermissionError"  # the worker's directory is searchable, not listable
    assert report["shm"] == -1
    assert report["trusted"] == [] and report["import"] == "ModuleNotFoundError", report  # no task code
    env = report["env"]
    assert env["HOME"] == env["TMPDIR"] == report["cwd"]
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert not any("KEY" in k or "PROXY" in k.upper() or "DISCOVERY" in k for k in env), env


@pytest.mark.docker
def test_the_host_environment_does_not_reach_a_session(docker_image: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    with DockerSandbox(image=docker_image) as sandbox:  # its container starts with the secret set
        out, outcome = _call(sandbox, "def f():\n    import os\n    return repr(sorted(os.environ.items()))\n")
    assert outcome.ok, outcome.reason
    assert SECRET not in out and "OPENAI" not in out and "PROXY" not in out.upper()


# ---------------------------------------------------------------- sessions and jobs


@pytest.mark.docker
def test_dpo_contract_end_to_end(docker_image: str, tmp_path: Path):
    with DockerSandbox(image=docker_image, jobs_root=tmp_path) as sandbox:
        before = _job_containers(sandbox)
        outcome = run_job(sandbox, Job(task="preference", source=DPO, stage="contract"))
        assert outcome.status is Status.OK, (outcome.reason, outcome.stderr_tail)
        assert outcome.seconds > 0
        container = sandbox._container.id
        again = run_job(sandbox, Job(task="preference", source=DPO, stage="contract"))
        assert again.status is Status.OK, (again.reason, again.stderr_tail)
        assert sandbox._container.id == container  # one container per worker, one template in it
        assert _job_containers(sandbox) == before | {container}
    assert _job_containers(sandbox) == before  # gone with the sandbox
    assert list(tmp_path.iterdir()) == []  # the sandbox's directory is gone too


@pytest.mark.docker
def test_dpo_trains_as_it_does_in_the_local_backend(box: DockerSandbox):
    """The same candidate, configuration and seed train to the same weights here as in a
    local sandbox: the jail only answers calls, the training is the trusted side's."""
    import torch

    from discovery.evaluation import Evaluator
    from sandbox.host.jobfiles import input_key
    from sandbox.host.local import LocalSandbox

    task = get_task("preference")
    inputs = {input_key("clean", 0): Evaluator(task).inputs_for(task.suite("discover"), "clean", 0)}
    job = Job(
        task="preference",
        source=DPO,
        stage="train",
        configs=["clean"],
        seeds=[0],
        limits=Limits(wall_seconds=120, memory_mb=3072),
    )
    outcome = run_job(box, job, inputs)
    assert outcome.ok, (outcome.reason, outcome.stderr_tail)
    with LocalSandbox() as local:
        reference = run_job(local, job, inputs)
    assert reference.ok, reference.reason
    key = input_key("clean", 0)
    policy, expected = outcome.outputs[key]["policy"], reference.outputs[key]["policy"]
    assert policy.keys() == expected.keys()
    for name in expected:
        assert torch.equal(policy[name], expected[name]), name


@pytest.mark.docker
def test_a_timeout_kills_the_session_not_the_worker(box: DockerSandbox):
    _call(box, "def f():\n    return 1\n")
    container = box._container.id
    start = time.monotonic()
    out, outcome = _call(box, "def f():\n    import time\n    while True:\n        time.sleep(0.1)\n", seconds=3.0)
    assert out is None and outcome.status is Status.TIMEOUT, outcome.reason
    assert "wall-clock limit of 3 s" in outcome.reason
    assert "line 4" in outcome.reason  # the stack dumped just before the kill names the line
    assert time.monotonic() - start < 15
    assert box._container.id == container
    assert _call(box, "def f():\n    return 2\n")[0] == 2


@pytest.mark.docker
def test_a_signal_ends_the_session_with_its_name(box: DockerSandbox):
    out, outcome = _call(box, "def f():\n    import os\n    os.abort()\n")
    assert outcome.status is Status.CRASHED, outcome.reason
    assert "SIGABRT" in outcome.reason
    assert _call(box, "def f():\n    return 3\n")[0] == 3


@pytest.mark.docker
def test_threads_are_bounded_by_the_pids_limit_and_the_template_survives(box: DockerSandbox):
    _call(box, "def f():\n    return 1\n", limits=_limits(max_processes=32))
    container = box._container.id
    source = """
def f():
    import threading, time
    threads = []
    while True:
        t = threading.Thread(target=time.sleep, args=(600,), daemon=True)
        t.start()
        threads.append(t)
"""
    out, outcome = _call(box, source, limits=_limits(max_processes=32))
    assert outcome.status is Status.ERROR, outcome.reason
    assert "thread" in outcome.reason
    assert box._container.id == container  # the template had room left, and is still there
    assert _call(box, "def f():\n    return 4\n", limits=_limits(max_processes=32))[0] == 4


@pytest.mark.docker
def test_memory_and_scratch_limits(box: DockerSandbox):
    out, outcome = _call(box, "def f():\n    blocks = []\n    while True:\n        blocks.append(bytearray(2**26))\n")
    assert outcome.status is Status.MEMORY, outcome.reason
    filler = """
def f():
    i = 0
    while True:
        with open(f"fill-{i}.bin", "wb") as fh:
            fh.write(b"d" * (900 * 1024))
        i += 1
"""
    out, outcome = _call(box, filler, limits=_limits(file_mb=1), seconds=20)
    assert outcome.status is Status.OUTPUT, outcome.reason
    assert "scratch directory" in outcome.reason


@pytest.mark.docker
def test_nothing_survives_into_the_next_session(box: DockerSandbox):
    leave = """
def f():
    import ctypes, os
    for where in (os.getcwd(), "/tmp", "/dev/shm", "/job", "/dev/mqueue"):
        try:
            with open(os.path.join(where, "hostile-trace"), "w") as fh:
                fh.write("trace")
        except OSError:
            pass
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmget(0x5EC12E7, 4096, 0o1666)
    import torch
    torch.HOSTILE_TRACE = True
    return os.getcwd()
"""
    first, outcome = _call(box, leave)
    assert outcome.ok, outcome.reason
    look = """
def f():
    import ctypes, os, torch
    seen = []
    for where in (os.getcwd(), FIRST, "/tmp", "/dev/shm", "/job", "/dev/mqueue"):
        if os.path.lexists(os.path.join(where, "hostile-trace")):
            seen.append(where)
    if ctypes.CDLL(None, use_errno=True).shmget(0x5EC12E7, 0, 0) >= 0:
        seen.append("shm")
    if getattr(torch, "HOSTILE_TRACE", False):
        seen.append("torch")
    return seen
""".replace("FIRST", repr(first))
    seen, outcome = _call(box, look)
    assert outcome.ok, outcome.reason
    assert seen == []


@pytest.mark.docker
def test_planted_links_are_not_followed(box: DockerSandbox, tmp_path: Path):
    """A session owns its directory: a log.txt it replaced with a link to a host file (or a
    FIFO) is not read (nor hung on) when the trusted side takes the log's tail."""
    secret = tmp_path / "secret"
    secret.write_text(f"OPENAI_API_KEY={SECRET}")
    for plant in (f"os.symlink({str(secret)!r}, 'log.txt')", "os.mkfifo('log.txt')"):
        source = f"def f():\n    import os\n    os.unlink('log.txt')\n    {plant}\n    raise ValueError('planted')\n"
        start = time.monotonic()
        out, outcome = _call(box, source)
        assert outcome.status is Status.ERROR and "planted" in outcome.reason, outcome.reason
        assert SECRET not in outcome.stderr_tail and SECRET not in outcome.reason
        assert time.monotonic() - start < 20
    assert secret.read_text() == f"OPENAI_API_KEY={SECRET}"


@pytest.mark.docker
def test_kill_removes_the_container_and_the_next_session_starts_a_new_one(docker_image: str):
    with DockerSandbox(image=docker_image) as sandbox:
        assert _call(sandbox, "def f():\n    return 1\n")[0] == 1
        first = sandbox._container.id
        abort = threading.Timer(1.0, sandbox.kill)  # an abort, from another thread, mid-session
        abort.start()
        start = time.monotonic()
        out, outcome = _call(sandbox, "def f():\n    import time\n    time.sleep(60)\n", seconds=60)
        abort.join()
        assert outcome.status is Status.CRASHED and "SIGKILL" in outcome.reason, outcome.reason
        assert time.monotonic() - start < 20
        assert first not in _job_containers(sandbox)
        assert _call(sandbox, "def f():\n    return 2\n")[0] == 2
        assert sandbox._container.id != first
        assert sandbox.replacements == [f"container {first[:12]} removed by an abort; replaced by a fresh one"]
        # a container that dies by itself ends its session the same way, and is not left behind
        second = sandbox._container.id
        threading.Timer(1.0, sandbox.client.containers.get(second).kill).start()
        out, outcome = _call(sandbox, "def f():\n    import time\n    time.sleep(60)\n", seconds=60)
        assert outcome.status is Status.CRASHED and "SIGKILL" in outcome.reason, outcome.reason
        assert second not in _job_containers(sandbox)
        assert _call(sandbox, "def f():\n    return 3\n")[0] == 3
        assert len(sandbox.replacements) == 2
        assert sandbox.replacements[1].startswith(f"container {second[:12]} ended during session-")
        assert "(exited, exit code 137)" in sandbox.replacements[1]


#: run in a worker container (docker exec, as its root): the template is the first to go when memory runs out
_TEMPLATE_FIRST_TO_GO = """
import os
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")
    except OSError:
        continue
    if argv[1:3] == [b"-m", b"sandbox.jail.template"]:
        with open(f"/proc/{pid}/oom_score_adj", "w") as fh:
            fh.write("1000")
"""


def _misbehave(container: Any, how: str) -> None:
    """Make a worker's container misbehave from outside, between sessions."""
    if how == "killed":
        container.kill()
        container.wait(timeout=30)
    elif how == "hung":  # frozen: its template takes requests into its FIFO and never answers
        container.pause()
    else:  # the container's memory cgroup runs out, and its OOM killer takes the template
        assert container.exec_run(_py(_TEMPLATE_FIRST_TO_GO)).exit_code == 0
        container.reload()
        limit_mb = container.attrs["HostConfig"]["Memory"] >> 20
        container.exec_run(_py(f"blob = bytearray({limit_mb + 256} * 2**20)"))
        container.wait(timeout=60)


@pytest.mark.docker
@pytest.mark.parametrize(
    ("how", "said"),
    [
        ("killed", "ended between sessions (exited, exit code 137)"),
        ("oom", "ended between sessions (OOM-killed at its 2560 MB limit)"),
        ("hung", "its template did not start session-"),
    ],
)
def test_a_container_that_misbehaves_between_sessions_is_replaced(docker_image: str, how: str, said: str):
    """The next session runs in a fresh container, its candidate not blamed, and the sandbox says
    which container was replaced and why."""
    with DockerSandbox(image=docker_image) as sandbox:
        assert _call(sandbox, "def f():\n    return 1\n")[0] == 1
        first = sandbox._container
        _misbehave(first, how)
        start = time.monotonic()
        out, outcome = _call(sandbox, "def f():\n    return 2\n")
        assert outcome.ok and out == 2, outcome.reason
        assert time.monotonic() - start < STARTED_SECONDS + 60
        assert sandbox._container.id != first.id and first.id not in _job_containers(sandbox)
        assert len(sandbox.replacements) == 1 and sandbox.replacements[0].startswith(f"container {first.id[:12]} ")
        assert said in sandbox.replacements[0], sandbox.replacements
        assert _call(sandbox, "def f():\n    return 3\n")[0] == 3
        assert len(sandbox.replacements) == 1


@pytest.mark.docker
def test_other_container_limits_start_another_container(docker_image: str):
    with DockerSandbox(image=docker_image) as sandbox:
        sandbox.threads = 2  # the worker pool's, over the job's
        report = _probe(sandbox, 'out["threads"] = os.environ["OMP_NUM_THREADS"]')
        assert report["threads"] == "2"
        first = sandbox._container
        first.reload()
        assert first.attrs["HostConfig"]["NanoCpus"] == 2 * 10**9
        _probe(sandbox, 'out["same"] = 1')
        assert sandbox._container.id == first.id
        _probe(sandbox, 'out["more memory"] = 1', limits=_limits(memory_mb=3072))
        second = sandbox._container
        assert second.id != first.id and first.id not in _job_containers(sandbox)
        second.reload()
        assert second.attrs["HostConfig"]["Memory"] == (3072 + TEMPLATE_MEMORY_MB) * 2**20


@pytest.mark.docker
def test_a_candidate_that_does_not_load_ends_the_session(box: DockerSandbox):
    out, outcome = _call(box, "def f(:\n    return 1\n")
    assert outcome.status is Status.PARSE and outcome.line == 1, outcome.reason
    out, outcome = _call(box, "raise ValueError('at import')\n")
    assert outcome.status is Status.ERROR and "at import" in outcome.reason, outcome.reason
    assert _call(box, "def f():\n    return 5\n")[0] == 5
