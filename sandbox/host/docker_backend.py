"""Docker backend: one locked-down container per worker, a fresh jailed process per session.

The trainer runs on the trusted side (``discovery.training``); only the candidate's slot function
runs in the jail. Each :class:`DockerSandbox` (one per worker) keeps one long-lived container,
started at its first session (and again whenever it died, was OOM-killed or stopped answering:
noted in :attr:`DockerSandbox.replacements`, or a session asks for other container limits), that
runs the warm template (``python -m sandbox.jail.template ENV --fifos IN OUT``). Every session is
a fresh child forked from that template: it opens its session's FIFOs, puts up its own walls
(:func:`sandbox.jail.runner.confine_job`: the session directory handed to uid 65534, every
privilege dropped, rlimits, the seccomp filter refusing fork/exec and sockets) and only then loads
the candidate; it answers calls of the slot over the FIFOs and is killed, and its directory wiped,
when the session ends.

Around that, the engine enforces for the whole container: no network at all, a read-only root
filesystem (writable: only the session's directory under ``/job``, a bind mount of this
sandbox's host directory), a private IPC namespace in which no SysV or POSIX IPC object can be
created (so nothing of one session lives on into the next), no ``/dev/shm``, every capability
dropped but the four the template needs to hand a session to uid 65534 (``CHOWN``, ``SETUID``,
``SETGID``, ``KILL``; the session itself has none), ``no-new-privileges``, cgroup limits on
memory (no swap), processes and CPUs, a scrubbed environment and no GPU (the jail computes on
the CPU; ``gpu`` is the worker's, for its trusted trainer). Wherever the image holds the trusted
``discovery`` package (the tasks, their environments, the trainer), an empty read-only tmpfs
covers it. The template runs as the container's root so that a candidate (uid 65534) cannot
signal it, its init or anything else of the worker.

The template's JSON lines go over two FIFOs in the host directory, created and held open by
the trusted side before the container starts and unlinked once the template has opened them, so
that no session can reach them. What crosses into the jail is only the slot's arguments, and
what comes back only its results, over the session's FIFOs (:mod:`sandbox.wire`); the
trusted side reads back nothing else but the tail of ``log.txt`` (never through a link).

The image must contain this project (see ``sandbox/Dockerfile`` and ``docs/docker.md``); the
CI test image ``discovery-sandbox:test`` is built without any registry by
``.ci/docker-test-image.sh``. Images are never pulled by this module.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import select
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from sandbox.base import Limits, Sandbox, scrubbed_env
from sandbox.host.jobfiles import SCRATCH_FACTOR, SCRATCH_POLL_SECONDS, write_deadline
from sandbox.host.session import Session, Watch, make_fifos
from sandbox.text import one_line
from sandbox.wire import MAX_PAYLOAD_BYTES, SPEC_FILE, UID_VARIABLE, JailSpec

#: uid and gid a session's process runs as inside the container (``nobody`` / ``sandbox``)
SANDBOX_UID = 65534
CONTAINER_JOB_DIR = "/job"
#: docker keeps container output (the template's own) in a json log; capped
LOG_MAX_SIZE = "1m"
#: the template's FIFOs in the host directory (unlinked once the template has opened them)
REQUESTS_FIFO = "template-requests"
EVENTS_FIFO = "template-events"
#: what the container may hold beyond one session's limits: the template (torch imported) and init
TEMPLATE_MEMORY_MB = 512
TEMPLATE_PIDS = 32
#: the only capabilities the container keeps, for the template's hand-over of a session to uid 65534
TEMPLATE_CAPABILITIES = ("CHOWN", "SETUID", "SETGID", "KILL")
#: no SysV or POSIX IPC object can be created in the container's private IPC namespace: one would
#: outlive its session and be seen by the next candidate (the sessions cannot unshare one of their own)
IPC_SYSCTLS = {"kernel.shmmni": "0", "kernel.msgmni": "0", "kernel.sem": "0 0 0 0", "fs.mqueue.queues_max": "0"}
#: seconds the template may take to start (container start, torch import, warm-up)
START_SECONDS = 120.0
#: how often the container's state is asked for while waiting for its template
POLL_SECONDS = 0.5
#: seconds a request to the template may wait for room in its FIFO
SEND_SECONDS = 10.0
#: seconds the template may take to say it forked a session (a fork takes milliseconds): past
#: them it is taken as hung, and its container is replaced before the session's candidate is blamed
STARTED_SECONDS = 10.0
#: seconds a container whose template is gone may take to be reported as exited by the engine
END_STATE_SECONDS = 3.0
#: the project's trusted package (the tasks, their environments, the trainer), never visible in a jail:
#: wherever the image holds it, the worker's container covers it with an empty read-only tmpfs
TRUSTED_PACKAGES = ("discovery",)
#: prints (JSON) the directories the image's python imports the trusted packages from
_FIND_TRUSTED = (
    "import importlib.util, json\n"
    "found = []\n"
    f"for name in {TRUSTED_PACKAGES!r}:\n"
    "    spec = importlib.util.find_spec(name)\n"
    "    found += list(spec.submodule_search_locations or []) if spec is not None else []\n"
    "print(json.dumps(found))\n"
)
_ids = itertools.count()
#: image id -> the directories of TRUSTED_PACKAGES in it (asked once per image and process)
_trusted_dirs: dict[str, list[str]] = {}
_trusted_lock = threading.Lock()


class DockerUnavailable(RuntimeError):
    """No usable Docker engine or image (one-line message says which)."""


def _docker():
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - docker is a declared dependency
        raise DockerUnavailable("the `docker` Python package is not installed (pip install docker)") from exc
    return docker


def container_limits(limits: Limits) -> tuple[int, int, int]:
    """(memory MB, pids, CPUs) of the container that serves sessions with ``limits``: one
    session's memory and processes plus the template's own."""
    pids = limits.max_processes + TEMPLATE_PIDS if limits.max_processes > 0 else 0
    return limits.memory_mb + TEMPLATE_MEMORY_MB, pids, max(1, limits.threads)


class _ContainerWatch(Watch):
    """One session's child of the container's template, seen through the template's events; a
    container that is gone reads as the child killed by signal 9."""

    def __init__(self, box: DockerSandbox, session_id: str):
        self.box, self.session_id = box, session_id
        self.fd = box._events_fd
        self._exit: dict[str, Any] | None = None
        self._killed = False

    def exited(self) -> dict[str, Any] | None:
        if self._exit is None:
            for event in self.box._events():
                if event is None:  # the template (and with it the container) is gone
                    self.box._retire(f"ended during {self.session_id}")
                    self.fd = -1
                    self._exit = {"returncode": None, "signal": 9}
                elif event.get("event") == "exited" and event.get("id") == self.session_id:
                    self._exit = event
        return self._exit

    def kill(self) -> None:
        if self._exit is not None:
            return
        if self._killed:  # asked before and still not gone: the whole container goes
            self.box._remove_container(f"its template did not end {self.session_id} when asked")
            return
        self._killed = True
        try:
            self.box._send({"op": "kill", "id": self.session_id})
        except OSError as exc:
            self.box._remove_container(f"its template took no kill request for {self.session_id} ({exc.strerror})")


class DockerSandbox(Sandbox):
    """Sessions in fresh children of a warm template inside one long-lived container from ``image``.

    ``gpus`` lists the GPU ids of this worker (``["0"]``; give each worker its own instance):
    ``gpu`` (the first) is where its trusted trainer computes. The container never gets a GPU:
    the jail computes on the CPU.
    """

    name = "docker"

    def __init__(
        self,
        image: str = "discovery-sandbox:test",
        gpus: list[str] | None = None,
        jobs_root: Path | None = None,
    ) -> None:
        docker = _docker()
        self.image = image
        self.gpus = [str(g) for g in gpus or []]
        self.gpu: str | None = self.gpus[0] if self.gpus else None
        #: when set (the worker pool does), overrides ``spec.limits.threads`` for every session
        self.threads: int | None = None
        self._lock = threading.Lock()
        self._container: Any = None
        self._container_key: tuple[int, int, int] | None = None
        self._requests_fd = -1
        self._events_fd = -1
        self._buffer = b""
        #: why this side removed the running container, when it did (for its note in ``replacements``)
        self._removal = ""
        #: one line for each container that misbehaved (died, was OOM-killed, hung) and was
        #: replaced: which, how, and when; the next session starts in a fresh container
        self.replacements: list[str] = []
        self.root: Path | None = None
        try:
            self.client = docker.from_env()
            self.client.ping()
        except Exception as exc:  # noqa: BLE001 - any failure here means "no engine"
            raise DockerUnavailable(f"Docker engine unreachable ({_exc_line(exc)})") from exc
        try:
            attrs = self.client.images.get(image).attrs
        except docker.errors.ImageNotFound as exc:
            raise DockerUnavailable(f"Docker image {image!r} not found locally; build it (see docs/docker.md)") from exc
        except docker.errors.DockerException as exc:
            raise DockerUnavailable(f"cannot inspect Docker image {image!r} ({_exc_line(exc)})") from exc
        self.image_id = attrs.get("Id", "")
        # keep the image's own PATH (e.g. /opt/conda/bin in pytorch/pytorch images): it is not
        # secret, and without it `python` may not resolve; everything else is scrubbed
        image_env = (attrs.get("Config") or {}).get("Env") or []
        self._image_path = next((e.split("=", 1)[1] for e in image_env if e.startswith("PATH=")), None)
        if jobs_root is not None:
            Path(jobs_root).mkdir(parents=True, exist_ok=True)
        # searchable, not listable or writable by the container: a session reaches only its own directory
        self.root = Path(tempfile.mkdtemp(prefix="discovery-docker-", dir=jobs_root))
        os.chmod(self.root, 0o711)
        self.isolation_notes = [
            f"one docker container per worker from image {image} ({self.image_id[7:19]}); a fresh process "
            "per session forked from a warm template inside it, scratch wiped after each session",
            "no network (network_mode=none: loopback only)",
            f"read-only root filesystem, no /tmp or /dev/shm to write; writable: only the session's own "
            f"directory under {CONTAINER_JOB_DIR}",
            "private IPC namespace where no SysV or POSIX IPC object can be created",
            f"the image's {', '.join(TRUSTED_PACKAGES)} package (tasks, environments, trainer), wherever it is, "
            "covered by an empty read-only tmpfs",
            f"per session: uid:gid {SANDBOX_UID}:{SANDBOX_UID} without capabilities, no-new-privileges, "
            "own session and process group, rlimits, seccomp (no fork/exec/sockets), scrubbed environment; "
            f"the container keeps only {', '.join(TEMPLATE_CAPABILITIES)} for the template (root) that hands "
            "each session over, so a candidate cannot signal it",
            "engine's default seccomp profile around the container",
            f"cgroup limits: memory = limits.memory_mb + {TEMPLATE_MEMORY_MB} MB for the template, no swap; "
            f"pids = limits.max_processes + {TEMPLATE_PIDS}; CPUs = limits.threads",
            f"scratch directory capped at {SCRATCH_FACTOR}x the file-size limit "
            f"(measured every {SCRATCH_POLL_SECONDS:g} s), wiped after the session",
            f"container output capped at {LOG_MAX_SIZE} (json-file log); a session's own output goes to its "
            "log.txt under the file-size limit",
            f"GPU {self.gpu} for this worker's trusted trainer; the jail sees no GPU"
            if self.gpu is not None
            else "no GPU devices",
        ]

    # ------------------------------------------------------------------ sessions
    @contextmanager
    def session(self, spec: JailSpec, seconds: float, max_payload: int = MAX_PAYLOAD_BYTES) -> Iterator[Session]:
        """A fresh jailed function server for ``spec`` (forked from the container's warm template),
        ready to answer calls; it ends, and its directory is wiped, with the block."""
        if self.threads:
            spec = replace(spec, limits=replace(spec.limits, threads=self.threads))
        key = container_limits(spec.limits)
        # the container's pids cgroup limits the session's threads; RLIMIT_NPROC would count every
        # process of uid 65534 on the host, shared by all workers
        spec = replace(spec, limits=replace(spec.limits, max_processes=0), device="cpu")
        with self._lock:
            if self.root is None:
                raise DockerUnavailable("this DockerSandbox is closed")
            self._ensure_container(key)
            directory = self.root / f"session-{next(_ids)}"
            # searchable: the template's child, root without CAP_DAC_READ_SEARCH, still reaches what is in
            # it once it has handed the directory to uid 65534 (confine_job); its files are the owner's only
            directory.mkdir(mode=0o711)
            os.chmod(directory, 0o711)
            session: Session | None = None
            fds: tuple[int, ...] = ()
            try:
                spec.write(directory)
                os.chmod(directory / SPEC_FILE, 0o600)
                fds = make_fifos(directory)
                write_deadline(directory, seconds)
                _share(directory)
                run = {"op": "run", "id": directory.name, "job_dir": f"{CONTAINER_JOB_DIR}/{directory.name}"}
                if not self._run(run):  # the template is gone or hung: once more, in a fresh container
                    self._ensure_container(key)
                    if not self._run(run):
                        raise DockerUnavailable(f"the sandbox template does not answer ({self.replacements[-1]})")
                session = Session(directory, spec, _ContainerWatch(self, directory.name), fds, seconds, max_payload)
                session.ready()
                yield session
            finally:
                if session is not None:
                    session.close()
                else:
                    for fd in fds:
                        os.close(fd)
                shutil.rmtree(directory, ignore_errors=True)

    def kill(self) -> None:
        """Remove the container at once, the running session with it (an abort; from any thread)."""
        self._remove_container("removed by an abort")

    def close(self) -> None:
        """Remove the container and this sandbox's directory."""
        with self._lock:
            self._remove_container()
            self._forget_container()
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None
        client = getattr(self, "client", None)
        if client is not None:
            client.close()

    # ------------------------------------------------------------------ the container
    def _environment(self, threads: int) -> dict[str, str]:
        env = scrubbed_env(threads, {"HOME": "/tmp", "CUDA_VISIBLE_DEVICES": ""})
        if self._image_path:
            env["PATH"] = self._image_path
        return env

    def _container_kwargs(
        self,
        limits: Limits,
        volumes: dict[str, dict[str, str]] | None = None,
        template: bool = False,
        hidden: list[str] | None = None,
    ) -> dict[str, Any]:
        """The walls of a container: a worker's (``template``: its template runs as the container's
        root with TEMPLATE_CAPABILITIES, to hand each session to uid 65534) or, for tests of the walls
        themselves, one that runs a command as the sessions' user. ``hidden``: directories of the
        image covered by an empty read-only tmpfs."""
        docker = _docker()
        env = self._environment(limits.threads)
        kwargs: dict[str, Any] = dict(
            volumes=volumes or {},
            tmpfs={path: "ro,size=4k,mode=0555" for path in hidden or []},
            network_mode="none",
            read_only=True,
            ipc_mode="none",  # a private IPC namespace, and no /dev/shm
            sysctls=dict(IPC_SYSCTLS),
            user="0:0" if template else f"{SANDBOX_UID}:{SANDBOX_UID}",
            mem_limit=f"{limits.memory_mb}m",
            memswap_limit=f"{limits.memory_mb}m",
            nano_cpus=int(max(1, limits.threads) * 1e9),
            cap_drop=["ALL"],
            cap_add=list(TEMPLATE_CAPABILITIES) if template else [],
            security_opt=["no-new-privileges"],
            environment={**env, UID_VARIABLE: str(SANDBOX_UID)} if template else env,
            # not the bind mount: ``python -m`` puts its working directory first on sys.path
            working_dir="/",
            log_config=docker.types.LogConfig(type="json-file", config={"max-size": LOG_MAX_SIZE, "max-file": "1"}),
            labels={"discovery.sandbox": "job"},
            # a minimal init (docker-init/tini) as PID 1: the template and the sessions are then
            # ordinary processes, so the default actions of SIGXCPU and SIGXFSZ apply to them
            init=True,
        )
        if limits.max_processes > 0:
            kwargs["pids_limit"] = limits.max_processes
        return kwargs

    def _ensure_container(self, key: tuple[int, int, int]) -> None:
        """A running container with a ready template for sessions of these container limits."""
        if self._container is not None and self._container_key == key:
            if self._alive():
                return
            self._retire("ended between sessions")
        self._remove_container()
        self._forget_container()
        self._start_container(key)

    def _start_container(self, key: tuple[int, int, int]) -> None:
        docker = _docker()
        import requests

        assert self.root is not None
        hidden = self._trusted_dirs()
        memory_mb, pids, threads = key
        paths = [self.root / REQUESTS_FIFO, self.root / EVENTS_FIFO]
        for path in paths:
            path.unlink(missing_ok=True)
            os.mkfifo(path, 0o600)
            _share(path)
        # held read-write: opening them inside never blocks, and a write never fails while starting
        self._requests_fd = os.open(paths[0], os.O_RDWR | os.O_NONBLOCK)
        events_rw = os.open(paths[1], os.O_RDWR | os.O_NONBLOCK)
        self._events_fd = events_rw
        self._buffer = b""
        command = [
            "python",
            "-m",
            "sandbox.jail.template",
            json.dumps(self._environment(threads)),
            "--fifos",
            f"{CONTAINER_JOB_DIR}/{REQUESTS_FIFO}",
            f"{CONTAINER_JOB_DIR}/{EVENTS_FIFO}",
        ]
        limits = Limits(memory_mb=memory_mb, max_processes=pids, threads=threads)
        volumes = {str(self.root): {"bind": CONTAINER_JOB_DIR, "mode": "rw"}}
        try:
            # create + start rather than containers.run: run() would pull a missing image
            self._container = self.client.containers.create(
                self.image, command, **self._container_kwargs(limits, volumes, template=True, hidden=hidden)
            )
            self._container_key = key
            self._container.start()
            ready = self._wait_ready(time.monotonic() + START_SECONDS)
            if ready is None:
                raise DockerUnavailable(f"the sandbox template did not start in its container ({self._logs_line()})")
            # from now on the template is the only writer of its events: its end reads as EOF
            self._events_fd = os.open(paths[1], os.O_RDONLY | os.O_NONBLOCK)
            os.close(events_rw)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            self._remove_container()
            self._forget_container()
            raise DockerUnavailable(f"Docker engine failed starting the sandbox ({_exc_line(exc)})") from exc
        except BaseException:
            self._remove_container()
            self._forget_container()
            raise
        finally:
            for path in paths:  # nothing in the container can reach the template's FIFOs any more
                path.unlink(missing_ok=True)

    def _trusted_dirs(self) -> list[str]:
        """Where the image keeps TRUSTED_PACKAGES (asked once per image): the worker's container
        covers them, so that a session cannot read or import the tasks' code."""
        with _trusted_lock:
            if self.image_id not in _trusted_dirs:
                code, _, _, _, logs = self._execute(
                    ["python", "-c", _FIND_TRUSTED], Limits(wall_seconds=60, memory_mb=512, max_processes=16)
                )
                lines = logs.decode("utf-8", "replace").strip().splitlines()
                try:
                    found = json.loads(lines[-1]) if code == 0 and lines else None
                except ValueError:
                    found = None
                if not isinstance(found, list) or not all(isinstance(p, str) and p.startswith("/") for p in found):
                    raise DockerUnavailable(
                        f"cannot tell where image {self.image!r} keeps the trusted packages "
                        f"(exit code {code}: {lines[-1][:200] if lines else 'no output'})"
                    )
                _trusted_dirs[self.image_id] = sorted(set(found))
            return list(_trusted_dirs[self.image_id])

    def _wait_ready(self, deadline: float) -> dict[str, Any] | None:
        """The template's ready event, or None when its container ended or the deadline passed."""
        next_poll = time.monotonic() + POLL_SECONDS
        while time.monotonic() < deadline:
            for event in self._events(timeout=max(0.0, min(deadline, next_poll) - time.monotonic())):
                if event is None:
                    return None
                if event.get("event") == "ready":
                    return event
            if time.monotonic() >= next_poll:
                self._container.reload()
                if self._container.status not in ("created", "running"):
                    return None
                next_poll = time.monotonic() + POLL_SECONDS
        return None

    def _logs_line(self) -> str:
        try:
            lines = [ln for ln in self._container.logs(tail=20).decode("utf-8", "replace").splitlines() if ln.strip()]
        except Exception:  # noqa: BLE001 - gone, or the engine is down
            return "no output"
        return one_line(lines[-1]) if lines else "no output"

    def _alive(self) -> bool:
        """Whether the template is still there; drops events that belong to no session (none should)."""
        return None not in self._events()

    def _run(self, run: dict[str, Any]) -> bool:
        """Ask the template to fork a session and wait until it says it did; False (the container
        retired, with its note) when the template is gone, takes no request or does not answer."""
        try:
            self._send(run)
        except OSError as exc:
            self._retire(f"took no request ({exc.strerror})")
            return False
        deadline = time.monotonic() + STARTED_SECONDS
        while True:
            try:
                event = self._next_event(deadline)
            except TimeoutError:
                self._remove_container(f"its template did not start {run['id']} within {STARTED_SECONDS:g} s")
                self._retire("")
                return False
            if event is None:
                self._retire(f"ended before {run['id']} started")
                return False
            if event.get("event") == "started" and event.get("id") == run["id"]:
                return True

    def _next_event(self, deadline: float) -> dict[str, Any] | None:
        """The template's next event (None when it is gone), read to the end of its own line only:
        what follows (the session's exit) stays in the FIFO, where the session's watch sees it
        arrive. TimeoutError past ``deadline``."""
        while b"\n" not in self._buffer:
            fd = self._events_fd
            if fd < 0:
                return None
            if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError
            try:
                byte = os.read(fd, 1)  # one line is some 60 bytes
            except BlockingIOError:
                continue
            if not byte:
                return None
            self._buffer += byte
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            event = json.loads(line)
        except ValueError:
            return None
        return event if isinstance(event, dict) else None

    def _retire(self, what: str) -> None:
        """Remove the container that misbehaved and note why (``what`` happened, and how it ended)."""
        container = self._container
        if container is None:
            return
        why = self._removal or f"{what} ({self._end_state(container)})"
        self.replacements.append(one_line(f"container {container.id[:12]} {why}; replaced by a fresh one"))
        self._remove_container()
        self._forget_container()

    @staticmethod
    def _end_state(container: Any) -> str:
        """How ``container`` ended, in words, as the engine tells (asked only once it is gone)."""
        # the template's pipe can close a moment before the engine marks the container exited
        settle = time.monotonic() + END_STATE_SECONDS
        while True:
            try:
                container.reload()
            except Exception:  # noqa: BLE001 - removed from outside, or the engine is down
                return "removed"
            state = container.attrs.get("State") or {}
            if state.get("Status") not in ("running", "paused", "restarting") or time.monotonic() > settle:
                break
            time.sleep(0.1)
        if state.get("OOMKilled"):
            return f"OOM-killed at its {(container.attrs.get('HostConfig') or {}).get('Memory', 0) >> 20} MB limit"
        status = state.get("Status", "unknown")
        if status in ("running", "paused", "restarting"):
            return f"{status}, its template gone"
        return f"{status}, exit code {state.get('ExitCode')}"

    def _events(self, timeout: float = 0.0) -> list[dict[str, Any] | None]:
        """The template's events that have arrived (waiting at most ``timeout``); its end (or
        anything but its JSON lines) reads as None."""
        fd = self._events_fd
        if fd < 0:
            return [None]
        events: list[dict[str, Any] | None] = []
        while select.select([fd], [], [], timeout)[0]:
            timeout = 0.0
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                events.append(None)
                break
            self._buffer += chunk
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            events.append(event if isinstance(event, dict) else None)
        return events

    def _send(self, message: dict[str, Any]) -> None:
        """One request to the template (OSError when it takes none)."""
        if self._requests_fd < 0:
            raise OSError(errno.EPIPE, "the sandbox template is gone")
        data = (json.dumps(message) + "\n").encode()
        give_up = time.monotonic() + SEND_SECONDS
        while data:
            try:
                data = data[os.write(self._requests_fd, data) :]
            except BlockingIOError:
                if time.monotonic() >= give_up:
                    raise OSError(errno.ETIMEDOUT, "the sandbox template takes no requests") from None
                select.select([], [self._requests_fd], [], 0.05)

    def _remove_container(self, why: str = "") -> None:
        """Remove the container now (its processes die with it); safe from any thread. ``why``:
        this side's reason, noted when the session that sees it gone retires it."""
        container = self._container
        if container is None:
            return
        if why and not self._removal:
            self._removal = why
        try:
            container.remove(force=True)
        except Exception:  # noqa: BLE001 - already gone, or the engine is down
            pass

    def _forget_container(self) -> None:
        """Drop this side's ends of the template's FIFOs (after the container is gone)."""
        self._container, self._container_key = None, None
        self._removal = ""
        for name in ("_requests_fd", "_events_fd"):
            fd = getattr(self, name)
            setattr(self, name, -1)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._buffer = b""

    # ------------------------------------------------------------------ tests of the walls
    def _execute(self, command: list[str], limits: Limits) -> tuple[int | None, bool, bool, float, bytes]:
        """Run ``command`` in a fresh container with a worker's walls, as the sessions' user (uid
        65534, no capabilities); (exit code, timed out, OOM-killed, seconds, output). For tests of
        the container walls themselves: a session's process has seccomp on top, which hides them."""
        docker = _docker()
        import requests

        container = None
        try:
            container = self.client.containers.create(self.image, command, **self._container_kwargs(limits))
            started = time.monotonic()
            container.start()
            timed_out = False
            try:
                code: int | None = int(container.wait(timeout=max(0.1, limits.wall_seconds))["StatusCode"])
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                container.reload()  # raises (-> DockerUnavailable) if the engine itself went away
                timed_out = container.status != "exited"
                if timed_out:
                    try:
                        container.kill()
                    except docker.errors.APIError:  # it may have exited in the meantime
                        pass
                code = int(container.wait(timeout=30)["StatusCode"])
            seconds = time.monotonic() - started
            container.reload()
            oom = bool((container.attrs.get("State") or {}).get("OOMKilled")) and not timed_out
            try:
                logs = container.logs(stdout=True, stderr=True, tail=200)
            except docker.errors.APIError:
                logs = b""
            return code, timed_out, oom, seconds, logs
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise DockerUnavailable(f"Docker engine failed running the command ({_exc_line(exc)})") from exc
        finally:
            if container is not None:
                try:
                    container.remove(force=True)
                except Exception:  # noqa: BLE001 - already gone, or the engine is down
                    pass

    def _run_command(self, cmd: list[str], limits: Limits) -> tuple[int, str]:
        """As :meth:`_execute`; (exit code, output). A wall-clock timeout gives exit code -1."""
        code, timed_out, _, _, logs = self._execute(cmd, limits)
        return (-1 if timed_out or code is None else code), logs.decode("utf-8", "replace")


def _exc_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its class name when it has none), as one reason."""
    text = str(exc).strip().splitlines()
    return one_line(text[0] if text else type(exc).__name__)


def _share(path: Path) -> None:
    """Let the container's root, which has no CAP_DAC_OVERRIDE, use ``path`` (a session directory
    and what is in it, or a FIFO of the template). As root here it is the owner already (the same
    uid 0), and the template hands a session's directory to uid 65534 itself; a user in the docker
    group opens them up instead (so put ``jobs_root`` where other local users cannot reach)."""
    if os.geteuid() == 0:
        return
    if path.is_dir():
        os.chmod(path, 0o777)
        for entry in path.iterdir():
            os.chmod(entry, 0o666)
    else:
        os.chmod(path, 0o666)
