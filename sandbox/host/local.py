"""The local backend: one isolated process per job, forked from a warm template.

Walls, outermost first:
1. bubblewrap (when it works here): new network, IPC, UTS and PID namespaces; a read-only
   view of only the system libraries, the Python installation and the project's two packages
   (never the checkout with its archive, .git or .env files); a private writable scratch area;
   no home directory, no /root, no /work beyond those packages.
   Without bubblewrap the template enters a new network namespace itself (as root), and
   the missing filesystem wall is said loudly and recorded with the run.
2. A scrubbed environment: the agent's variables (API keys, proxies) never reach the template.
3. Per job, in the forked child: its own session and process group; as root, a private IPC
   namespace and an unprivileged uid of this sandbox's own, with no capabilities (bubblewrap run as root
   keeps every capability, so this is what stops a candidate from writing /proc/sys, raising
   its own rlimits or signalling the template); rlimits (CPU, address space, file size,
   processes, open descriptors, no core); a seccomp filter refusing fork/exec and sockets of
   every family.
4. Enforced by the trusted side: a wall-clock timeout, and a cap on what the job keeps in its
   scratch directory (checked every few hundred milliseconds); either kills the process group.
   The scratch directory is wiped after every job.
The trusted side reads back only ``result.pt`` (raw tensors) and scores it itself.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from sandbox.base import Sandbox, project_root, scrubbed_env
from sandbox.host.jobfiles import SCRATCH_FACTOR, write_deadline
from sandbox.host.session import Session, Watch, make_fifos
from sandbox.wire import MAX_PAYLOAD_BYTES, UID_VARIABLE, JailSpec

KILL_GRACE_SECONDS = 10.0
#: the project's package a jail needs (the function server and its walls), the only part of the
#: checkout it sees, read-only: never ``discovery/`` with the tasks, their environments and the trainer
PACKAGES = ("sandbox",)
#: the project's trusted package: never visible in a jail, even where an install put it next to ``sandbox``
TRUSTED_PACKAGES = ("discovery",)
#: jobs of a sandbox started as root run as a uid of their own, from this range upwards
JOB_UID_BASE = 1_900_000_000
_ids = itertools.count()
_instances = itertools.count()


def _own_uid() -> int:
    """A uid no other sandbox (of this or another process) uses and no account is likely to have:
    per-user limits (RLIMIT_NPROC) and signal permissions are then not shared between workers."""
    return JOB_UID_BASE + (os.getpid() % 100_000) * 1000 + next(_instances) % 1000


@lru_cache(maxsize=1)
def bubblewrap_problem() -> str:
    """Empty when bubblewrap can create the namespaces we need here, else why not."""
    exe = shutil.which("bwrap")
    if exe is None:
        return "bubblewrap (bwrap) is not installed"
    try:
        proc = subprocess.run(
            [exe, "--unshare-net", "--unshare-pid", "--ro-bind", "/", "/", "--proc", "/proc", "true"],
            capture_output=True,
            timeout=20,
            text=True,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap failed to start: {exc}"
    if proc.returncode != 0:
        return f"bubblewrap cannot create namespaces here: {proc.stderr.strip()[:200]}"
    return ""


def _bind_paths(paths: list[str]) -> list[str]:
    """Existing paths (resolved), outermost first, without duplicates or paths inside another."""
    seen: list[str] = []
    for path in sorted({os.path.realpath(p) for p in paths if p and os.path.exists(p)}, key=len):
        if any(path == s or path.startswith(s.rstrip("/") + "/") for s in seen):
            continue
        seen.append(path)
    return seen


@lru_cache(maxsize=1)
def _bwrap_has_perms() -> bool:
    """Whether this bubblewrap knows --perms (0.5 and later)."""
    try:
        out = subprocess.run(["bwrap", "--help"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--perms" in out.stdout + out.stderr


def _parent_dir_args(destinations: list[str], below: str = "") -> list[str]:
    """Create the directories that lead to bind destinations as 0755 (bubblewrap run as root
    would make them 0700, leaving the unprivileged job user unable to reach what is bound);
    with ``below``, only those under that directory (a tmpfs mounted there)."""
    parents: set[str] = set()
    for dest in destinations:
        parent = os.path.dirname(dest.rstrip("/"))
        while parent not in ("", "/"):
            if not below or (parent != below and _inside(parent, below)):
                parents.add(parent)
            parent = os.path.dirname(parent)
    parents -= set(destinations) | {"/tmp", "/proc", "/dev"}
    args: list[str] = []
    for parent in sorted(parents, key=lambda p: (p.count("/"), p)):
        args += (["--perms", "0755"] if _bwrap_has_perms() else []) + ["--dir", parent]
    return args


def _inside(path: str, top: str) -> bool:
    """Whether ``path`` is ``top`` or lies under it (both resolved)."""
    return path == top or path.startswith(top.rstrip("/") + "/")


@dataclass(frozen=True)
class JailView:
    """What the jail binds read-only, outermost first.

    ``outside``: the system, the Python installation and site-packages, none of them inside the
    checkout; ``checkout``: the directory holding the two packages when it is a source tree (an
    editable install, or a checkout on PYTHONPATH), "" when they were installed into site-packages;
    ``inside``: what is bound under the checkout: the two packages and a Python installation that
    lives there (a ``.venv``), never the checkout itself; ``hide``: whether one of ``outside``
    contains the checkout, which then gets an empty tmpfs of its own before ``inside`` is bound.
    """

    outside: list[str]
    checkout: str
    inside: list[str]
    hide: bool
    #: directories covered by an empty tmpfs after the binds: an installed ``discovery`` package
    #: (the tasks, their environments, the trainer) that sits in a bound site-packages
    covered: list[str] = field(default_factory=list)


def jail_view() -> JailView:
    """The read-only binds of a job's jail: /usr and the few files of /etc the loader and Python
    read, the Python installation and site-packages, and of this project only its two packages
    (``discovery/`` and ``sandbox/``) -- never the checkout root with the archive, ``.git``,
    ``.env`` files or anything else kept next to them."""
    system = [
        "/usr",
        "/etc/ld.so.cache",
        "/etc/ld.so.conf",
        "/etc/ld.so.conf.d",
        "/etc/passwd",
        "/etc/group",
        "/etc/nsswitch.conf",
        "/etc/localtime",
        "/etc/alternatives",
    ]
    python = [sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))]
    site = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    root = os.path.realpath(project_root())
    packages = [os.path.join(root, name) for name in PACKAGES]
    if root in {os.path.realpath(p) for p in site}:  # installed: the packages are site-packages' own
        installed = [os.path.join(root, name) for name in TRUSTED_PACKAGES if os.path.isdir(os.path.join(root, name))]
        return JailView(_bind_paths(system + python + site + packages), "", [], False, installed)
    binds = _bind_paths(system + python + site)
    outside = [b for b in binds if not _inside(b, root)]
    inside = _bind_paths([b for b in binds if _inside(b, root) and b != root] + packages)
    return JailView(outside, root, inside, any(_inside(root, b) for b in outside))


def bubblewrap_command(scratch: Path) -> list[str]:
    """The bwrap prefix that gives a process only what running a candidate needs (see
    :func:`jail_view`); never a GPU: the jail computes on CPU copies of the slot's arguments."""
    args = [
        "bwrap",
        "--die-with-parent",
        "--new-session",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-pid",
        "--unshare-cgroup-try",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
    ]
    for top in ("/bin", "/sbin", "/lib", "/lib64", "/lib32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    view = jail_view()
    scratch_path = os.path.realpath(scratch)
    if view.hide:  # the checkout lies inside a bound directory: cover it before binding its packages
        args += _parent_dir_args(view.outside + [scratch_path])
        args += [arg for path in view.outside for arg in ("--ro-bind", path, path)]
        args += (["--perms", "0755"] if _bwrap_has_perms() else []) + ["--tmpfs", view.checkout]
        args += _parent_dir_args(view.inside + [scratch_path], below=view.checkout)
    else:
        args += _parent_dir_args(view.outside + view.inside + [scratch_path])
        args += [arg for path in view.outside for arg in ("--ro-bind", path, path)]
    args += [arg for path in view.inside for arg in ("--ro-bind", path, path)]
    args += [arg for path in view.covered for arg in ("--tmpfs", path)]
    args += ["--bind", scratch_path, scratch_path, "--chdir", scratch_path]
    return args


class _TemplateWatch(Watch):
    """One session's child of the warm template, seen through the template's events."""

    def __init__(self, box: LocalSandbox, session_id: str):
        self.box, self.session_id = box, session_id
        self.fd = box._proc.stdout.fileno() if box._proc is not None and box._proc.stdout is not None else -1
        self._exit: dict[str, Any] | None = None

    def exited(self) -> dict[str, Any] | None:
        if self._exit is None:
            for event in self.box._events():
                if event is None:  # the template itself is gone, and the child with it
                    self.box._stop_template()
                    self.fd = -1
                    self._exit = {"returncode": None, "signal": 9, "reason": "sandbox template died during the job"}
                elif event.get("event") == "exited" and event.get("id") == self.session_id:
                    self._exit = event
        return self._exit

    def kill(self) -> None:
        if self._exit is None and self.box._proc is not None:
            try:
                self.box._send({"op": "kill", "id": self.session_id})
            except (OSError, ValueError):
                self.box._stop_template()


class _ProcessWatch(Watch):
    """A session in a fresh interpreter of its own."""

    def __init__(self, proc: subprocess.Popen[bytes]):
        self.proc = proc

    def exited(self) -> dict[str, Any] | None:
        rc = self.proc.poll()
        if rc is None:
            return None
        return {"returncode": rc if rc >= 0 else None, "signal": -rc if rc < 0 else None}

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, 9)
        except ProcessLookupError:
            pass


class LocalSandbox(Sandbox):
    """Runs each job in a fresh child of a warm template (or a fresh interpreter if ``warm=False``)."""

    name = "local"

    def __init__(
        self,
        jobs_root: Path | None = None,
        warm: bool = True,
        isolation: str = "auto",
        env_extra: dict[str, str] | None = None,
        threads: int | None = None,
        gpu: str | None = None,
    ):
        self.warm = warm
        self.gpu = gpu
        self.env_extra = dict(env_extra or {})
        # the jail computes on the CPU and sees no GPU; ``gpu`` is this worker's, for its trusted trainer
        self.env_extra["CUDA_VISIBLE_DEVICES"] = ""
        self.threads = threads
        self._own_root = jobs_root is None
        root = tempfile.mkdtemp(prefix="discovery-sandbox-") if jobs_root is None else jobs_root
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        # searchable, not listable: the unprivileged job user reaches only its own job directory
        os.chmod(self.root, 0o711)
        problem = bubblewrap_problem() if isolation in ("auto", "bwrap") else "isolation disabled by caller"
        if isolation == "bwrap" and problem:
            raise RuntimeError(problem)
        self.use_bwrap = not problem
        self.isolation_notes: list[str] = []
        if self.use_bwrap:
            self.isolation_notes.append("bubblewrap: own network/pid/ipc namespaces, read-only system, private scratch")
        else:
            note = (
                f"WARNING: no filesystem isolation ({problem}); candidates can read and write what the "
                "agent's user can. Install bubblewrap (apt-get install bubblewrap) for the full sandbox."
            )
            self.isolation_notes.append(note)
            warnings.warn(note, stacklevel=2)
        self.job_uid = _own_uid() if os.geteuid() == 0 else os.geteuid()
        privileges = (
            f"uid {self.job_uid} (this sandbox's own) without capabilities, private IPC namespace, "
            if os.geteuid() == 0
            else ""
        )
        self.isolation_notes.append(
            f"per job: own session and process group, {privileges}rlimits, seccomp (no fork/exec/sockets), "
            f"scrubbed environment, scratch directory capped at {SCRATCH_FACTOR}x the file-size limit, "
            "wiped after the job"
        )
        if gpu is not None:
            self.isolation_notes.append(f"GPU {gpu} for this worker's trusted trainer; the jail sees no GPU")
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""

    # -- template management -------------------------------------------------------------------
    def _base_env(self, threads: int) -> dict[str, str]:
        env = scrubbed_env(threads, self.env_extra)
        env["PYTHONPATH"] = str(project_root())
        return env

    def _start_template(self, threads: int) -> None:
        env = self._base_env(threads)
        cmd = [sys.executable, "-m", "sandbox.jail.template", json.dumps(env)]
        popen_env = dict(env)
        popen_env[UID_VARIABLE] = str(self.job_uid)  # the template's own environment, not the jobs'
        if self.use_bwrap:
            cmd = bubblewrap_command(self.root) + cmd
        else:
            popen_env["DISCOVERY_SANDBOX_NETNS"] = "self"
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=popen_env,
            cwd=str(self.root),
            start_new_session=True,
        )
        self._buffer = b""
        ready = self._read_event(deadline=time.monotonic() + 120)
        if ready is None or ready.get("event") != "ready":
            self._stop_template()
            raise RuntimeError("sandbox template failed to start")
        if ready.get("network"):
            note = f"WARNING: candidates keep the host network: {ready['network']}"
            if note not in self.isolation_notes:
                self.isolation_notes.append(note)
                warnings.warn(note, stacklevel=2)

    def _stop_template(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            if stream:
                stream.close()

    def _send(self, message: dict[str, Any]) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write((json.dumps(message) + "\n").encode())
        self._proc.stdin.flush()

    def _read_event(self, deadline: float) -> dict[str, Any] | None:
        """Next JSON event from the template, or None at the deadline or if it died."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    # -- sessions --------------------------------------------------------------------------------
    @contextmanager
    def session(self, spec: JailSpec, seconds: float, max_payload: int = MAX_PAYLOAD_BYTES) -> Iterator[Session]:
        """A fresh jailed function server for ``spec`` (forked from the warm template, or a fresh
        interpreter), ready to answer calls; it ends, and its directory is wiped, with the block."""
        if self.threads:
            spec = replace(spec, limits=replace(spec.limits, threads=self.threads))
        with self._lock:
            directory = self.root / f"session-{os.getpid()}-{next(_ids)}"
            directory.mkdir(mode=0o700)
            session: Session | None = None
            try:
                spec.write(directory)
                fds = make_fifos(directory)
                write_deadline(directory, seconds)
                watch = self._start_warm(directory, spec) if self.warm else self._start_fresh(directory, spec)
                session = Session(directory, spec, watch, fds, seconds, max_payload)
                session.ready()
                yield session
            finally:
                if session is not None:
                    session.close()
                self._wipe()

    def _start_warm(self, directory: Path, spec: JailSpec) -> Watch:
        if self._proc is None or self._proc.poll() is not None:
            self._start_template(spec.limits.threads)
        self._drain()
        self._send({"op": "run", "id": directory.name, "job_dir": str(directory)})
        return _TemplateWatch(self, directory.name)

    def _start_fresh(self, directory: Path, spec: JailSpec) -> Watch:
        env = self._base_env(spec.limits.threads)
        env["HOME"] = env["TMPDIR"] = str(directory)
        env[UID_VARIABLE] = str(self.job_uid)
        cmd = [sys.executable, "-m", "sandbox.jail.function_server", str(directory)]
        if self.use_bwrap:
            cmd = bubblewrap_command(self.root) + cmd
        with open(directory / "log.txt", "wb") as log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd=str(directory),
                start_new_session=True,
            )
        return _ProcessWatch(proc)

    def _wipe(self) -> None:
        """Nothing a candidate wrote survives into the next session."""
        for entry in self.root.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def _events(self) -> list[dict[str, Any]]:
        """The template's events that have arrived (never blocks); a dead template reads as [None]."""
        if self._proc is None or self._proc.stdout is None:
            return [None]  # type: ignore[list-item]
        fd = self._proc.stdout.fileno()
        events: list[dict[str, Any]] = []
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                events.append(None)  # type: ignore[arg-type]
                break
            self._buffer += chunk
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            events.append(json.loads(line))
        return events

    def _drain(self) -> None:
        """Drop anything the template said that belongs to no session (nothing should)."""
        self._buffer = b""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while select.select([fd], [], [], 0)[0]:
            if not os.read(fd, 65536):
                break

    def kill(self) -> None:
        """Kill the template and the job it runs, without waiting for the job (an abort)."""
        self._stop_template()

    def close(self) -> None:
        """Stop the template and remove the scratch area."""
        with self._lock:
            if self._proc is not None and self._proc.stdin is not None:
                try:
                    self._proc.stdin.close()
                except OSError:
                    pass
            self._stop_template()
            if self._own_root:
                shutil.rmtree(self.root, ignore_errors=True)
