"""The optimizer task trains on the device it is given, in-process (no sandbox).

On the CPU an explicit ``device="cpu"`` is the default path bit for bit, and the candidate rule
sees CPU parameters, gradients and state. On a CUDA GPU (marker ``gpu``) the rule sees CUDA
tensors and keeps its state there, the final weights come back on the CPU, and the fitness is
within ``GPU_TOLERANCE`` of the CPU one: both runs start from the same weights on the same
minibatches (drawn on the CPU), and the SGD/AdamW yardstick is computed on the CPU in both
cases, so only float32 rounding of the candidate's training differs. Emulating that drift on
the CPU with a relative noise of 1e-3 on the gradient at every step (about 10^4 times float32
rounding) moved the fitness of Adam on ``logreg`` by at most 5.5e-4 (seeds 0 and 1); 0.01
leaves a wide margin and is far below the gap between AdamW (1) and standing still (0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from discovery.tasks import get_task
from discovery.tasks.optimizer import baselines as library

TASK = get_task("optimizer")
CONFIG = TASK.suite("discover").config("logreg")
SEED = 0
BASELINE = library.adam
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
    """``fn``, noting the device of the parameter, the gradient, the state it keeps and the new value."""

    def update(param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], lr: float, step: int) -> torch.Tensor:
        seen.update((param.device, grad.device))
        new = fn(param, grad, state, lr, step)
        seen.update(t.device for t in tensors(state))
        seen.add(new.device)
        return new

    return update


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
