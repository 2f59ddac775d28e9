"""Baseline classification losses, each written from its published formula.

Every function has the slot's exact signature ``loss(logits [B, C], targets [B]) -> [B]``.
Notation: p = softmax(logits), p_y the probability of the labelled class. Each function is
self-contained (only torch, F and math), because each becomes a standalone candidate program
that runs in the sandbox like any LLM-written loss.
"""

import math  # noqa: F401  (part of every baseline program's namespace)

import torch
import torch.nn.functional as F


def cross_entropy(logits, targets):
    """Cross-entropy: -log p_y."""
    return F.cross_entropy(logits, targets, reduction="none")


def label_smoothing(logits, targets):
    """Label smoothing (Szegedy et al. 2016), eps = 0.1: (1 - eps) (-log p_y) + eps * mean_k(-log p_k)."""
    eps = 0.1
    log_probs = F.log_softmax(logits, dim=1)
    nll = -log_probs.gather(1, targets.unsqueeze(1)).squeeze(1)
    return (1 - eps) * nll - eps * log_probs.mean(dim=1)


def focal(logits, targets):
    """Focal loss (Lin et al. 2017), gamma = 2: -(1 - p_y)^gamma log p_y."""
    gamma = 2.0
    log_py = F.log_softmax(logits, dim=1).gather(1, targets.unsqueeze(1)).squeeze(1)
    return -((1 - log_py.exp()) ** gamma) * log_py


def generalized_ce(logits, targets):
    """Generalized cross-entropy (Zhang & Sabuncu 2018), q = 0.7: (1 - p_y^q) / q."""
    q = 0.7
    log_py = F.log_softmax(logits, dim=1).gather(1, targets.unsqueeze(1)).squeeze(1)
    return (1 - torch.exp(q * log_py)) / q


def mae(logits, targets):
    """Mean absolute error (Ghosh et al. 2017): 1 - p_y (half the L1 distance to the one-hot label)."""
    p_y = torch.softmax(logits, dim=1).gather(1, targets.unsqueeze(1)).squeeze(1)
    return 1 - p_y


def symmetric_ce(logits, targets):
    """Symmetric cross-entropy (Wang et al. 2019), alpha = 0.1, beta = 1, A = log(1e-4):
    alpha * CE + beta * RCE, with reverse CE = -sum_k p_k log q_k = -A (1 - p_y) for the clamped one-hot q."""
    alpha, beta, log_floor = 0.1, 1.0, math.log(1e-4)
    ce = F.cross_entropy(logits, targets, reduction="none")
    p_y = torch.softmax(logits, dim=1).gather(1, targets.unsqueeze(1)).squeeze(1)
    return alpha * ce + beta * (-log_floor) * (1 - p_y)


def poly1(logits, targets):
    """Poly-1 (Leng et al. 2022), epsilon = 1: CE + epsilon (1 - p_y)."""
    epsilon = 1.0
    ce = F.cross_entropy(logits, targets, reduction="none")
    p_y = torch.softmax(logits, dim=1).gather(1, targets.unsqueeze(1)).squeeze(1)
    return ce + epsilon * (1 - p_y)


def brier(logits, targets):
    """Brier score (Brier 1950): sum_k (p_k - onehot_k)^2."""
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(targets, logits.shape[1]).to(probs.dtype)
    return ((probs - onehot) ** 2).sum(dim=1)


BASELINES = {
    "cross_entropy": cross_entropy,
    "label_smoothing": label_smoothing,
    "focal": focal,
    "generalized_ce": generalized_ce,
    "mae": mae,
    "symmetric_ce": symmetric_ce,
    "poly1": poly1,
    "brier": brier,
}


def zero(logits, targets):
    """Control: always zero (keeps a gradient path so training runs, but learns nothing)."""
    return 0.0 * logits.sum(dim=1)


def anti_ce(logits, targets):
    """Control: cross-entropy with the sign flipped (pushes probability away from the label)."""
    return -F.cross_entropy(logits, targets, reduction="none")


CONTROLS = {"zero": zero, "anti_ce": anti_ce}
