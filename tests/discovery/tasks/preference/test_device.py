"""The preference task trains on the device it is given, in-process (no sandbox).

On the CPU an explicit ``device="cpu"`` is the default path bit for bit, and the candidate loss
sees CPU tensors. On a CUDA GPU (marker ``gpu``) the candidate sees CUDA tensors, the raw
outputs come back on the CPU, and the fitness is within ``GPU_TOLERANCE`` of the CPU one: both
train on the same data from the same weights (drawn on the CPU), so only float32 rounding
differs. Emulating that drift on the CPU with a relative noise of 1e-3 on the loss at every
step (about 10^4 times float32 rounding) moved the fitness of DPO on ``clean`` by at most
2.4e-4 (seeds 0 and 1); 0.01 leaves a wide margin and is still far below what separates the
baselines from the controls (about 0.8).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from discovery.tasks import get_task
from discovery.tasks.preference import baselines as library

TASK = get_task("preference")
CONFIG = TASK.suite("discover").config("clean")
SEED = 0
BASELINE = library.dpo
GPU_TOLERANCE = 0.01

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread, as in a sandboxed job: on a busy machine, spinning threads stall these
    tiny trainings tenfold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tensors(tree: Any) -> Iterator[torch.Tensor]:
    """Every tensor in nested dicts, lists and tuples."""
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from tensors(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from tensors(value)


def to_device(tree: Any, device: str) -> Any:
    """``tree`` with its tensors on ``device``, as the transport's ``torch.load(map_location=)``."""
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: to_device(v, device) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_device(v, device) for v in tree)
    return tree


def recording(fn: Callable[..., Any], seen: set[torch.device]) -> Callable[..., Any]:
    """``fn``, noting the device of every tensor it is called with and returns."""

    def loss(*args: Any) -> torch.Tensor:
        seen.update(a.device for a in args if isinstance(a, torch.Tensor))
        out = fn(*args)
        seen.add(out.device)
        return out

    return loss


def assert_same_tree(a: Any, b: Any) -> None:
    """Same structure, and bit-identical tensors."""
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same_tree(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_tree(x, y)
    else:
        assert a == b


def test_explicit_cpu_device_is_the_default_path_bit_for_bit():
    inputs = TASK.prepare(CONFIG, SEED)
    explicit_inputs = TASK.prepare(CONFIG, SEED, device="cpu")
    assert_same_tree(inputs, explicit_inputs)
    raw = TASK.train(BASELINE, CONFIG, SEED, inputs)
    explicit = TASK.train(BASELINE, CONFIG, SEED, explicit_inputs, device="cpu")
    assert_same_tree(raw, explicit)
    assert all(t.device.type == "cpu" for t in tensors(explicit))
    default_score = TASK.score(CONFIG, SEED, inputs, raw)
    explicit_score = TASK.score(CONFIG, SEED, explicit_inputs, explicit, device="cpu")
    assert explicit_score.fitness == default_score.fitness
    assert explicit_score.metrics == default_score.metrics
    assert explicit_score.curve == default_score.curve


def test_the_candidate_sees_tensors_on_the_device_asked_for():
    seen: set[torch.device] = set()
    inputs = TASK.prepare(CONFIG, SEED, device="cpu")
    TASK.train(recording(BASELINE, seen), CONFIG, SEED, inputs, device="cpu")
    assert seen == {torch.device("cpu")}


@pytest.mark.gpu
@needs_cuda
def test_trains_on_the_gpu_and_scores_close_to_the_cpu():
    cpu_inputs = TASK.prepare(CONFIG, SEED, device="cpu")
    cpu = TASK.score(CONFIG, SEED, cpu_inputs, TASK.train(BASELINE, CONFIG, SEED, cpu_inputs, "cpu"), "cpu")
    seen: set[torch.device] = set()
    inputs = to_device(TASK.prepare(CONFIG, SEED, device="cuda:0"), "cuda:0")
    raw = TASK.train(recording(BASELINE, seen), CONFIG, SEED, inputs, device="cuda:0")
    assert seen == {torch.device("cuda", 0)}
    assert all(t.device.type == "cpu" for t in tensors(raw))
    metrics = TASK.score(CONFIG, SEED, cpu_inputs, raw, device="cuda:0")
    assert math.isfinite(metrics.fitness)
    assert metrics.fitness == pytest.approx(cpu.fitness, abs=GPU_TOLERANCE), (metrics, cpu)
