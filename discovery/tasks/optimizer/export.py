"""Export adapter: turns an exported update rule into a ``torch.optim.Optimizer``.

The text of this module from the marker below on is what ``OptimizerTask.export_adapter``
returns; it is appended to an exported module after its functions and its ``REGISTRY`` dict
(export name -> ``update`` function), so it may refer to ``REGISTRY``. It needs only torch.
"""

import torch

# --- adapter source starts here ---

_OWN_STEP = "rule:step"  # where a rule's own state["step"] is kept: "step" is the optimizer's, as in torch


class RuleOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` running an ``update(param, grad, state, lr, step)`` rule, with torch's conventions.

    Per parameter, ``self.state[p]`` holds ``"step"`` (a float32 tensor counting the updates of
    ``p``, as ``torch.optim.Adam`` keeps it) and the rule's own buffers. The rule gets the same
    dict at every step, with its buffers only (empty at the first update), and ``step`` as an
    int counting that parameter's updates from 1; ``state_dict()`` saves both. ``lr`` is the
    group's learning rate, in Adam units (the rule's constants were discovered with lrs around
    1e-2). ``weight_decay`` is decoupled, AdamW's convention: ``p <- p * (1 - lr * weight_decay)``
    before the rule's update (on top of any decay the rule has inside; default 0).
    ``maximize=True`` hands the rule ``-grad``, so it ascends. Parameters without a gradient are
    skipped and their step does not advance. One parameter at a time (no foreach or fused path).
    """

    def __init__(self, params, rule, lr=1e-3, weight_decay=0.0, maximize=False):
        if not callable(rule):
            raise TypeError("rule must be a function update(param, grad, state, lr, step)")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be non-negative, got {weight_decay}")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "maximize": bool(maximize)})
        self.rule = rule

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("weight_decay", 0.0)
            group.setdefault("maximize", False)
            old = group.pop("rule_step", None)  # the step count of earlier exports: per group, not per parameter
            if old is not None:
                for p in group["params"]:
                    if p in self.state and "step" not in self.state[p]:
                        self.state[p]["step"] = torch.tensor(float(old))

    def _update(self, p, grad, group):
        state = self.state[p]
        count = state.pop("step", None)
        if _OWN_STEP in state:
            state["step"] = state.pop(_OWN_STEP)
        step = 1 + (0 if count is None else int(count))
        decay = 1 - group["lr"] * group["weight_decay"]
        try:
            new = self.rule(p.detach() * decay if decay != 1 else p.detach(), grad, state, group["lr"], step)
        finally:
            if "step" in state:
                state[_OWN_STEP] = state.pop("step")
            state["step"] = torch.tensor(0.0) if count is None else count
        if not isinstance(new, torch.Tensor) or new.shape != p.shape:
            got = f"shape {tuple(new.shape)}" if isinstance(new, torch.Tensor) else type(new).__name__
            raise RuntimeError(f"update rule returned {got} for a parameter of shape {tuple(p.shape)}")
        p.copy_(new)
        state["step"] += 1

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient; returns the closure's loss, if any."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("RuleOptimizer does not support sparse gradients")
                self._update(p, -p.grad if group["maximize"] else p.grad, group)
        return loss


def make_optimizer(name, params, lr=1e-3, weight_decay=0.0, maximize=False):
    """``RuleOptimizer`` over ``params`` with the exported rule ``name`` (a key of REGISTRY)."""
    registry = REGISTRY  # noqa: F821  (defined by the exported module this source is appended to)
    if name not in registry:
        raise KeyError(f"no exported rule {name!r} (have: {', '.join(registry)})")
    return RuleOptimizer(params, registry[name], lr=lr, weight_decay=weight_decay, maximize=maximize)
