"""Which torch device a run trains on: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

The trusted side resolves the user's choice once (``auto`` is CUDA when this process sees a
GPU); each sandboxed job then sees only the one GPU its worker owns, as ``cuda:0``.
"""

from __future__ import annotations

import re

DEVICE_CHOICES = "auto | cpu | cuda | cuda:N"
_CUDA = re.compile(r"^cuda(?::(\d+))?$")


class DeviceError(ValueError):
    """The requested device cannot be used here (one-line message)."""


def cuda_device_count() -> int:
    """GPUs this process can use (0 when torch has no CUDA support or no driver answers)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken driver must read as "no GPU", not crash the CLI
        return 0


def resolve_device(spec: str, gpus: int | None = None) -> str:
    """The concrete device for ``spec``: ``cpu``, ``cuda`` (every visible GPU, one per worker) or
    ``cuda:N`` (that GPU for every worker). Raises DeviceError with one line when it cannot be had."""
    text = (spec or "auto").strip().lower()
    count = cuda_device_count() if gpus is None else gpus
    if text == "auto":
        return "cuda" if count else "cpu"
    if text == "cpu":
        return "cpu"
    match = _CUDA.match(text)
    if not match:
        raise DeviceError(f"unknown device {spec!r} (choose {DEVICE_CHOICES})")
    if count == 0:
        raise DeviceError(
            f"device {spec!r} asked for, but no CUDA GPU is visible here "
            "(torch.cuda.is_available() is False); use --device cpu or auto"
        )
    if match.group(1) is not None and int(match.group(1)) >= count:
        raise DeviceError(f"device {spec!r} asked for, but only {count} GPU(s) are visible (cuda:0..cuda:{count - 1})")
    return text


def trusted_device(device: str) -> str:
    """Where the trusted side prepares and scores: the first GPU for ``cuda``, else ``device``."""
    return "cuda:0" if device == "cuda" else device


def trainer_device(device: str, gpu: str | None, visible: list[str]) -> str:
    """The device the trusted trainer of one worker computes on: ``cpu``, or the worker's own GPU
    (``gpu``, one of the ``visible`` ids) under this process's index of it."""
    if not device.startswith("cuda"):
        return "cpu"
    if gpu is None:
        return trusted_device(device)
    return f"cuda:{visible.index(gpu) if gpu in visible else 0}"


def worker_gpus(device: str, visible: list[str]) -> list[str]:
    """GPU ids handed out to workers round-robin: all visible ones for ``cuda``, the N-th for
    ``cuda:N``, none for ``cpu``."""
    if not device.startswith("cuda"):
        return []
    match = _CUDA.match(device)
    if match and match.group(1) is not None:
        index = int(match.group(1))
        return [visible[index]] if index < len(visible) else []
    return list(visible)
