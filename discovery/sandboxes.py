"""Choosing a sandbox backend by name and building a worker pool of it."""

from __future__ import annotations

from discovery.devices import worker_gpus
from sandbox.base import Sandbox
from sandbox.host.pool import SandboxPool, visible_gpus

BACKENDS = ("local", "docker")


class SandboxUnavailable(RuntimeError):
    """The requested backend cannot run here (one-line message)."""


def make_pool(
    kind: str = "local", workers: int = 1, docker_image: str | None = None, device: str = "cpu"
) -> SandboxPool:
    """A pool of ``workers`` sandboxes of backend ``kind``. With a CUDA ``device`` (resolved, see
    :mod:`discovery.devices`) each worker owns one GPU, round-robin over the visible ones
    (``cuda``) or the one named (``cuda:N``); with ``cpu`` no job sees a GPU. Local workers, when
    there are several, each get a trusted trainer process of their own (:mod:`discovery.trainer_process`)."""
    if kind not in BACKENDS:
        raise SandboxUnavailable(f"unknown sandbox {kind!r} (choose from {', '.join(BACKENDS)})")

    def factory(index: int, gpu: str | None, threads: int) -> Sandbox:
        if kind == "local":
            if workers > 1:  # each worker's trainer in a process of its own: they train in parallel
                from discovery.trainer_process import TrainerProcess

                return TrainerProcess(gpu=gpu, threads=threads)
            from sandbox.host.local import LocalSandbox

            return LocalSandbox(threads=threads, gpu=gpu)
        from sandbox.host.docker_backend import DockerSandbox, DockerUnavailable

        try:
            box = DockerSandbox(image=docker_image or "discovery-sandbox:test", gpus=[gpu] if gpu else None)
        except DockerUnavailable as exc:
            raise SandboxUnavailable(str(exc)) from None
        box.threads = threads
        return box

    return SandboxPool(factory, workers, gpus=worker_gpus(device, visible_gpus()))
