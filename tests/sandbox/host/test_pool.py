"""The sandbox pool: GPU ids, threads per worker, and jobs borrowing sandboxes concurrently."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from sandbox.base import Sandbox
from sandbox.host.pool import THREADS_VARIABLE, SandboxPool, threads_per_worker, visible_gpus

WAIT = 10.0  # seconds any test waits for another thread before it fails instead of hanging


class FakeSandbox(Sandbox):
    """A sandbox that only records how the pool built and released it."""

    name = "fake"

    def __init__(self, index: int, gpu: str | None, threads: int):
        self.index, self.gpu, self.threads = index, gpu, threads
        self.isolation_notes = [f"fake {index}"]
        self.closed = self.killed = False

    def session(self, spec, seconds, max_payload=1 << 28):
        raise NotImplementedError("the pool never opens a session itself")

    def close(self) -> None:
        self.closed = True

    def kill(self) -> None:
        self.killed = True


def fake_pool(workers: int, gpus: list[str] | None = None) -> SandboxPool:
    return SandboxPool(FakeSandbox, workers, gpus=[] if gpus is None else gpus)


@pytest.fixture
def eight_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.delenv(THREADS_VARIABLE, raising=False)


@pytest.mark.parametrize(
    ("value", "gpus"),
    [
        ("0", ["0"]),
        ("0,2", ["0", "2"]),
        ("3,,5,", ["3", "5"]),
        ("", []),
        (",", []),
    ],
)
def test_visible_gpus_from_cuda_visible_devices(monkeypatch, value, gpus):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)  # the variable wins over what torch sees
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert visible_gpus() == gpus


def test_visible_gpus_without_the_variable_asks_torch(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert visible_gpus() == ["0", "1"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert visible_gpus() == []

    def broken() -> int:
        raise RuntimeError("no CUDA driver")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", broken)
    assert visible_gpus() == []


@pytest.mark.usefixtures("eight_cores")
def test_one_thread_per_worker_by_default():
    assert [threads_per_worker(w) for w in (1, 2, 8, 16)] == [1, 1, 1, 1]


@pytest.mark.usefixtures("eight_cores")
@pytest.mark.parametrize(
    ("wanted", "workers", "threads"),
    [
        ("3", 2, 3),  # within the share of 8 // 2 = 4 cores
        ("8", 4, 2),  # capped at the share of 8 // 4 = 2 cores
        ("8", 16, 1),  # more workers than cores: still one thread each
        ("4", 0, 4),  # a worker count below one counts as one
        ("0", 1, 1),
        ("-2", 1, 1),
        ("many", 1, 1),  # not a number: the default
    ],
)
def test_threads_per_worker_from_the_environment(monkeypatch, wanted, workers, threads):
    monkeypatch.setenv(THREADS_VARIABLE, wanted)
    assert threads_per_worker(workers) == threads


def test_threads_per_worker_when_the_core_count_is_unknown(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    monkeypatch.setenv(THREADS_VARIABLE, "4")
    assert threads_per_worker(1) == 1


@pytest.mark.usefixtures("eight_cores")
def test_the_factory_gets_index_gpu_round_robin_and_threads(monkeypatch):
    monkeypatch.setenv(THREADS_VARIABLE, "2")
    with fake_pool(3, gpus=["4", "7"]) as pool:
        assert [(b.index, b.gpu, b.threads) for b in pool.sandboxes] == [(0, "4", 2), (1, "7", 2), (2, "4", 2)]
        assert pool.isolation_notes == ["fake 0"]
    with fake_pool(2, gpus=[]) as pool:
        assert [b.gpu for b in pool.sandboxes] == [None, None]


def test_gpus_default_to_the_visible_ones(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    with SandboxPool(FakeSandbox, 2) as pool:
        assert [b.gpu for b in pool.sandboxes] == ["1", "3"]


def test_at_least_one_worker():
    with fake_pool(0) as pool:
        assert pool.workers == 1 and len(pool.sandboxes) == 1


def test_jobs_run_concurrently_up_to_the_pool_size_each_on_its_own_sandbox():
    workers, jobs = 3, 9
    barrier = threading.Barrier(workers, timeout=WAIT)  # breaks unless `workers` jobs run at once
    lock = threading.Lock()
    running: set[int] = set()
    most = 0

    def job(box: Sandbox) -> int:
        nonlocal most
        with lock:
            assert id(box) not in running, "two running jobs share a sandbox"
            running.add(id(box))
            most = max(most, len(running))
        barrier.wait()
        time.sleep(0.01)
        with lock:
            running.discard(id(box))
        return box.index  # type: ignore[attr-defined]

    with fake_pool(workers) as pool:
        futures = [pool.submit(job) for _ in range(jobs)]
        indices = [f.result(timeout=WAIT) for f in futures]
    assert most == workers
    assert sorted(set(indices)) == [0, 1, 2]


def test_a_failing_job_does_not_kill_the_pool():
    workers = 2

    def fail(box: Sandbox) -> None:
        raise ValueError(f"candidate broke sandbox {box.index}")  # type: ignore[attr-defined]

    with fake_pool(workers) as pool:
        failed = [pool.submit(fail) for _ in range(3)]
        for future in failed:
            with pytest.raises(ValueError, match="candidate broke sandbox"):
                future.result(timeout=WAIT)
        # every sandbox went back: `workers` jobs still run at once afterwards
        barrier = threading.Barrier(workers, timeout=WAIT)
        after = [pool.submit(lambda box: (barrier.wait(), box.index)[1]) for _ in range(workers)]
        assert sorted(f.result(timeout=WAIT) for f in after) == [0, 1]
        assert pool._idle.qsize() == workers


def test_borrow_holds_a_sandbox_and_returns_it_after_an_error():
    with fake_pool(1) as pool:
        with pool.borrow() as box:
            assert pool._idle.empty()
            started = threading.Event()
            future = pool.submit(lambda b: started.set() or b)
            assert not started.wait(0.2), "a job ran while the only sandbox was borrowed"
        assert future.result(timeout=WAIT) is box
        with pytest.raises(RuntimeError), pool.borrow():
            raise RuntimeError("inside the block")
        assert pool._idle.qsize() == 1


def test_close_waits_for_running_work_then_closes_every_sandbox():
    pool = fake_pool(2)
    finished = []
    started = threading.Event()

    def slow(box: Sandbox) -> None:
        started.set()
        time.sleep(0.2)
        finished.append(box)

    pool.submit(slow)
    assert started.wait(WAIT)
    pool.close()
    assert len(finished) == 1
    assert all(b.closed and not b.killed for b in pool.sandboxes)  # type: ignore[attr-defined]


def test_kill_cancels_queued_jobs_and_kills_every_sandbox():
    pool = fake_pool(1)
    started, release = threading.Event(), threading.Event()

    def block(box: Sandbox) -> str:
        started.set()
        release.wait(WAIT)
        return "done"

    running = pool.submit(block)
    assert started.wait(WAIT)
    queued = pool.submit(lambda box: "never")
    pool.kill()
    assert queued.cancelled()
    assert all(b.killed for b in pool.sandboxes)  # type: ignore[attr-defined]
    release.set()
    assert running.result(timeout=WAIT) == "done"  # kill stops the sandboxes; the thread itself ends on its own


def test_the_workers_sandboxes_start_and_close_at_once():
    # each start and close waits (a trainer process, a container): a pool of three does them together
    together = threading.Barrier(3, timeout=WAIT)

    class SlowSandbox(FakeSandbox):
        def __init__(self, index: int, gpu: str | None, threads: int):
            together.wait()  # breaks (and fails the test) unless all three are starting at once
            super().__init__(index, gpu, threads)

        def close(self) -> None:
            together.wait()
            super().close()

    pool = SandboxPool(SlowSandbox, 3, gpus=[])
    assert [box.index for box in pool.sandboxes] == [0, 1, 2]
    together.reset()
    pool.close()
    assert all(box.closed for box in pool.sandboxes)


def test_a_sandbox_that_fails_to_start_closes_those_that_started():
    started: list[FakeSandbox] = []

    class Flaky(FakeSandbox):
        def __init__(self, index: int, gpu: str | None, threads: int):
            if index == 1:
                raise RuntimeError("the worker's trainer process did not start")
            super().__init__(index, gpu, threads)
            started.append(self)

    with pytest.raises(RuntimeError, match="did not start"):
        SandboxPool(Flaky, 3, gpus=[])
    assert len(started) == 2 and all(box.closed for box in started)
