"""Export adapter: turns an exported update rule into a ``torch.optim.Optimizer``.

The text of this module from the marker below on is what ``OptimizerTask.export_adapter``
returns; it is appended to an exported module after its functions and its ``REGISTRY`` dict
(export name -> ``update`` function), so it may refer to ``REGISTRY``. It needs only torch.
"""

import torch

# --- adapter source starts here ---


class RuleOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` running an ``update(param, grad, state, lr, step)`` rule.

    ``state`` is ``self.state[p]`` (the rule's own dict, saved by ``state_dict()``); ``step``
    counts the calls of :meth:`step` per parameter group from 1 (kept in the group as
    ``"rule_step"``); ``lr`` is the group's learning rate, in Adam units (the rule's constants
    were discovered with lrs around 1e-2). Parameters without a gradient are skipped.
    """

    def __init__(self, params, rule, lr=1e-3):
        if not callable(rule):
            raise TypeError("rule must be a function update(param, grad, state, lr, step)")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        super().__init__(params, {"lr": lr, "rule_step": 0})
        self.rule = rule

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient; returns the closure's loss, if any."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            group["rule_step"] += 1
            for p in group["params"]:
                if p.grad is None:
                    continue
                new = self.rule(p.detach(), p.grad, self.state[p], group["lr"], group["rule_step"])
                if not isinstance(new, torch.Tensor) or new.shape != p.shape:
                    got = f"shape {tuple(new.shape)}" if isinstance(new, torch.Tensor) else type(new).__name__
                    raise RuntimeError(f"update rule returned {got} for a parameter of shape {tuple(p.shape)}")
                p.copy_(new)
        return loss


def make_optimizer(name, params, lr=1e-3):
    """``RuleOptimizer`` over ``params`` with the exported rule ``name`` (a key of REGISTRY)."""
    registry = REGISTRY  # noqa: F821  (defined by the exported module this source is appended to)
    if name not in registry:
        raise KeyError(f"no exported rule {name!r} (have: {', '.join(registry)})")
    return RuleOptimizer(params, registry[name], lr=lr)
