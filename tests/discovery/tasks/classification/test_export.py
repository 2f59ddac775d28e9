"""The export adapter turns exported slot functions into torch.nn loss modules that train."""

import inspect
import textwrap

import pytest
import torch

from discovery.tasks import get_task
from discovery.tasks.classification import baselines as lib


def exported_module(**functions) -> dict:
    """A module like ``discovery export`` writes: header, the functions, REGISTRY, the adapter."""
    parts = ["import math\nimport torch\nimport torch.nn.functional as F\n"]
    for name, fn in functions.items():
        src = textwrap.dedent(inspect.getsource(fn))
        parts.append(src.replace(f"def {fn.__name__}(", f"def {name}(", 1))
    parts.append("REGISTRY = {" + ", ".join(f"{n!r}: {n}" for n in functions) + "}\n")
    parts.append(get_task("classification").export_adapter())
    namespace: dict = {}
    exec(compile("\n\n".join(parts), "exported.py", "exec"), namespace)
    return namespace


def test_adapter_matches_cross_entropy_loss_for_every_reduction_and_shape():
    module = exported_module(loss_ce=lib.cross_entropy)
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(8, 4, generator=g), torch.randint(0, 4, (8,), generator=g)
    for reduction in ("mean", "sum", "none"):
        ours = module["loss_module"]("loss_ce", reduction=reduction)
        ref = torch.nn.CrossEntropyLoss(reduction=reduction)
        assert isinstance(ours, torch.nn.Module)
        assert torch.allclose(ours(logits, target), ref(logits, target), atol=1e-6)
    dense, dense_target = torch.randn(2, 4, 3, 5, generator=g), torch.randint(0, 4, (2, 3, 5), generator=g)
    ours = module["loss_module"]("loss_ce", reduction="none")(dense, dense_target)
    assert ours.shape == (2, 3, 5)
    assert torch.allclose(ours, torch.nn.CrossEntropyLoss(reduction="none")(dense, dense_target), atol=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        module["DiscoveredLoss"](lib.cross_entropy, reduction="avg")


@pytest.mark.parametrize("fn", [lib.generalized_ce, lib.symmetric_ce])
def test_exported_loss_trains_a_model_in_a_plain_torch_loop(fn):
    module = exported_module(loss_discovered=fn)
    criterion = module["loss_module"]("loss_discovered")
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(3, 5, generator=g) * 3
    y = torch.randint(0, 3, (240,), generator=g)
    x = centers[y] + torch.randn(240, 5, generator=g)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = float(criterion(model(x), y).detach())
    for _ in range(100):
        loss = criterion(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(criterion(model(x), y).detach()) < 0.5 * first
    assert (model(x).argmax(1) == y).float().mean() > 0.9
