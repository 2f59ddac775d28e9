"""Baseline update rules, each written from its published formula, in the slot's form.

Every function is ``update(param, grad, state, lr, step) -> new param``: ``state`` is the
parameter's own dict (empty at step 1), ``step`` counts from 1, and ``lr`` is in *Adam units*
(the suites pass a per-problem base learning rate at which AdamW trains well, times 1/3, 1 or
3). A rule whose natural learning rate is on another scale multiplies ``lr`` by a constant of
its own, the same on every problem (``LR_SCALE`` below): plain gradient steps need a larger
step than Adam's normalised ones, Lion a smaller one (its paper: 3-10x smaller than AdamW).
The gradient-step scale was chosen once, as the value at which plain SGD does best on average
over the discover problems (see docs/optimizer_task.md), and is not tuned per problem.

Buffers are read with ``state.get(key, 0.0)`` (a zero buffer at step 1, broadcast), so that
each key stands on its own when the offline proposer splices parts of two rules together.
Each function is self-contained (only torch and math), because each becomes a standalone
candidate program that runs in the sandbox like any LLM-written rule.
"""

import math  # noqa: F401  (part of every baseline program's namespace)

import torch


def sgd(param, grad, state, lr, step):
    """Plain SGD: w <- w - eta * g (eta = 10 * lr: gradient steps need a larger scale than Adam's)."""
    return param - 10.0 * lr * grad


def momentum(param, grad, state, lr, step):
    """SGD with heavy-ball momentum (Polyak; PyTorch's form): m <- 0.9 m + g; w <- w - eta * m."""
    m = 0.9 * state.get("m", 0.0) + grad
    state["m"] = m
    return param - 1.0 * lr * m


def nesterov(param, grad, state, lr, step):
    """Nesterov momentum (Sutskever et al. 2013, PyTorch's form): m <- 0.9 m + g; w <- w - eta (g + 0.9 m)."""
    m = 0.9 * state.get("m", 0.0) + grad
    state["m"] = m
    return param - 1.0 * lr * (grad + 0.9 * m)


def adagrad(param, grad, state, lr, step):
    """Adagrad (Duchi et al. 2011): s <- s + g^2; w <- w - eta g / (sqrt(s) + eps), eta = 3 lr."""
    s = state.get("s", 0.0) + grad * grad
    state["s"] = s
    return param - 3.0 * lr * grad / (torch.sqrt(s) + 1e-10)


def rmsprop(param, grad, state, lr, step):
    """RMSprop (Tieleman & Hinton 2012): v <- 0.99 v + 0.01 g^2; w <- w - eta g / (sqrt(v) + eps)."""
    v = 0.99 * state.get("v", 0.0) + 0.01 * grad * grad
    state["v"] = v
    return param - lr * grad / (torch.sqrt(v) + 1e-8)


def adam(param, grad, state, lr, step):
    """Adam (Kingma & Ba 2015), beta = (0.9, 0.999), eps 1e-8, bias-corrected moments."""
    m = 0.9 * state.get("m", 0.0) + 0.1 * grad
    v = 0.999 * state.get("v", 0.0) + 0.001 * grad * grad
    state["m"], state["v"] = m, v
    m_hat = m / (1 - 0.9**step)
    v_hat = v / (1 - 0.999**step)
    return param - lr * m_hat / (torch.sqrt(v_hat) + 1e-8)


def adamw(param, grad, state, lr, step):
    """AdamW (Loshchilov & Hutter 2019): decoupled weight decay 0.01, then the Adam step."""
    m = 0.9 * state.get("m", 0.0) + 0.1 * grad
    v = 0.999 * state.get("v", 0.0) + 0.001 * grad * grad
    state["m"], state["v"] = m, v
    m_hat = m / (1 - 0.9**step)
    v_hat = v / (1 - 0.999**step)
    decayed = param * (1 - lr * 0.01)
    return decayed - lr * m_hat / (torch.sqrt(v_hat) + 1e-8)


def lion(param, grad, state, lr, step):
    """Lion (Chen et al. 2023), beta = (0.9, 0.99): c = 0.9 m + 0.1 g; w <- w (1 - eta lambda) - eta sign(c);
    m <- 0.99 m + 0.01 g; eta = lr / 3 and lambda = 0.1 (the paper: lr 3-10x smaller, decay larger)."""
    eta = lr / 3
    m = state.get("m", 0.0)
    c = 0.9 * m + 0.1 * grad
    state["m"] = 0.99 * m + 0.01 * grad
    return param * (1 - eta * 0.1) - eta * torch.sign(c)


BASELINES = {
    "sgd": sgd,
    "momentum": momentum,
    "nesterov": nesterov,
    "adagrad": adagrad,
    "rmsprop": rmsprop,
    "adam": adam,
    "adamw": adamw,
    "lion": lion,
}

#: multiplier of ``lr`` inside each rule (documentation; the rules carry it as a constant)
LR_SCALE = {
    "sgd": 10.0,
    "momentum": 1.0,
    "nesterov": 1.0,
    "adagrad": 3.0,
    "rmsprop": 1.0,
    "adam": 1.0,
    "adamw": 1.0,
    "lion": 1 / 3,
}


def noop(param, grad, state, lr, step):
    """Control: never moves (returns the parameter unchanged)."""
    return param


def ascent(param, grad, state, lr, step):
    """Control: gradient *ascent* with Adam's normalisation (moves uphill at Adam's speed)."""
    v = 0.999 * state.get("v", 0.0) + 0.001 * grad * grad
    state["v"] = v
    return param + lr * grad / (torch.sqrt(v / (1 - 0.999**step)) + 1e-8)


CONTROLS = {"noop": noop, "ascent": ascent}
