"""A pool of sandboxes: ``workers`` jobs in parallel, CPU threads split among them, one GPU each."""

from __future__ import annotations

import os
import queue
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from sandbox.base import Sandbox

T = TypeVar("T")


def visible_gpus() -> list[str]:
    """GPU ids this machine offers (``CUDA_VISIBLE_DEVICES`` if set, else what torch sees)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except Exception:  # torch without CUDA support
        return []


#: environment variable that gives each sandboxed job more CPU threads (default 1)
THREADS_VARIABLE = "DISCOVERY_THREADS_PER_JOB"


def threads_per_worker(workers: int) -> int:
    """CPU threads each sandboxed job gets: 1 unless ``DISCOVERY_THREADS_PER_JOB`` says more, and never
    more than the workers' share of the cores. The tasks' models are small: one thread per job is as
    fast as two (7.1 s per preference suite either way, docs/benchmarks.md), more workers scale
    better than more threads, and a single thread waits passively, so a busy machine never
    collapses it; use ``--workers`` to fill the cores."""
    share = max(1, (os.cpu_count() or 1) // max(1, workers))
    try:
        wanted = int(os.environ.get(THREADS_VARIABLE, "1"))
    except ValueError:
        wanted = 1
    return max(1, min(wanted, share))


def _start_all(
    factory: Callable[[int, str | None, int], Sandbox], args: list[tuple[int, str | None, int]]
) -> list[Sandbox]:
    """The workers' sandboxes, started at once (each start waits for a process or container to be
    ready); if one fails, those that started are closed and its error is raised."""
    if len(args) == 1:
        return [factory(*args[0])]
    with ThreadPoolExecutor(len(args), thread_name_prefix="sandbox-start") as ex:
        futures = [ex.submit(factory, *a) for a in args]
    boxes, error = [], None
    for future in futures:
        try:
            boxes.append(future.result())
        except BaseException as exc:  # noqa: BLE001 - re-raised below, once the others are closed
            error = error or exc
    if error is not None:
        for box in boxes:
            box.close()
        raise error
    return boxes


class SandboxPool:
    """Owns ``workers`` sandboxes; a submitted function borrows one for its whole duration."""

    def __init__(
        self, factory: Callable[[int, str | None, int], Sandbox], workers: int = 1, gpus: list[str] | None = None
    ):
        """``gpus``: ids handed to the workers round-robin (default: every visible GPU; [] for none)."""
        self.workers = max(1, workers)
        gpus = visible_gpus() if gpus is None else list(gpus)
        threads = threads_per_worker(self.workers)
        self._idle: queue.Queue[Sandbox] = queue.Queue()
        self.sandboxes = _start_all(
            factory, [(i, gpus[i % len(gpus)] if gpus else None, threads) for i in range(self.workers)]
        )
        for box in self.sandboxes:
            self._idle.put(box)
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox-worker")

    @property
    def isolation_notes(self) -> list[str]:
        return list(self.sandboxes[0].isolation_notes) if self.sandboxes else []

    @contextmanager
    def borrow(self) -> Iterator[Sandbox]:
        """Hold one sandbox for the duration of a ``with`` block (waits for a free one)."""
        box = self._idle.get()
        try:
            yield box
        finally:
            self._idle.put(box)

    def submit(self, fn: Callable[[Sandbox], T]) -> Future[T]:
        """Run ``fn(sandbox)`` on the next free sandbox."""

        def borrow() -> T:
            box = self._idle.get()
            try:
                return fn(box)
            finally:
                self._idle.put(box)

        return self._executor.submit(borrow)

    def kill(self) -> None:
        """Stop every sandbox now, running jobs included (an abort: nothing is waited for)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        for box in self.sandboxes:
            box.kill()

    def close(self) -> None:
        """Wait for running work, then stop every sandbox."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        if len(self.sandboxes) > 1:  # each close waits for a process or a container to stop: all at once
            with ThreadPoolExecutor(len(self.sandboxes), thread_name_prefix="sandbox-close") as ex:
                list(ex.map(lambda box: box.close(), self.sandboxes))
        else:
            for box in self.sandboxes:
                box.close()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
