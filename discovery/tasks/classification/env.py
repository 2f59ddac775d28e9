"""Train a small MLP classifier with a candidate loss; score it on clean held-back test labels.

* ``build_inputs`` (trusted) hands the sandbox only the standardised training features, the
  (possibly noisy) training labels, the number of classes and two seeds.
* ``train_classifiers`` (trusted, against the jailed loss) trains a two-hidden-layer ReLU MLP with Adam on shuffled
  mini-batches with the candidate loss, and returns the final weights and training curves.
  No early stopping: with enough steps cross-entropy fits (memorises) flipped labels, which is
  what the noise-robust losses of the literature are meant to resist.
* ``score_classifier`` (trusted) evaluates the final weights on the clean test split:
  accuracy, NLL, expected calibration error, and how many flipped training labels the
  network reproduces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from discovery.tasks.base import check_each, descend_batch, split_trainings
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


def train_key(p: EnvParams) -> EnvParams:
    """What a training depends on besides its labels: configurations with equal keys (they differ only in
    label noise) train as one batch; the data's shapes follow from the dataset, imbalance and split."""
    return replace(p, noise="none", noise_rate=0.0, ece_bins=0, ece_weight=0.0)


def train_classifiers(
    loss_fn: Any, p: EnvParams, batch: list[dict[str, Any]], device: str = "cpu"
) -> list[dict[str, Any]]:
    """Trusted: train S fresh MLPs (S environments of equal :func:`train_key`) with the candidate loss, as
    one vectorised training on ``device``; final weights and curves, on the CPU. Each network starts from
    its own initialisation and sees its own minibatches in its own order; the stacked weights' forward is
    ``vmap``-ed over ``functional_call``, one Adam steps them all (elementwise: S independent Adams), and
    the batched ``loss_fn`` is called once per step. No early stopping: with enough steps cross-entropy
    fits (memorises) flipped labels. A training's result does not depend on the others in its batch."""
    size = len(batch)
    shapes = {(tuple(i["features"].shape), int(i["num_classes"])) for i in batch}
    if len(shapes) != 1:
        raise RuntimeError(f"a batch of classification trainings with different shapes: {sorted(shapes)}")
    x = torch.stack([i["features"] for i in batch]).to(device)
    y = torch.stack([i["labels"] for i in batch]).to(device)
    classes = int(batch[0]["num_classes"])
    n = x.shape[1]
    width = min(p.batch, n)
    # initialisation and minibatch order are drawn on the CPU (CUDA generators have other
    # streams), then moved: every device trains from the same weights on the same batches
    nets = []
    for inputs in batch:
        torch.manual_seed(int(inputs["init_seed"]))
        nets.append(make_mlp(x.shape[2], p.hidden, classes))
    net = nets[0].to(device)
    params = {
        name: torch.stack([dict(m.named_parameters())[name].detach() for m in nets]).to(device).requires_grad_(True)
        for name, _ in nets[0].named_parameters()
    }
    opt = torch.optim.Adam(list(params.values()), lr=p.lr)
    gens = [torch.Generator().manual_seed(int(inputs["order_seed"])) for inputs in batch]
    orders, cursor = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device), 0
    rows = torch.arange(size, device=device).unsqueeze(1)

    def forward(weights: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(net, weights, (features,))

    batched_forward = torch.func.vmap(forward)
    losses, grad_norms, train_acc = [], [], []
    every = max(1, p.steps // 20)
    for step in range(p.steps):
        if cursor + width > n:
            orders, cursor = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device), 0
        idx = orders[:, cursor : cursor + width]
        cursor += width
        logits = batched_forward(params, x[rows, idx])
        targets = y[rows, idx]
        out = loss_fn(logits, targets)
        check_each(out, width, logits.dtype, f"step {step}", "the logits", size)
        loss = out.mean(dim=1)
        norm = descend_batch(loss, opt, params.values(), step)
        if step % every == 0 or step == p.steps - 1:
            losses.append(loss.detach().cpu())
            grad_norms.append(norm.detach().cpu())
            train_acc.append((logits.detach().argmax(2) == targets).float().mean(dim=1).cpu())
    return split_trainings(
        "model", params, {"curve_loss": losses, "curve_grad_norm": grad_norms, "curve_train_acc": train_acc}
    )


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
