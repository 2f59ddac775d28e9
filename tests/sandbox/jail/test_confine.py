"""Tests for sandbox.jail.confine: every wall goes up in a forked child (or, for torch, a fresh
interpreter), never in the test process itself."""

from __future__ import annotations

import errno
import importlib.util
import os
import re
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandbox.jail import confine
from tests.sandbox.listeners import unix_listener as listening

MIB = 1024 * 1024
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
machine = confine._machine()
needs_seccomp_arch = pytest.mark.skipif(machine is None, reason="no seccomp syscall table for this machine")


def in_child(body: Callable[[], str], timeout: float = 60.0) -> tuple[int, str]:
    """Run ``body`` in a forked child; return its wait status and the text it returned.

    A child that raises reports its traceback and exits 1; one still running after
    ``timeout`` seconds is killed and fails the test.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            os.close(r)
            os.write(w, body().encode())
        except BaseException:  # noqa: B036 - report anything, never return into pytest
            code = 1
            try:
                os.write(w, traceback.format_exc().encode())
            except BaseException:  # noqa: B036
                pass
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"child still running after {timeout}s; output so far: {b''.join(chunks)!r}")
            ready, _, _ = select.select([r], [], [], left)
            if ready:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(r)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status, b"".join(chunks).decode(errors="replace")
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def assert_ok(status: int, output: str, expected: str = "ok") -> None:
    """The child exited 0 and reported ``expected``."""
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child failed (status {status}):\n{output}"
    assert output == expected


# --------------------------------------------------------------------------- the BPF program itself

X86_64, AARCH64, I386 = 0xC000003E, 0xC00000B7, 0x40000003
EPERM = 0x00050000 | errno.EPERM
ENOSYS = 0x00050000 | errno.ENOSYS
ALLOW, KILL = 0x7FFF0000, 0x80000000
PTHREAD_FLAGS = 0x003D0F00  # glibc pthread_create: CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|...
FORK_FLAGS = 0x01200011  # glibc fork: CLONE_CHILD_SETTID|CLONE_CHILD_CLEARTID|SIGCHLD
VFORK_FLAGS = 0x00004111  # posix_spawn: CLONE_VM|CLONE_VFORK|SIGCHLD

# Written out independently of confine's table: (x86_64 nr, aarch64 nr or None).
NUMBERS = {
    "read": (0, 63),
    "getpid": (39, 172),
    "socket": (41, 198),
    "socketpair": (53, 199),
    "clone": (56, 220),
    "fork": (57, None),
    "vfork": (58, None),
    "execve": (59, 221),
    "ptrace": (101, 117),
    "mount": (165, 40),
    "unshare": (272, 97),
    "setns": (308, 268),
    "bpf": (321, 280),
    "execveat": (322, 281),
    "clone3": (435, 435),
    "io_uring_setup": (425, 425),
    "mmap": (9, 222),
    "futex": (202, 98),
}


Program = list[tuple[int, int, int, int]]


def run_filter(program: Program, nr: int, arch: int, args: tuple[int, ...] = ()) -> int:
    """Evaluate the classic-BPF subset confine emits against one struct seccomp_data."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(list(args) + [0] * (6 - len(args))))
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        if code == 0x20:  # ld [k]
            acc = struct.unpack_from("<I", data, k)[0]
        elif code == 0x15:  # jeq #k
            pc += jt if acc == k else jf
        elif code == 0x35:  # jge #k
            pc += jt if acc >= k else jf
        elif code == 0x45:  # jset #k
            pc += jt if acc & k else jf
        elif code == 0x06:  # ret #k
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_filter_program_decisions(arch: str) -> None:
    """Both arches' programs, checked by an emulator: the right verdict for every kind of call."""
    column = 0 if arch == "x86_64" else 1
    audit = X86_64 if arch == "x86_64" else AARCH64
    program = confine._build_program(arch, deny_network=True)

    def verdict(name: str, *args: int, arch_field: int = audit) -> int:
        return run_filter(program, NUMBERS[name][column], arch_field, args)

    for name in ("read", "getpid", "mmap", "futex"):
        assert verdict(name) == ALLOW, name
    for name in ("fork", "vfork", "execve", "execveat", "ptrace", "mount", "unshare", "setns", "bpf", "io_uring_setup"):
        if NUMBERS[name][column] is not None:
            assert verdict(name) == EPERM, name
    assert verdict("clone3") == ENOSYS
    assert verdict("clone", PTHREAD_FLAGS) == ALLOW
    assert verdict("clone", FORK_FLAGS) == EPERM
    assert verdict("clone", VFORK_FLAGS) == EPERM
    assert verdict("clone", PTHREAD_FLAGS | 0x40000000) == EPERM  # a thread asking for CLONE_NEWNET
    for family in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6, 16, 17):  # ..., AF_NETLINK, AF_PACKET
        assert verdict("socket", family, socket.SOCK_STREAM) == EPERM, family
        assert verdict("socketpair", family, socket.SOCK_STREAM) == EPERM, family
    # Another ABI's numbers mean something else entirely: such a call kills the process.
    assert verdict("getpid", arch_field=I386) == KILL
    assert verdict("getpid", arch_field=AARCH64 if arch == "x86_64" else X86_64) == KILL
    if arch == "x86_64":
        assert run_filter(program, 0x40000000 | 39, audit) == EPERM  # x32 getpid
        assert run_filter(program, 0x40000000 | 59, audit) == EPERM  # x32 execve

    open_net = confine._build_program(arch, deny_network=False)
    assert run_filter(open_net, NUMBERS["socket"][column], audit, (socket.AF_INET,)) == ALLOW
    assert run_filter(open_net, NUMBERS["socketpair"][column], audit, (socket.AF_UNIX,)) == ALLOW
    assert run_filter(open_net, NUMBERS["execve"][column], audit) == EPERM


@pytest.mark.parametrize(
    ("arch", "header", "pattern"),
    [
        ("x86_64", "/usr/include/x86_64-linux-gnu/asm/unistd_64.h", r"#define __NR_(\w+)\s+(\d+)"),
        ("aarch64", "/usr/include/asm-generic/unistd.h", r"#define __NR(?:3264)?_(\w+)\s+(\d+)"),
    ],
)
def test_syscall_numbers_match_kernel_headers(arch: str, header: str, pattern: str) -> None:
    """Every number in confine's table is the one the kernel headers give."""
    if not os.path.exists(header):
        pytest.skip(f"{header} not installed")
    known = {name: int(nr) for name, nr in re.findall(pattern, Path(header).read_text())}
    for name, nr in confine._SYSCALLS[arch].items():
        assert known.get(name) == nr, f"{arch} {name}: table has {nr}, header has {known.get(name)}"


# --------------------------------------------------------------------------- seccomp, live


@needs_seccomp_arch
def test_seccomp_refuses_process_creation_and_exec() -> None:
    """fork, subprocess, os.system and exec all fail; clone3 says ENOSYS; x32 calls are refused."""

    def body() -> str:
        assert confine.install_seccomp() is True
        try:
            os.fork()
        except PermissionError:
            pass
        else:
            os._exit(3)  # a fork got through: both processes leave at once
        try:
            subprocess.run(["true"], check=True)
            return "subprocess.run worked"
        except (OSError, subprocess.SubprocessError):
            pass
        assert os.system("true") != 0
        try:
            os.execv("/bin/true", ["true"])
        except PermissionError:
            pass
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.syscall(ctypes.c_long(435), None, ctypes.c_size_t(0)) == -1  # clone3(NULL, 0)
        assert ctypes.get_errno() == errno.ENOSYS  # unfiltered, the kernel says EINVAL
        if machine == "x86_64":
            assert libc.syscall(ctypes.c_long(0x40000000 | 39)) == -1  # x32 getpid
            assert ctypes.get_errno() == errno.EPERM
        status = Path("/proc/self/status").read_text()
        assert re.search(r"^NoNewPrivs:\s+1$", status, re.M) and re.search(r"^Seccomp:\s+2$", status, re.M)
        return "ok"

    assert_ok(*in_child(body))


@pytest.fixture
def unix_listener() -> Iterator[tuple[str, list[bytes]]]:
    """A 0777 Unix stream socket in the test process (its path, and what it received)."""
    directory = tempfile.mkdtemp(prefix="confine-unix-", dir="/tmp")
    os.chmod(directory, 0o755)
    path = os.path.join(directory, "listener.sock")
    with listening(path) as received:
        yield path, received
    shutil.rmtree(directory, ignore_errors=True)


@needs_seccomp_arch
def test_seccomp_denies_every_socket_unix_included(unix_listener: tuple[str, list[bytes]]) -> None:
    """With deny_network, socket() fails with EPERM for every family, AF_UNIX included, and so does
    socketpair(): a 0777 Unix listener on a path the job can see hears nothing from it."""
    path, received = unix_listener

    def body() -> str:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # the path is reachable before the filter
        probe.connect(path)
        probe.sendall(b"before")
        probe.close()
        confine.install_seccomp(deny_network=True)
        for family in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):
            try:
                client = socket.socket(family, socket.SOCK_STREAM)
            except PermissionError:
                continue
            if family == socket.AF_UNIX:
                client.connect(path)
                client.sendall(b"after")
            return f"socket({family}) worked"
        try:
            socket.socketpair()
            return "socketpair worked"
        except PermissionError:
            pass
        return "ok"

    assert_ok(*in_child(body))
    deadline = time.monotonic() + 5
    while not received and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert received == [b"before"]


@needs_seccomp_arch
def test_seccomp_without_network_denial_allows_inet_sockets() -> None:
    """deny_network=False leaves socket() alone (exec is still refused)."""

    def body() -> str:
        confine.install_seccomp(deny_network=False)
        socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
        try:
            os.execv("/bin/true", ["true"])
        except PermissionError:
            return "ok"
        return "exec worked"

    assert_ok(*in_child(body))


@needs_seccomp_arch
def test_seccomp_keeps_threads_working() -> None:
    """A new threading.Thread (clone3 -> ENOSYS -> clone with CLONE_THREAD) starts, runs and joins."""

    def body() -> str:
        confine.install_seccomp()
        seen: list[int] = []
        tasks: list[int] = []

        def work() -> None:
            seen.append(threading.get_native_id())
            tasks.append(len(os.listdir("/proc/self/task")))

        t = threading.Thread(target=work)
        t.start()
        t.join(10)
        assert not t.is_alive() and seen and seen[0] != threading.get_native_id() and tasks[0] >= 2
        return "ok"

    assert_ok(*in_child(body))


TORCH_SCRIPT = r"""
import os, re, sys, traceback
import torch  # imported before the walls, computing nothing yet (as sandbox.jail.template does)
from sandbox.jail import confine

def job():
    torch.set_num_threads(2)
    assert confine.install_seccomp() is True
    torch.manual_seed(0)
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    c = a @ b  # the first parallel op: OpenMP starts its threads now (it aborts if it cannot)
    assert torch.allclose(c, (a.double() @ b.double()).float(), rtol=1e-4, atol=1e-3)
    assert torch.get_num_threads() == 2
    for tid in os.listdir("/proc/self/task"):
        status = open(f"/proc/self/task/{tid}/status").read()
        assert re.search(r"^Seccomp:\s+2$", status, re.M), f"thread {tid} is not filtered"
    print("ok", end="", flush=True)

if sys.argv[1] == "same-process":  # like sandbox.jail.runner: a fresh process confines itself
    job()
else:  # like sandbox.jail.template: the job runs in a child forked after the import
    pid = os.fork()
    if pid == 0:
        try:
            job()
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


@needs_seccomp_arch
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
@pytest.mark.parametrize("mode", ["same-process", "forked"])
def test_seccomp_keeps_torch_thread_pool_working(mode: str) -> None:
    """torch, imported before the filter, still multiplies 512x512 with two threads; every
    thread of the process (including any torch started at import) carries the filter.

    This one runs in a fresh interpreter rather than a fork of pytest: if torch has already
    done parallel work in this process (another test module), a forked child using its
    OpenMP pool hangs, filter or not.
    """
    repo = Path(__file__).resolve().parents[3]
    path = os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, "-c", TORCH_SCRIPT, mode], cwd=repo, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout == "ok", proc.stdout + proc.stderr


def test_seccomp_unsupported_machine_installs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a machine without a syscall table install_seccomp returns False and changes nothing."""
    monkeypatch.setattr(confine.platform, "machine", lambda: "riscv64")

    def body() -> str:
        assert confine.install_seccomp() is False
        status = Path("/proc/self/status").read_text()
        assert re.search(r"^Seccomp:\s+0$", status, re.M) and re.search(r"^NoNewPrivs:\s+0$", status, re.M)
        return "ok"

    assert_ok(*in_child(body))


# --------------------------------------------------------------------------- rlimits


def _vm_size_mb() -> int:
    match = re.search(r"^VmSize:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) // 1024 if match else 0


def test_rlimits_values_and_memory_limit() -> None:
    """The limits land as specified and a 2 GiB allocation under the address-space limit fails."""
    # 512 MiB as asked; more only when this process already maps more (torch imported by an
    # earlier test), else every allocation in the child would fail, not just the big one.
    memory_mb = max(512, _vm_size_mb() + 256)

    def body() -> str:
        confine.apply_rlimits(cpu_seconds=30, memory_mb=memory_mb, file_mb=8, max_processes=64, max_files=64)
        assert resource.getrlimit(resource.RLIMIT_CPU) == (30, 35)
        assert resource.getrlimit(resource.RLIMIT_AS) == (memory_mb * MIB, memory_mb * MIB)
        assert resource.getrlimit(resource.RLIMIT_FSIZE) == (8 * MIB, 8 * MIB)
        assert resource.getrlimit(resource.RLIMIT_NPROC) == (64, 64)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (64, 64)
        assert resource.getrlimit(resource.RLIMIT_CORE) == (0, 0)
        small = bytearray(32 * MIB)  # the limit is not "nothing works"
        del small
        try:
            bytearray(2048 * MIB)
        except MemoryError:
            return "ok"
        return "2 GiB allocation succeeded"

    assert_ok(*in_child(body))


def test_rlimits_never_raise_a_hard_limit() -> None:
    """Requested values above the current hard limit are clamped; values <= 0 leave a limit alone."""

    def body() -> str:
        resource.setrlimit(resource.RLIMIT_CPU, (20, 20))
        resource.setrlimit(resource.RLIMIT_FSIZE, (MIB, MIB))
        before_as = resource.getrlimit(resource.RLIMIT_AS)
        confine.apply_rlimits(cpu_seconds=100, memory_mb=0, file_mb=10, max_processes=0)
        assert resource.getrlimit(resource.RLIMIT_CPU) == (20, 20)
        assert resource.getrlimit(resource.RLIMIT_FSIZE) == (MIB, MIB)
        assert resource.getrlimit(resource.RLIMIT_AS) == before_as
        confine.apply_rlimits(cpu_seconds=18, memory_mb=0, file_mb=0, max_processes=0)
        assert resource.getrlimit(resource.RLIMIT_CPU) == (18, 20)  # hard would be 23: clamped
        return "ok"

    assert_ok(*in_child(body))


@pytest.mark.parametrize("sigxfsz", ["default", "ignored"])
def test_rlimit_file_size(tmp_path: Path, sigxfsz: str) -> None:
    """Writing 2 MB under file_mb=1: SIGXFSZ kills the child, or (signal ignored, as Python
    does by default) the write fails with EFBIG. Either way the file stays within 1 MiB."""
    target = tmp_path / "big.bin"

    def body() -> str:
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL if sigxfsz == "default" else signal.SIG_IGN)
        confine.apply_rlimits(cpu_seconds=30, memory_mb=0, file_mb=1, max_processes=0)
        try:
            with open(target, "wb") as fh:
                for _ in range(32):
                    fh.write(b"x" * 65536)
                    fh.flush()
        except OSError as exc:
            return "EFBIG" if exc.errno == errno.EFBIG else f"unexpected {exc!r}"
        return "wrote 2 MB"

    status, output = in_child(body)
    if sigxfsz == "default":
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXFSZ, (status, output)
    else:
        assert_ok(status, output, "EFBIG")
    assert target.stat().st_size <= MIB


def test_rlimit_open_files(tmp_path: Path) -> None:
    """Under max_files opening files ends in EMFILE, every descriptor below the limit; one held
    back before the candidate's opens (as the runner does) frees a slot when closed."""

    def body() -> str:
        held = os.open(os.devnull, os.O_RDONLY)
        limit = max(int(fd) for fd in os.listdir("/proc/self/fd")) + 8  # room for a few more
        confine.apply_rlimits(cpu_seconds=0, memory_mb=0, file_mb=0, max_processes=0, max_files=limit)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (limit, limit)
        files = []
        try:
            while True:
                files.append(open(tmp_path / f"f{len(files)}", "w"))
        except OSError as exc:
            if exc.errno != errno.EMFILE:
                return f"unexpected {exc!r}"
        assert files and max(f.fileno() for f in files) < limit
        os.close(held)
        with open(tmp_path / "result", "w") as fh:
            fh.write("written")
        return "ok"

    assert_ok(*in_child(body))
    assert (tmp_path / "result").read_text() == "written"


def test_rlimit_cpu_kills_a_busy_loop() -> None:
    """A busy loop under cpu_seconds=1 dies by SIGXCPU (or SIGKILL at the hard limit) within seconds."""

    def body() -> str:
        signal.signal(signal.SIGXCPU, signal.SIG_DFL)
        confine.apply_rlimits(cpu_seconds=1, memory_mb=0, file_mb=0, max_processes=0)
        while True:
            pass

    start = time.monotonic()
    status, output = in_child(body, timeout=30)
    assert os.WIFSIGNALED(status), (status, output)
    assert os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL)
    assert time.monotonic() - start < 15


# --------------------------------------------------------------------------- network namespace


@pytest.fixture
def listener() -> socket.socket:
    """A TCP listener on 127.0.0.1 in the test process (the host network namespace)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server
    server.close()


def _connect_then_isolate(port: int) -> str:
    """Child body: 127.0.0.1:port is reachable, then enter_network_namespace, then it is not."""
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    reason = confine.enter_network_namespace()
    if reason:
        return f"not isolated: {reason}"
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except OSError:
        return "ok"
    return "connected after entering the namespace"


@needs_root
def test_network_namespace_cuts_off_host_loopback(listener: socket.socket) -> None:
    """As root, after enter_network_namespace the parent's 127.0.0.1 listener is unreachable."""
    port = listener.getsockname()[1]
    assert_ok(*in_child(lambda: _connect_then_isolate(port)))


@needs_root
def test_network_namespace_user_namespace_fallback(listener: socket.socket) -> None:
    """Without CAP_SYS_ADMIN (privileges dropped to nobody) the user-namespace path is taken:
    same uid inside, and the host loopback is still out of reach."""
    port = listener.getsockname()[1]

    def body() -> str:
        confine.drop_privileges(65534, 65534)
        result = _connect_then_isolate(port)
        if result == "ok":
            assert os.getuid() == 65534 and os.getgid() == 65534
            assert Path("/proc/self/uid_map").read_text().split() == ["65534", "65534", "1"]
        return result

    status, output = in_child(body)
    if output.startswith("not isolated:"):
        pytest.skip(f"user namespaces unavailable here: {output}")
    assert_ok(status, output)


# --------------------------------------------------------------------------- privileges


@pytest.fixture
def root_dir() -> Path:
    """A root-owned 0755 directory that every user can reach but only root can write."""
    path = Path(tempfile.mkdtemp(prefix="confine-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@needs_root
def test_drop_privileges_cannot_write_root_directory(root_dir: Path) -> None:
    """After drop_privileges(65534, 65534): ids and groups changed, root's directory is readable but
    not writable, root cannot be regained, and a second call reports False."""
    (root_dir / "before").write_text("root wrote this")

    def body() -> str:
        assert confine.drop_privileges(65534, 65534) is True
        assert os.getresuid() == (65534, 65534, 65534) and os.getresgid() == (65534, 65534, 65534)
        assert os.getgroups() == []
        assert "before" in os.listdir(root_dir)  # reachable: a refusal below is about writing
        try:
            (root_dir / "after").write_text("nobody wrote this")
            return "write succeeded"
        except PermissionError:
            pass
        try:
            os.setuid(0)
            return "regained root"
        except PermissionError:
            pass
        assert confine.drop_privileges(0, 0) is False
        return "ok"

    assert_ok(*in_child(body))
    assert not (root_dir / "after").exists()


def test_drop_privileges_not_root_returns_false(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not root: nothing is attempted."""
    monkeypatch.setattr(confine.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(confine.os, "setuid", lambda uid: pytest.fail("setuid called"))
    assert confine.drop_privileges(65534, 65534) is False
