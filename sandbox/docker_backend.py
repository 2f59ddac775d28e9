"""Docker backend: every job runs in a fresh, locked-down container (GPU machines in production).

The container gets the job directory bind-mounted at ``/job`` and runs
``python -m sandbox.runner /job``, which puts up its own rlimits and seccomp filter before it
loads the candidate. Around that, the engine enforces: no network at all, a read-only root
filesystem (writable: ``/job`` and a small ``/tmp`` tmpfs), an unprivileged uid with every
capability dropped and ``no-new-privileges``, cgroup limits on memory (no swap), processes and
CPUs, a scrubbed environment, and at most one GPU. The runner sends the job's own output to
``/job/log.txt`` (so the file-size limit caps it, not the engine's log), and the trusted side
measures the job directory while the container runs and kills it past its budget. The trusted
side reads ``result.pt`` with ``weights_only=True`` (:func:`sandbox.jobfiles.read_outcome`);
nothing else from the container is trusted.

The image must contain this project (see ``sandbox/Dockerfile`` and ``docs/docker.md``); the
CI test image ``discovery-sandbox:test`` is built without any registry by
``.ci/docker-test-image.sh``. Images are never pulled by this module.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal as signals
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from sandbox.base import Job, Limits, Outcome, Sandbox, scrubbed_env
from sandbox.jobfiles import (
    SCRATCH_FACTOR,
    read_outcome,
    scratch_budget,
    scratch_exceeded,
    write_deadline,
    write_job,
)

#: uid and gid the candidate runs as inside the container (``nobody`` / ``sandbox``)
SANDBOX_UID = 65534
CONTAINER_JOB_DIR = "/job"
TMPFS_SIZE = "64m"
#: docker keeps container output in a json log; cap it so a chatty candidate cannot fill the disk
LOG_MAX_SIZE = "1m"
LOG_TAIL_BYTES = 8192
#: files the trusted side reads back from the job directory
RESULT_FILES = ("result.pt", "log.txt")
#: how often a running job's scratch directory (the bind-mounted job directory) is measured
WATCH_SECONDS = 0.5


class DockerUnavailable(RuntimeError):
    """No usable Docker engine or image (one-line message says which)."""


def _docker():
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - docker is a declared dependency
        raise DockerUnavailable("the `docker` Python package is not installed (pip install docker)") from exc
    return docker


class DockerSandbox(Sandbox):
    """Run each job in its own container started from ``image``.

    ``gpus`` lists GPU ids this instance may hand out (``["0"]``); each job gets exactly one of
    them, so give each worker its own instance with its own GPU. With several ids, concurrent
    jobs on one instance each take a free GPU (and wait for one when all are busy). Without
    GPUs the container sees no GPU at all.
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
        self.jobs_root = Path(jobs_root) if jobs_root is not None else None
        #: when set (the worker pool does), overrides ``job.limits.threads`` for every job
        self.threads: int | None = None
        if self.jobs_root is not None:
            self.jobs_root.mkdir(parents=True, exist_ok=True)
        self._free_gpus: queue.Queue[str] = queue.Queue()
        self._running: set[Any] = set()  # containers of jobs now running (killed by an abort)
        for gpu in self.gpus:
            self._free_gpus.put(gpu)
        try:
            self.client = docker.from_env()
            self.client.ping()
        except Exception as exc:  # noqa: BLE001 - any failure here means "no engine"
            raise DockerUnavailable(f"Docker engine unreachable ({_one_line(exc)})") from exc
        try:
            attrs = self.client.images.get(image).attrs
        except docker.errors.ImageNotFound as exc:
            raise DockerUnavailable(
                f"Docker image {image!r} not found locally; build it (see docs/docker.md)"
            ) from exc
        except docker.errors.DockerException as exc:
            raise DockerUnavailable(f"cannot inspect Docker image {image!r} ({_one_line(exc)})") from exc
        self.image_id = attrs.get("Id", "")
        # keep the image's own PATH (e.g. /opt/conda/bin in pytorch/pytorch images): it is not
        # secret, and without it `python` may not resolve; everything else is scrubbed
        image_env = (attrs.get("Config") or {}).get("Env") or []
        self._image_path = next((e.split("=", 1)[1] for e in image_env if e.startswith("PATH=")), None)
        self.isolation_notes = [
            f"docker container per job from image {image} ({self.image_id[7:19]}), removed afterwards",
            "no network (network_mode=none: loopback only)",
            f"read-only root filesystem; writable: {CONTAINER_JOB_DIR} (this job's directory only), "
            f"/tmp (tmpfs, {TMPFS_SIZE})",
            f"runs as uid:gid {SANDBOX_UID}:{SANDBOX_UID}; all capabilities dropped; no-new-privileges",
            "engine's default seccomp profile, plus the runner's own seccomp filter and rlimits",
            "cgroup limits: memory = limits.memory_mb with no swap, pids = limits.max_processes, "
            "CPUs = limits.threads",
            "environment scrubbed (PATH, HOME=/tmp, LANG, thread counts only)",
            f"GPU: one of {', '.join(self.gpus)} per job" if self.gpus else "no GPU devices",
            f"container output capped at {LOG_MAX_SIZE} (json-file log); the job's own stdout/stderr go to "
            f"{CONTAINER_JOB_DIR}/log.txt under the file-size limit",
            f"job directory capped at {SCRATCH_FACTOR}x the file-size limit "
            f"(measured every {WATCH_SECONDS:g} s)",
        ]

    # ------------------------------------------------------------------ public
    def run(self, job: Job, inputs: dict[str, Any] | None = None) -> Outcome:
        job_dir = Path(tempfile.mkdtemp(prefix="discovery-job-", dir=self.jobs_root))
        try:
            if self.threads:
                job = replace(job, limits=replace(job.limits, threads=self.threads))
            gpu = self._take_gpu() if job.device.startswith("cuda") else None
            try:
                if job.device.startswith("cuda"):
                    # the container sees only its one GPU, as device 0
                    job = replace(job, device="cuda:0")
                # the container's pids cgroup limits processes per job; RLIMIT_NPROC in the runner
                # would count every process of uid 65534 on the host, shared by all workers
                write_job(job_dir, replace(job, limits=replace(job.limits, max_processes=0)), inputs)
                budget = scratch_budget(job_dir, job.limits.file_mb)
                write_deadline(job_dir, job.limits.wall_seconds)
                _hand_over(job_dir)
                code, timed_out, oom, seconds, logs, scratch = self._execute_watched(
                    ["python", "-m", "sandbox.runner", CONTAINER_JOB_DIR],
                    job.limits,
                    volumes={str(job_dir): {"bind": CONTAINER_JOB_DIR, "mode": "rw"}},
                    gpu=gpu,
                    watch=lambda: scratch_exceeded(job_dir, budget),
                )
            finally:
                if gpu is not None:
                    self._free_gpus.put(gpu)
            _distrust_links(job_dir)
            log_path = job_dir / "log.txt"
            if logs and not log_path.exists():
                log_path.write_bytes(logs[-LOG_TAIL_BYTES:])
            sig = _signal_of(code, timed_out)
            return read_outcome(
                job_dir,
                returncode=None if sig is not None else code,  # as subprocess: a signal, no code
                signal=sig,
                timed_out=timed_out,
                oom=oom,
                seconds=seconds,
                wall_limit=job.limits.wall_seconds,
                file_limit_mb=job.limits.file_mb,
                source=job.source,
                scratch=scratch,
                # no rusage from the engine: wall time x CPUs bounds the CPU time the job can have used,
                # which tells a kill at the CPU hard limit apart from a short-lived SIGKILL
                cpu_seconds=seconds * max(1, job.limits.threads),
                cpu_limit=job.limits.cpu_seconds,
                memory_limit_mb=job.limits.memory_mb,
            )
        finally:
            shutil.rmtree(job_dir, ignore_errors=True)

    def kill(self) -> None:
        """Remove this sandbox's running containers at once (an abort)."""
        for container in list(getattr(self, "_running", ())):
            try:
                container.remove(force=True)
            except Exception:  # noqa: BLE001 - already gone, or the engine is down
                pass

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()

    # ------------------------------------------------------------------ internals
    def _take_gpu(self) -> str:
        if not self.gpus:
            raise ValueError("the job asks for a CUDA device but this DockerSandbox was given no GPU")
        return self._free_gpus.get()

    def _environment(self, threads: int) -> dict[str, str]:
        env = scrubbed_env(threads, {"HOME": "/tmp"})
        if self._image_path:
            env["PATH"] = self._image_path
        return env

    def _container_kwargs(self, limits: Limits, volumes: dict[str, dict[str, str]] | None,
                          gpu: str | None) -> dict[str, Any]:
        docker = _docker()
        kwargs: dict[str, Any] = dict(
            volumes=volumes or {},
            network_mode="none",
            read_only=True,
            tmpfs={"/tmp": f"size={TMPFS_SIZE}"},
            user=f"{SANDBOX_UID}:{SANDBOX_UID}",
            mem_limit=f"{limits.memory_mb}m",
            memswap_limit=f"{limits.memory_mb}m",
            pids_limit=limits.max_processes,
            nano_cpus=int(limits.threads * 1e9),
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            environment=self._environment(limits.threads),
            working_dir=CONTAINER_JOB_DIR if volumes else "/tmp",
            log_config=docker.types.LogConfig(
                type="json-file", config={"max-size": LOG_MAX_SIZE, "max-file": "1"}
            ),
            labels={"discovery.sandbox": "job"},
            # a minimal init (docker-init/tini) as PID 1: the job is then an ordinary process, so
            # the default actions of SIGXCPU and SIGXFSZ apply to it (PID 1 would ignore them)
            init=True,
        )
        if gpu is not None:
            kwargs["device_requests"] = [docker.types.DeviceRequest(device_ids=[gpu], capabilities=[["gpu"]])]
        return kwargs

    def _execute(
        self,
        command: list[str],
        limits: Limits,
        volumes: dict[str, dict[str, str]] | None = None,
        gpu: str | None = None,
    ) -> tuple[int | None, bool, bool, float, bytes]:
        """Run ``command`` in a fresh container; (exit code, timed out, OOM-killed, seconds, output)."""
        return self._execute_watched(command, limits, volumes, gpu)[:5]

    def _execute_watched(
        self,
        command: list[str],
        limits: Limits,
        volumes: dict[str, dict[str, str]] | None = None,
        gpu: str | None = None,
        watch: Callable[[], str] | None = None,
    ) -> tuple[int | None, bool, bool, float, bytes, str]:
        """As :meth:`_execute`, plus ``watch``: called every WATCH_SECONDS while the container
        runs; a non-empty answer (why) kills the container and is returned last."""
        docker = _docker()
        import requests

        container = None
        try:
            # create + start rather than containers.run: run() would pull a missing image
            kwargs = self._container_kwargs(limits, volumes, gpu)
            container = self.client.containers.create(self.image, command, **kwargs)
            self._running.add(container)
            started = time.monotonic()
            container.start()
            timed_out = False
            stopped = ""
            code: int | None = None
            while code is None:
                remaining = limits.wall_seconds - (time.monotonic() - started)
                poll = min(WATCH_SECONDS, remaining) if watch is not None else remaining
                try:
                    if poll <= 0:
                        raise requests.exceptions.ReadTimeout("wall-clock limit")
                    code = int(container.wait(timeout=poll)["StatusCode"])
                    break
                except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                    pass
                container.reload()  # raises (-> DockerUnavailable) if the engine itself went away
                if container.status == "exited":  # finished just as the clock ran out
                    code = int((container.attrs.get("State") or {}).get("ExitCode", -1))
                    break
                if time.monotonic() - started >= limits.wall_seconds:
                    timed_out = True
                elif watch is not None:
                    stopped = watch()
                if timed_out or stopped:
                    _kill(container)
                    code = int(container.wait(timeout=30)["StatusCode"])
            seconds = time.monotonic() - started
            container.reload()
            state = container.attrs.get("State") or {}
            oom = bool(state.get("OOMKilled")) and not timed_out and not stopped
            try:
                logs = container.logs(stdout=True, stderr=True, tail=200)
            except docker.errors.APIError:
                logs = b""
            return code, timed_out, oom, seconds, logs, stopped
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise DockerUnavailable(f"Docker engine failed running the job ({_one_line(exc)})") from exc
        finally:
            if container is not None:
                self._running.discard(container)
                try:
                    container.remove(force=True)
                except Exception:  # noqa: BLE001 - already gone, or the engine is down
                    pass

    def _run_command(self, cmd: list[str], limits: Limits) -> tuple[int, str]:
        """Run an arbitrary command under the same confinement (no job dir); (exit code, output).

        For tests of the container walls themselves. A wall-clock timeout gives exit code -1.
        """
        code, timed_out, _, _, logs = self._execute(cmd, limits)
        return (-1 if timed_out or code is None else code), logs.decode("utf-8", "replace")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _hand_over(job_dir: Path) -> None:
    """Make the job directory the container user's, so it can write result.pt and log.txt."""
    try:
        for path in [job_dir, *job_dir.iterdir()]:
            os.chown(path, SANDBOX_UID, SANDBOX_UID)
    except PermissionError:
        # not root (e.g. a user in the docker group): open the directory up instead
        os.chmod(job_dir, 0o777)
        for path in job_dir.iterdir():
            os.chmod(path, 0o644)


def _distrust_links(job_dir: Path) -> None:
    """Drop result files that are not plain files.

    The container owns the job directory; a symlink ``log.txt -> /proc/self/environ`` would
    otherwise make the trusted side read (and report) its own secrets, and a FIFO would hang it.
    """
    for name in RESULT_FILES:
        path = job_dir / name
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _signal_of(code: int | None, timed_out: bool) -> int | None:
    """Docker reports death by signal N as exit code 128 + N."""
    if timed_out or code is None or code <= 128:
        return None
    sig = code - 128
    return sig if sig in {s.value for s in signals.Signals} else None


def _kill(container: Any) -> None:
    try:
        container.kill()
    except Exception:  # noqa: BLE001 - it may have exited in the meantime
        pass
