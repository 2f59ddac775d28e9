"""Every built-in task trains on the device it is given, in-process (no sandbox).

On the CPU an explicit ``device="cpu"`` is the default path bit for bit, and the candidate sees
CPU tensors. On a CUDA GPU (marker ``gpu``) the candidate sees CUDA tensors only, the raw
outputs come back on the CPU, and the fitness is within ``GPU_TOLERANCE`` of the CPU one: both
runs train on the same data from the same weights (drawn on the CPU), so only float32 rounding
differs. Emulating that drift on the CPU with a relative noise of 1e-3 on the loss (the gradient
for the optimizer task) at every step, about 10^4 times float32 rounding, moved the fitness by
at most 2.4e-4 (preference, DPO on ``clean``), 2e-3 (classification, cross-entropy on
``digits_clean``: one test prediction is 1/540) and 5.5e-4 (optimizer, Adam on ``logreg``; its
SGD/AdamW yardstick runs on the CPU either way), seeds 0 and 1. 0.01 leaves a wide margin and is
far below what separates the baselines from the controls.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from discovery.tasks import get_task
from discovery.tasks.classification import baselines as classification
from discovery.tasks.optimizer import baselines as optimizer
from discovery.tasks.preference import baselines as preference
from discovery.training import to_device

SEED = 0
GPU_TOLERANCE = 0.01

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


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


def recording_loss(fn: Callable[..., Any], seen: set[torch.device]) -> Callable[..., Any]:
    """A loss ``fn`` noting the device of every tensor it is called with and returns."""

    def loss(*args: Any) -> torch.Tensor:
        seen.update(a.device for a in args if isinstance(a, torch.Tensor))
        out = fn(*args)
        seen.add(out.device)
        return out

    return loss


def recording_update(fn: Callable[..., Any], seen: set[torch.device]) -> Callable[..., Any]:
    """An update rule ``fn`` noting the device of the parameter, gradient, its state and the new value."""

    def update(param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], lr: float, step: int) -> torch.Tensor:
        seen.update((param.device, grad.device))
        new = fn(param, grad, state, lr, step)
        seen.update(t.device for t in tensors(state))
        seen.add(new.device)
        return new

    return update


#: task, configuration, baseline, how to watch the devices the candidate sees
CASES = {
    "preference": ("clean", preference.dpo, recording_loss),
    "classification": ("digits_clean", classification.cross_entropy, recording_loss),
    "optimizer": ("logreg", optimizer.adam, recording_update),
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread, as in a sandboxed job: on a busy machine spinning threads stall these
    tiny trainings tenfold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.mark.parametrize("name", CASES)
def test_explicit_cpu_device_is_the_default_path_bit_for_bit(name):
    task = get_task(name)
    config_name, baseline, _ = CASES[name]
    config = task.suite("discover").config(config_name)
    inputs = task.prepare(config, SEED)
    explicit_inputs = task.prepare(config, SEED, device="cpu")
    assert_same_tree(inputs, explicit_inputs)
    raw = task.train(baseline, config, SEED, inputs)
    explicit = task.train(baseline, config, SEED, explicit_inputs, device="cpu")
    assert_same_tree(raw, explicit)
    assert all(t.device.type == "cpu" for t in tensors(explicit))
    default_score = task.score(config, SEED, inputs, raw)
    explicit_score = task.score(config, SEED, explicit_inputs, explicit, device="cpu")
    assert explicit_score.fitness == default_score.fitness
    assert explicit_score.metrics == default_score.metrics
    assert explicit_score.curve == default_score.curve


@pytest.mark.parametrize("name", CASES)
def test_the_candidate_sees_tensors_on_the_device_asked_for(name):
    task = get_task(name)
    config_name, baseline, watch = CASES[name]
    config = task.suite("discover").config(config_name)
    seen: set[torch.device] = set()
    task.train(watch(baseline, seen), config, SEED, task.prepare(config, SEED, device="cpu"), device="cpu")
    assert seen == {torch.device("cpu")}


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", CASES)
def test_trains_on_the_gpu_and_scores_close_to_the_cpu(name):
    task = get_task(name)
    config_name, baseline, watch = CASES[name]
    config = task.suite("discover").config(config_name)
    cpu_inputs = task.prepare(config, SEED, device="cpu")
    cpu = task.score(config, SEED, cpu_inputs, task.train(baseline, config, SEED, cpu_inputs, "cpu"), "cpu")
    seen: set[torch.device] = set()
    inputs = to_device(task.prepare(config, SEED, device="cuda:0"), "cuda:0")
    raw = task.train(watch(baseline, seen), config, SEED, inputs, device="cuda:0")
    assert seen == {torch.device("cuda", 0)}
    assert all(t.device.type == "cpu" for t in tensors(raw))
    metrics = task.score(config, SEED, cpu_inputs, raw, device="cuda:0")
    assert math.isfinite(metrics.fitness)
    assert metrics.fitness == pytest.approx(cpu.fitness, abs=GPU_TOLERANCE), (metrics, cpu)
