"""Baseline preference losses, each written from its published formula.

Every function has the slot's exact signature and returns per-example losses [B].
Notation: a = chosen log-ratio (policy - reference), b = rejected log-ratio, h = a - b.
Each function is self-contained (only torch, F and math), because each becomes a
standalone candidate program that runs in the sandbox like any LLM-written loss.
"""

# ruff: noqa: N803
import math  # noqa: F401  (part of every baseline program's namespace)

import torch
import torch.nn.functional as F


def dpo(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """DPO (Rafailov et al. 2023): -log sigma(beta * h)."""
    h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * h)


def cdpo(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """Conservative DPO, label smoothing eps = 0.2: -(1-eps) log sigma(beta h) - eps log sigma(-beta h)."""
    eps = 0.2
    h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)


def robust_dpo(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """Robust DPO (Chowdhury et al. 2024), flip rate eps = 0.2: unbiased under label flips."""
    eps = 0.2
    h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)


def ipo(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """IPO (Azar et al. 2023): (h - 1/(2 beta))^2."""
    h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return (h - 1 / (2 * beta)) ** 2


def hinge(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """Hinge / SLiC (Zhao et al. 2023): max(0, 1 - beta h)."""
    h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return torch.relu(1 - beta * h)


def kto_pair(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """KTO, paired form (Ethayarajh et al. 2024), z = clamp(batch mean KL estimate, 0), detached."""
    a = policy_chosen_logps - reference_chosen_logps
    b = policy_rejected_logps - reference_rejected_logps
    z = ((a + b) / 2).mean().clamp(min=0).detach()
    return (1 - torch.sigmoid(beta * (a - z))) + (1 - torch.sigmoid(beta * (z - b)))


def bco_pair(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """BCO, paired form (Jung et al. 2024); delta = batch mean reward (a stateless running mean)."""
    a = policy_chosen_logps - reference_chosen_logps
    b = policy_rejected_logps - reference_rejected_logps
    delta = (beta * torch.cat([a, b])).mean().detach()
    return -F.logsigmoid(beta * a - delta) - F.logsigmoid(-(beta * b - delta))


def nca_pair(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """NCA, paired form (Chen et al. 2024): -log s(beta a) - 1/2 log s(-beta a) - 1/2 log s(-beta b)."""
    a = policy_chosen_logps - reference_chosen_logps
    b = policy_rejected_logps - reference_rejected_logps
    return -F.logsigmoid(beta * a) - 0.5 * F.logsigmoid(-beta * a) - 0.5 * F.logsigmoid(-beta * b)


def sppo_hard(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """SPPO-hard (Wu et al. 2024): (a - 1/(2 beta))^2 + (b + 1/(2 beta))^2."""
    a = policy_chosen_logps - reference_chosen_logps
    b = policy_rejected_logps - reference_rejected_logps
    return (a - 1 / (2 * beta)) ** 2 + (b + 1 / (2 * beta)) ** 2


def apo_zero(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """APO-zero (D'Oosterlinck et al. 2024): (1 - sigma(beta a)) + sigma(beta b)."""
    a = policy_chosen_logps - reference_chosen_logps
    b = policy_rejected_logps - reference_rejected_logps
    return (1 - torch.sigmoid(beta * a)) + torch.sigmoid(beta * b)


def discopop(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """DiscoPOP / LRML (Lu et al. 2024), tau = 0.05: blends logistic and exponential losses."""
    tau = 0.05
    h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    x = beta * h
    gate = torch.sigmoid(x / tau)
    return (1 - gate) * -F.logsigmoid(x) + gate * torch.exp(-x)


def cell(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """CELL, found by DiscoPOP: 0.5 exp(-x) + 0.5 (-log sigma(x)), x = beta h."""
    h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    x = beta * h
    return 0.5 * torch.exp(-x) + 0.5 * -F.logsigmoid(x)


def padll(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """PADLL, found by DiscoPOP: 0.9 (1 - 0.5 [h < 0]) (-log sigma(beta h))."""
    h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    weight = 0.9 * (1 - 0.5 * (h < 0).to(h.dtype))
    return weight * -F.logsigmoid(beta * h)


BASELINES = {
    "dpo": dpo,
    "cdpo": cdpo,
    "robust_dpo": robust_dpo,
    "ipo": ipo,
    "hinge": hinge,
    "kto_pair": kto_pair,
    "bco_pair": bco_pair,
    "nca_pair": nca_pair,
    "sppo_hard": sppo_hard,
    "apo_zero": apo_zero,
    "discopop": discopop,
    "cell": cell,
    "padll": padll,
}


def zero(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """Control: always zero (keeps a gradient path so training runs, but learns nothing)."""
    return 0.0 * (policy_chosen_logps + policy_rejected_logps)


def anti_dpo(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """Control: DPO with the sign flipped (prefers the rejected response)."""
    h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(-beta * h)


CONTROLS = {"zero": zero, "anti_dpo": anti_dpo}
