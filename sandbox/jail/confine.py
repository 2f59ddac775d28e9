"""OS-level walls applied inside a freshly forked job process, before any candidate code runs.

Everything here is one-way for the calling process: rlimits only go down, a seccomp filter
can never be removed, a network namespace cannot be left and dropped privileges cannot be
regained. Only the standard library and ctypes are used (no libseccomp).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import resource

__all__ = [
    "apply_rlimits",
    "install_seccomp",
    "enter_network_namespace",
    "drop_privileges",
    "unshare_ipc",
    "set_dumpable",
]


# --------------------------------------------------------------------------- rlimits


def _lower_limit(which: int, soft: int, hard: int) -> None:
    """Set ``which`` to (soft, hard), never above its current hard limit."""
    _, cur_hard = resource.getrlimit(which)
    if cur_hard != resource.RLIM_INFINITY:
        hard = min(hard, cur_hard)
    soft = min(soft, hard)
    resource.setrlimit(which, (soft, hard))


def apply_rlimits(cpu_seconds: int, memory_mb: int, file_mb: int, max_processes: int, max_files: int = 0) -> None:
    """Lower this process's resource limits.

    RLIMIT_CPU gets soft=cpu_seconds (SIGXCPU) and hard=cpu_seconds+5 (SIGKILL); RLIMIT_AS,
    RLIMIT_FSIZE, RLIMIT_NPROC and RLIMIT_NOFILE get memory_mb, file_mb (both in MiB),
    max_processes and max_files (open descriptors) as soft and hard limit; RLIMIT_CORE is
    always 0. A value <= 0 leaves that limit as it is (callers pass memory_mb=0 for CUDA jobs,
    which map huge virtual ranges). No limit is ever raised above its current hard limit.
    Descriptors already open above ``max_files`` stay valid; only new ones are refused (EMFILE).
    """
    mib = 1024 * 1024
    if cpu_seconds > 0:
        _lower_limit(resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 5)
    if memory_mb > 0:
        _lower_limit(resource.RLIMIT_AS, memory_mb * mib, memory_mb * mib)
    if file_mb > 0:
        _lower_limit(resource.RLIMIT_FSIZE, file_mb * mib, file_mb * mib)
    if max_processes > 0:
        _lower_limit(resource.RLIMIT_NPROC, max_processes, max_processes)
    if max_files > 0:
        _lower_limit(resource.RLIMIT_NOFILE, max_files, max_files)
    _lower_limit(resource.RLIMIT_CORE, 0, 0)


# --------------------------------------------------------------------------- seccomp

# Syscall numbers: x86_64 from asm/unistd_64.h, aarch64 from the generic table (asm-generic/unistd.h).
# aarch64 has no fork/vfork syscalls (glibc implements both with clone).
_SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "socket": 41,
        "socketpair": 53,
        "clone": 56,
        "fork": 57,
        "vfork": 58,
        "execve": 59,
        "ptrace": 101,
        "chroot": 161,
        "mount": 165,
        "umount2": 166,
        "init_module": 175,
        "kexec_load": 246,
        "add_key": 248,
        "request_key": 249,
        "keyctl": 250,
        "unshare": 272,
        "perf_event_open": 298,
        "setns": 308,
        "process_vm_readv": 310,
        "process_vm_writev": 311,
        "finit_module": 313,
        "seccomp": 317,
        "bpf": 321,
        "execveat": 322,
        "io_uring_setup": 425,
        "io_uring_enter": 426,
        "io_uring_register": 427,
        "clone3": 435,
        "pidfd_getfd": 438,
    },
    "aarch64": {
        "umount2": 39,
        "mount": 40,
        "chroot": 51,
        "unshare": 97,
        "kexec_load": 104,
        "init_module": 105,
        "ptrace": 117,
        "socket": 198,
        "socketpair": 199,
        "add_key": 217,
        "request_key": 218,
        "keyctl": 219,
        "clone": 220,
        "execve": 221,
        "perf_event_open": 241,
        "setns": 268,
        "process_vm_readv": 270,
        "process_vm_writev": 271,
        "finit_module": 273,
        "seccomp": 277,
        "bpf": 280,
        "execveat": 281,
        "io_uring_setup": 425,
        "io_uring_enter": 426,
        "io_uring_register": 427,
        "clone3": 435,
        "pidfd_getfd": 438,
    },
}

_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}  # EM_* | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
_MACHINE_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
_X32_SYSCALL_BIT = 0x40000000

# Refused outright with EPERM (names missing from an arch's table are skipped).
_DENIED = (
    "fork",
    "vfork",
    "execve",
    "execveat",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount2",
    "unshare",
    "setns",
    "chroot",
    "kexec_load",
    "init_module",
    "finit_module",
    "bpf",
    "keyctl",
    "add_key",
    "request_key",
    "perf_event_open",
    # Beyond the basic list: io_uring can open and connect sockets without passing through
    # socket(2), and pidfd_getfd could copy file descriptors out of the parent template.
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "pidfd_getfd",
)

_CLONE_THREAD = 0x00010000
# Namespace flags are refused even on a thread: a thread never needs a namespace of its own.
_CLONE_NEW_MASK = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
# With deny_network, refused for every address family, AF_UNIX included: a job that could open a
# Unix socket could connect to any listener on a path it can see (a 0777 socket under a bound
# directory) and talk to the host. Nothing the runner, torch or the tasks do needs a socket.
_NETWORK = ("socket", "socketpair")

# Classic BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h).
_BPF_LD_W_ABS = 0x00 | 0x00 | 0x20
_BPF_JEQ_K = 0x05 | 0x10
_BPF_JGE_K = 0x05 | 0x30
_BPF_JSET_K = 0x05 | 0x40
_BPF_RET_K = 0x06
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000

_OFF_NR = 0
_OFF_ARCH = 4
_OFF_ARG0 = 16  # args[i] at 16 + 8*i; the lower 32 bits come first on little endian

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_TSYNC = 1


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def _machine() -> str | None:
    """The seccomp table name for this machine, or None when unsupported."""
    return _MACHINE_ALIASES.get(platform.machine().lower())


def _build_program(arch: str, deny_network: bool) -> list[tuple[int, int, int, int]]:
    """The filter for ``arch`` as a list of (code, jt, jf, k) instructions.

    Written with symbolic labels: a jump target is a label string, resolved at the end to
    the relative offsets classic BPF wants. ``None`` as a target means "fall through".
    """
    table = _SYSCALLS[arch]
    eperm = _RET_ERRNO | errno.EPERM
    enosys = _RET_ERRNO | errno.ENOSYS
    ops: list[tuple[int, str | None, str | None, int] | str] = []  # instruction or label

    def load(offset: int) -> None:
        ops.append((_BPF_LD_W_ABS, None, None, offset))

    def jump(code: int, k: int, if_true: str | None, if_false: str | None = None) -> None:
        ops.append((code, if_true, if_false, k))

    def ret(value: int) -> None:
        ops.append((_BPF_RET_K, None, None, value))

    # A syscall made through another ABI (i386 int 0x80, arm32 compat) has other numbers.
    load(_OFF_ARCH)
    jump(_BPF_JEQ_K, _AUDIT_ARCH[arch], None, "kill")
    load(_OFF_NR)
    if arch == "x86_64":
        jump(_BPF_JGE_K, _X32_SYSCALL_BIT, "eperm")
    for name in _DENIED:
        if name in table:
            jump(_BPF_JEQ_K, table[name], "eperm")
    # ENOSYS, not EPERM: glibc then falls back to clone(2), whose flags a filter can inspect
    # (clone3 passes them in memory, out of the filter's reach).
    jump(_BPF_JEQ_K, table["clone3"], "enosys")
    jump(_BPF_JEQ_K, table["clone"], "clone")
    if deny_network:
        for name in _NETWORK:
            jump(_BPF_JEQ_K, table[name], "eperm")
    ret(_RET_ALLOW)

    ops.append("clone")  # clone(flags, ...) on both arches: a thread is fine, a process is not
    load(_OFF_ARG0)
    jump(_BPF_JSET_K, _CLONE_NEW_MASK, "eperm")
    jump(_BPF_JSET_K, _CLONE_THREAD, "allow", "eperm")

    ops.append("allow")
    ret(_RET_ALLOW)
    ops.append("eperm")
    ret(eperm)
    ops.append("enosys")
    ret(enosys)
    ops.append("kill")
    ret(_RET_KILL_PROCESS)

    labels: dict[str, int] = {}
    count = 0
    for op in ops:
        if isinstance(op, str):
            labels[op] = count
        else:
            count += 1
    program: list[tuple[int, int, int, int]] = []
    for op in ops:
        if isinstance(op, str):
            continue
        code, if_true, if_false, k = op
        here = len(program) + 1
        jt = labels[if_true] - here if if_true else 0
        jf = labels[if_false] - here if if_false else 0
        if not (0 <= jt <= 255 and 0 <= jf <= 255):
            raise ValueError("seccomp program too long for 8-bit jumps")
        program.append((code, jt, jf, k))
    return program


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, *args: object) -> int:
    """prctl(2) with unused arguments zeroed; -errno on failure."""
    argv = [ctypes.c_ulong(a) if isinstance(a, int) else a for a in args]
    argv += [ctypes.c_ulong(0)] * (4 - len(argv))
    rc = _libc().prctl(ctypes.c_int(option), *argv)
    return -ctypes.get_errno() if rc == -1 else rc


def install_seccomp(deny_network: bool = True) -> bool:
    """Install the job's seccomp-BPF filter on this process (all of its threads). Irreversible.

    Refused with EPERM: fork, vfork, execve, execveat, clone without CLONE_THREAD (or with
    any namespace flag), ptrace, process_vm_readv/writev, mount, umount2, unshare, setns,
    chroot, kexec_load, init_module, finit_module, bpf, keyctl, add_key, request_key,
    perf_event_open, io_uring_*, pidfd_getfd; with ``deny_network`` also socket() and
    socketpair() for every address family, AF_UNIX included. clone3 fails with ENOSYS so
    that pthread_create falls back to clone.
    A syscall through another ABI (arch field not this machine's, e.g. i386 ``int 0x80``)
    kills the process; on x86_64 every x32 syscall (nr with bit 0x40000000) gets EPERM.

    Returns True once installed, False (without installing anything) on an unsupported
    machine. Raises OSError when the kernel refuses the filter.
    """
    arch = _machine()
    if arch is None:
        return False
    program = _build_program(arch, deny_network)
    filters = (_SockFilter * len(program))(*(_SockFilter(*ins) for ins in program))
    fprog = _SockFprog(len(program), filters)
    rc = _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    if rc != 0:
        raise OSError(-rc, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(-rc)}")
    # seccomp(2) with TSYNC also covers threads already started (e.g. a thread pool created
    # by an import); prctl only filters the calling thread and is the fallback for old kernels.
    rc = _libc().syscall(
        ctypes.c_long(_SYSCALLS[arch]["seccomp"]),
        ctypes.c_ulong(_SECCOMP_SET_MODE_FILTER),
        ctypes.c_ulong(_SECCOMP_FILTER_FLAG_TSYNC),
        ctypes.byref(fprog),
    )
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if rc > 0:
        raise OSError(errno.EBUSY, f"seccomp TSYNC failed: thread {rc} has a diverging filter")
    if err not in (errno.ENOSYS, errno.EINVAL):
        raise OSError(err, f"seccomp(SECCOMP_SET_MODE_FILTER): {os.strerror(err)}")
    rc = _prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog))
    if rc != 0:
        raise OSError(-rc, f"prctl(PR_SET_SECCOMP): {os.strerror(-rc)}")
    return True


# --------------------------------------------------------------------------- network namespace

_CLONE_NEWNET = 0x40000000
_CLONE_NEWUSER = 0x10000000
_PR_GET_DUMPABLE = 3
_PR_SET_DUMPABLE = 4


def _unshare(flags: int) -> int:
    """unshare(2); 0 on success, else the errno."""
    if _libc().unshare(ctypes.c_int(flags)) == 0:
        return 0
    return ctypes.get_errno()


def _write_proc(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def enter_network_namespace() -> str:
    """Move this process into a new, empty network namespace (not even loopback is up).

    Tries unshare(CLONE_NEWNET) (needs CAP_SYS_ADMIN, i.e. root); on EPERM tries
    CLONE_NEWUSER|CLONE_NEWNET with the current uid and gid mapped onto themselves.
    Returns "" on success, else a one-line reason why the process still has the host network.
    """
    err = _unshare(_CLONE_NEWNET)
    if err == 0:
        return ""
    if err != errno.EPERM:
        return f"unshare(CLONE_NEWNET) failed: {os.strerror(err)}"
    uid, gid = os.geteuid(), os.getegid()
    err = _unshare(_CLONE_NEWUSER | _CLONE_NEWNET)
    if err != 0:
        hint = " (the process has more than one thread)" if err == errno.EINVAL else ""
        return (
            f"unshare(CLONE_NEWNET) not permitted and unshare(CLONE_NEWUSER|CLONE_NEWNET) failed: "
            f"{os.strerror(err)}{hint}"
        )
    # A process that changed uid (e.g. root -> nobody) is not dumpable, which makes its /proc
    # files root's and the maps unwritable; dumpable is restored once the maps are written.
    dumpable = _prctl(_PR_GET_DUMPABLE)
    if dumpable == 0:
        _prctl(_PR_SET_DUMPABLE, 1)
    try:
        _write_proc("/proc/self/uid_map", f"{uid} {uid} 1\n")
        _write_proc("/proc/self/setgroups", "deny\n")
        _write_proc("/proc/self/gid_map", f"{gid} {gid} 1\n")
    except OSError as exc:
        # The network is private already, but ids show as the overflow uid; say so.
        return f"in a new user+network namespace, but uid/gid could not be mapped: {exc}"
    finally:
        if dumpable == 0:
            _prctl(_PR_SET_DUMPABLE, 0)
    return ""


# --------------------------------------------------------------------------- IPC namespace

_CLONE_NEWIPC = 0x08000000


def unshare_ipc() -> bool:
    """Move this process into a new, empty SysV IPC / POSIX message-queue namespace (needs
    CAP_SYS_ADMIN). Shared memory segments, semaphores and queues a job creates then die with
    it instead of waiting for the next job. True when done, False when not permitted."""
    return _unshare(_CLONE_NEWIPC) == 0


# --------------------------------------------------------------------------- privileges


def set_dumpable(flag: bool) -> bool:
    """prctl(PR_SET_DUMPABLE): a non-dumpable process's memory, file descriptors and environment
    under /proc cannot be opened by other processes of the same uid without CAP_SYS_PTRACE."""
    return _prctl(_PR_SET_DUMPABLE, 1 if flag else 0) == 0


def drop_privileges(uid: int, gid: int) -> bool:
    """As root: clear supplementary groups, then setgid(gid) and setuid(uid) (real, effective
    and saved ids, so there is no way back). Returns True when done, False when not root."""
    if os.geteuid() != 0:
        return False
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    return True
