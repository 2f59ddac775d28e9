"""The Docker backend against a real engine, with the registry-free test image.

The session fixture ``docker_image`` (tests/conftest.py) starts an engine
(``.ci/docker-engine.sh``) and builds ``discovery-sandbox:test`` (``.ci/docker-test-image.sh``).
When either fails the tests are skipped, except under ``CI=true`` where that is a failure.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from sandbox.base import Job, Limits, Status
from sandbox.docker_backend import DockerSandbox, DockerUnavailable, _distrust_links, _signal_of

LABEL_FILTER = {"label": "discovery.sandbox=job"}

QUICK = Limits(wall_seconds=30, memory_mb=512, max_processes=64, threads=1)


@pytest.fixture(scope="session")
def box(docker_image: str):
    sandbox = DockerSandbox(image=docker_image)
    yield sandbox
    sandbox.close()


def _job_containers(box: DockerSandbox) -> set[str]:
    return {c.id for c in box.client.containers.list(all=True, filters=LABEL_FILTER)}


def _py(code: str) -> list[str]:
    return ["python", "-c", code]


# ---------------------------------------------------------------- no engine needed


def test_signal_from_exit_code():
    assert _signal_of(137, False) == 9
    assert _signal_of(139, False) == 11
    assert _signal_of(1, False) is None
    assert _signal_of(0, False) is None
    assert _signal_of(137, True) is None


def test_links_planted_by_the_container_are_not_followed(tmp_path: Path):
    secret = tmp_path / "secret"
    secret.write_text("OPENAI_API_KEY=sk-host")
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "log.txt").symlink_to(secret)
    os.mkfifo(job_dir / "result.pt")
    _distrust_links(job_dir)
    assert not (job_dir / "log.txt").exists() and not (job_dir / "log.txt").is_symlink()
    assert not (job_dir / "result.pt").exists()
    assert secret.read_text() == "OPENAI_API_KEY=sk-host"


@pytest.mark.docker
def test_missing_image_is_reported(docker_image: str):
    with pytest.raises(DockerUnavailable, match="not found locally"):
        DockerSandbox(image="discovery-sandbox:no-such-tag")


# ---------------------------------------------------------------- container walls


@pytest.mark.docker
def test_isolation_notes(box: DockerSandbox):
    notes = " ".join(box.isolation_notes)
    for word in ("network", "read-only", "65534", "capabilities", "memory", "pids"):
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
def test_root_filesystem_is_read_only(box: DockerSandbox):
    code = """
import errno, sys
for path in ("/owned", "/etc/passwd", sys.prefix + "/owned"):
    try:
        open(path, "w").write("x")
    except OSError as exc:
        print(path, errno.errorcode[exc.errno])
    else:
        print(path, "WRITTEN")
open("/tmp/scratch", "w").write("ok")
print("tmp", open("/tmp/scratch").read())
"""
    rc, out = box._run_command(_py(code), QUICK)
    assert rc == 0, out
    assert "WRITTEN" not in out
    assert "/owned EROFS" in out
    assert "tmp ok" in out


@pytest.mark.docker
def test_runs_unprivileged(box: DockerSandbox):
    code = """
import os
print("ids", os.getuid(), os.geteuid(), os.getgid(), os.getgroups())
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print("caps", status["CapEff"].strip(), status["CapBnd"].strip())
print("nnp", status["NoNewPrivs"].strip())
"""
    rc, out = box._run_command(_py(code), QUICK)
    assert rc == 0, out
    assert "ids 65534 65534 65534 [" in out, out
    assert "caps 0000000000000000 0000000000000000" in out, out
    assert "nnp 1" in out, out


@pytest.mark.docker
def test_host_environment_does_not_leak(box: DockerSandbox, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-must-not-leak")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    code = "import os\nfor k, v in sorted(os.environ.items()): print(k, v)"
    rc, out = box._run_command(_py(code), QUICK)
    assert rc == 0, out
    assert "OPENAI_API_KEY" not in out and "sk-test-must-not-leak" not in out
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


# ---------------------------------------------------------------- end to end (needs the runner)

_RUNNER_READY = all(
    importlib.util.find_spec(m) is not None for m in ("sandbox.runner", "sandbox.jobfiles", "sandbox.confine")
)


@pytest.mark.docker
@pytest.mark.skipif(not _RUNNER_READY, reason="sandbox.runner / jobfiles / confine not all present yet")
def test_dpo_contract_end_to_end(docker_image: str, tmp_path: Path):
    from discovery.tasks import get_task

    source = get_task("preference").baselines["dpo"]
    with DockerSandbox(image=docker_image, jobs_root=tmp_path) as sandbox:
        before = _job_containers(sandbox)
        outcome = sandbox.run(Job(task="preference", source=source, stage="contract"))
        assert outcome.status is Status.OK, (outcome.reason, outcome.stderr_tail)
        assert outcome.seconds > 0
        assert _job_containers(sandbox) <= before
    assert list(tmp_path.iterdir()) == []  # the job directory is gone
