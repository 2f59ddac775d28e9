"""One jailed function server as the trusted side sees it: a channel, a deadline, an end.

A backend (local or Docker) starts the process and hands a :class:`Session` the descriptors of
its FIFOs and a :class:`Watch` of the process. Every wait on the channel also watches the
process, the session's deadline and its scratch directory, so that a jail that dies, hangs or
fills its disk ends the request at once with :class:`JailEnded`, whose ``outcome`` says why in
one line. The replies are data: the trusted side validates each one before using it.
"""

from __future__ import annotations

import math
import os
import select
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from sandbox.base import Outcome, Status
from sandbox.host.jobfiles import SCRATCH_POLL_SECONDS, read_log_tail, read_outcome, scratch_budget, scratch_exceeded
from sandbox.text import one_line
from sandbox.wire import FROM_JAIL, TO_JAIL, Channel, ChannelClosed, JailSpec, ProtocolError

#: how long a jail may take to load the candidate and say it is ready, beyond its own deadline's share
READY_SECONDS = 30.0
#: how long a jail that was killed may take to be reported gone
EXIT_SECONDS = 10.0
#: how long a jail that was told to close may take to exit by itself before it is killed
CLOSE_SECONDS = 1.0


class JailEnded(Exception):
    """The jailed process is gone, or its candidate failed; ``outcome`` says how (one line)."""

    def __init__(self, outcome: Outcome):
        super().__init__(outcome.reason)
        self.outcome = outcome


class Watch(ABC):
    """A backend's view of one jailed process."""

    #: a descriptor that becomes readable when the backend has news of the process (or -1)
    fd: int = -1

    @abstractmethod
    def exited(self) -> dict[str, Any] | None:
        """The process's exit (``returncode``, ``signal``, ``cpu_seconds``, ``maxrss_kb``; or a
        ``reason`` when the backend itself lost it) once it is known, else None; never blocks."""

    @abstractmethod
    def kill(self) -> None:
        """Kill the process (and its group)."""


def make_fifos(directory: Path) -> tuple[int, int]:
    """Create the session's FIFOs; (read end of the replies, write end of the requests), both held
    open read-write by the trusted side so that opening them never blocks either side."""
    for name in (TO_JAIL, FROM_JAIL):
        os.mkfifo(directory / name, 0o600)
    to_jail = os.open(directory / TO_JAIL, os.O_RDWR | os.O_NONBLOCK)
    from_jail = os.open(directory / FROM_JAIL, os.O_RDWR | os.O_NONBLOCK)
    return from_jail, to_jail


class Session:
    """Requests to one jailed function server; every failure of it ends in :class:`JailEnded`."""

    def __init__(
        self, directory: Path, spec: JailSpec, watch: Watch, fds: tuple[int, int], seconds: float, max_payload: int
    ):
        self.directory, self.spec, self.watch = Path(directory), spec, watch
        self.seconds = seconds
        self.started = time.monotonic()
        self.deadline = self.started + seconds if seconds > 0 else math.inf
        self.budget = scratch_budget(self.directory, spec.limits.file_mb)
        self._next_scratch_check = 0.0
        self.channel = Channel(fds[0], fds[1], wait=self._wait, max_payload=max_payload)
        self.outcome: Outcome | None = None
        self.calls = 0
        self._fds: tuple[int, ...] = fds

    # -- waiting --------------------------------------------------------------------------------
    def _wait(self, fd: int, for_write: bool, deadline: float) -> None:
        watched = [self.watch.fd] if self.watch.fd >= 0 else []
        while True:
            now = time.monotonic()
            if now >= self.deadline:
                self._end(timed_out=True)
            if now >= deadline:
                raise ChannelClosed("no answer in time")
            if now >= self._next_scratch_check:
                scratch = scratch_exceeded(self.directory, self.budget)
                if scratch:
                    self._end(scratch=scratch)
                self._next_scratch_check = now + SCRATCH_POLL_SECONDS
            timeout = max(0.0, min(self.deadline, deadline, self._next_scratch_check) - now)
            readable, writable, _ = select.select(
                watched + ([] if for_write else [fd]), [fd] if for_write else [], [], timeout
            )
            if (fd in writable) if for_write else (fd in readable):
                return
            if watched and watched[0] in readable and self.watch.exited() is not None:
                self._end()

    def _end(self, timed_out: bool = False, scratch: str = "") -> None:
        """Kill the process, classify how it ended, raise JailEnded."""
        if timed_out or scratch:
            self.watch.kill()
        exited = self._wait_exit()
        if exited.get("reason"):  # the backend knows better (its template or container is gone)
            self.outcome = Outcome(
                Status.CRASHED, one_line(str(exited["reason"])), seconds=time.monotonic() - self.started
            )
            raise JailEnded(self.outcome)
        self.outcome = read_outcome(
            self.directory,
            exited.get("returncode"),
            exited.get("signal"),
            timed_out,
            False,
            time.monotonic() - self.started,
            wall_limit=self.seconds,
            file_limit_mb=self.spec.limits.file_mb,
            source=self.spec.source,
            scratch=scratch,
            cpu_seconds=exited.get("cpu_seconds"),
            cpu_limit=self.spec.limits.cpu_seconds,
            maxrss_kb=exited.get("maxrss_kb"),
            memory_limit_mb=self.spec.limits.memory_mb,
        )
        raise JailEnded(self.outcome)

    def _wait_exit(self) -> dict[str, Any]:
        give_up = time.monotonic() + EXIT_SECONDS
        while (exited := self.watch.exited()) is None:
            if time.monotonic() >= give_up:
                self.watch.kill()
                give_up = time.monotonic() + EXIT_SECONDS
            if self.watch.fd >= 0:
                select.select([self.watch.fd], [], [], 0.05)
            else:
                time.sleep(0.01)
        return exited

    # -- requests -------------------------------------------------------------------------------
    def _failed(self, reply: dict[str, Any]) -> None:
        failure = reply["failure"] if isinstance(reply.get("failure"), dict) else {}
        status = failure.get("status")
        if status not in {s.value for s in Status} or status == Status.OK.value:
            status = Status.ERROR.value
        line = failure.get("line")
        error_class = str(failure.get("error_class") or "")
        self.watch.kill()
        self._wait_exit()
        self.outcome = Outcome(
            Status(status),
            one_line(str(failure.get("reason", ""))),
            stage=one_line(str(failure.get("stage", "")), 20),
            seconds=time.monotonic() - self.started,
            line=line if isinstance(line, int) and line > 0 else None,
            stderr_tail=read_log_tail(self.directory),
            error_class=error_class[:80] if error_class.isidentifier() else "",
            message=one_line(str(failure.get("message") or ""), 200),
        )
        raise JailEnded(self.outcome)

    def _receive(self, deadline: float) -> dict[str, Any]:
        try:
            reply = self.channel.receive(deadline)
        except ChannelClosed:
            self._end(timed_out=True)
        except ProtocolError as exc:
            self.watch.kill()
            self._wait_exit()
            self.outcome = Outcome(
                Status.INVALID,
                one_line(f"malformed reply from the sandbox: {exc}"),
                stage="call",
                seconds=time.monotonic() - self.started,
                stderr_tail=read_log_tail(self.directory),
            )
            raise JailEnded(self.outcome) from None
        if "failure" in reply:
            self._failed(reply)
        return reply

    def ready(self) -> None:
        """Wait until the candidate is loaded (or raise JailEnded with why it is not)."""
        self._receive(min(self.deadline, time.monotonic() + READY_SECONDS + self.seconds))

    def request(self, message: dict[str, Any], seconds: float = 0.0) -> dict[str, Any]:
        """Send one request and return its reply; ``seconds`` bounds this call (0: the session's deadline)."""
        deadline = time.monotonic() + seconds if seconds > 0 else math.inf
        self.calls += 1
        try:
            self.channel.send(message, deadline)
        except ChannelClosed:
            self._end(timed_out=True)
        return self._receive(deadline)

    def close(self) -> Outcome:
        """End the process (if it is still there); the session's outcome (ok unless it failed)."""
        if self.outcome is None:
            try:
                self.channel.send({"op": "close"}, time.monotonic() + 1.0)
            except (ChannelClosed, JailEnded):
                pass
            # a moment to exit by itself, flushing what the candidate printed, before it is killed
            give_up = time.monotonic() + CLOSE_SECONDS
            while self.watch.exited() is None and time.monotonic() < give_up:
                if self.watch.fd >= 0:
                    select.select([self.watch.fd], [], [], 0.02)
                else:
                    time.sleep(0.005)
            self.watch.kill()
            self._wait_exit()
            self.outcome = Outcome(
                Status.OK, seconds=time.monotonic() - self.started, stderr_tail=read_log_tail(self.directory)
            )
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = ()
        return self.outcome
