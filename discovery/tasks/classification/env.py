"""Train a small MLP classifier with a candidate loss; score it on clean held-back test labels.

* ``build_inputs`` (trusted) hands the sandbox only the standardised training features, the
  (possibly noisy) training labels, the number of classes and two seeds.
* ``train_classifier`` (sandboxed) trains a two-hidden-layer ReLU MLP with Adam on shuffled
  mini-batches with the candidate loss, and returns the final weights and training curves.
  No early stopping: with enough steps cross-entropy fits (memorises) flipped labels, which is
  what the noise-robust losses of the literature are meant to resist.
* ``score_classifier`` (trusted) evaluates the final weights on the clean test split:
  accuracy, NLL, expected calibration error, and how many flipped training labels the
  network reproduces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from discovery.tasks.base import check_per_example, descend
from discovery.tasks.classification.data import Split, make_split


@dataclass(frozen=True)
class EnvParams:
    """Settings of one classification configuration."""

    dataset: str = "digits"
    noise: str = "none"  # none | symmetric | asymmetric
    noise_rate: float = 0.0
    imbalance: float = 1.0  # largest / smallest class count in the training set (1: as shipped)
    test_fraction: float = 0.3
    hidden: int = 128
    steps: int = 300
    batch: int = 128
    lr: float = 3e-3
    ece_bins: int = 15
    ece_weight: float = 0.5  # fitness = accuracy - ece_weight * ECE

    @classmethod
    def from_mapping(cls, params: Any) -> EnvParams:
        return cls(**dict(params))


def make_mlp(features: int, hidden: int, classes: int) -> nn.Sequential:
    """The classifier: features -> hidden -> hidden -> classes, ReLU."""
    return nn.Sequential(
        nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes)
    )


def split_for(p: EnvParams, seed: int) -> Split:
    """Trusted: the environment's data (cached per process)."""
    return make_split(p.dataset, p.noise, float(p.noise_rate), float(p.imbalance), float(p.test_fraction), seed)


def build_inputs(p: EnvParams, seed: int) -> dict[str, Any]:
    """Trusted: the public training inputs. Test data and clean labels are not among them."""
    split = split_for(p, seed)
    return {
        "features": split.train_features.clone(),
        "labels": split.train_labels.clone(),
        "num_classes": torch.tensor(split.num_classes),
        "init_seed": torch.tensor(seed * 7919 + 11),
        "order_seed": torch.tensor(seed * 7919 + 17),
    }


def train_classifier(loss_fn: Any, p: EnvParams, inputs: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """Sandboxed: train a fresh MLP with the candidate loss on ``device``; final weights and curves,
    on the CPU."""
    x, y = inputs["features"].to(device), inputs["labels"].to(device)
    classes = int(inputs["num_classes"])
    n = x.shape[0]
    batch = min(p.batch, n)
    # initialisation and minibatch order are drawn on the CPU (CUDA generators have other
    # streams), then moved: every device trains from the same weights on the same batches
    torch.manual_seed(int(inputs["init_seed"]))
    net = make_mlp(x.shape[1], p.hidden, classes).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=p.lr)
    g = torch.Generator().manual_seed(int(inputs["order_seed"]))
    order, cursor = torch.randperm(n, generator=g).to(device), 0
    losses, grad_norms, train_acc = [], [], []
    every = max(1, p.steps // 20)
    for step in range(p.steps):
        if cursor + batch > n:
            order, cursor = torch.randperm(n, generator=g).to(device), 0
        idx = order[cursor : cursor + batch]
        cursor += batch
        logits = net(x[idx])
        targets = y[idx]
        out = loss_fn(logits, targets)
        check_per_example(out, batch, logits.dtype, f"step {step}", "the logits")
        loss = out.mean()
        norm = descend(loss, opt, net.parameters(), step)
        if step % every == 0 or step == p.steps - 1:
            losses.append(float(loss.detach()))
            grad_norms.append(float(norm))
            train_acc.append(float((logits.detach().argmax(1) == targets).float().mean()))
    return {
        "model": {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()},
        "curve_loss": torch.tensor(losses),
        "curve_grad_norm": torch.tensor(grad_norms),
        "curve_train_acc": torch.tensor(train_acc),
    }


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int) -> float:
    """Top-label ECE with ``bins`` equal-width confidence bins (Guo et al. 2017):
    sum over bins of |sum of confidences - number correct| / N."""
    confidence, predicted = probs.max(1)
    correct = (predicted == labels).to(probs.dtype)
    which = torch.clamp((confidence * bins).ceil().long() - 1, 0, bins - 1)
    conf_sum = torch.zeros(bins, dtype=probs.dtype, device=probs.device).index_add_(0, which, confidence)
    acc_sum = torch.zeros(bins, dtype=probs.dtype, device=probs.device).index_add_(0, which, correct)
    return float((conf_sum - acc_sum).abs().sum() / len(labels))


@torch.no_grad()
def score_classifier(p: EnvParams, seed: int, state: dict[str, torch.Tensor]) -> dict[str, float]:
    """Trusted: metrics of trained weights on the clean test split (and the training fit)."""
    split = split_for(p, seed)
    net = make_mlp(split.train_features.shape[1], p.hidden, split.num_classes)
    net.load_state_dict(state, strict=True)
    for value in state.values():
        if not torch.isfinite(value).all():
            raise ValueError("trained weights contain NaN or infinity")
    logits = net(split.test_features).double()
    log_probs = F.log_softmax(logits, dim=1)
    probs = log_probs.exp()
    labels = split.test_labels
    predicted = probs.argmax(1)
    accuracy = float((predicted == labels).double().mean())
    recalls = [
        float((predicted[labels == c] == c).double().mean()) for c in range(split.num_classes) if (labels == c).any()
    ]
    ece = expected_calibration_error(probs, labels, p.ece_bins)
    metrics = {
        "accuracy": accuracy,
        "balanced_accuracy": sum(recalls) / len(recalls),
        "nll": float(F.nll_loss(log_probs, labels)),
        "ece": ece,
    }
    flipped = split.train_labels != split.clean_train_labels
    if flipped.any():  # memorisation: how many flipped training labels the network reproduces
        train_pred = net(split.train_features[flipped]).argmax(1)
        metrics["memorized"] = float((train_pred == split.train_labels[flipped]).double().mean())
    fitness = accuracy - p.ece_weight * ece
    if not math.isfinite(fitness):
        raise ValueError("fitness is not finite")
    metrics["fitness"] = fitness
    return metrics
