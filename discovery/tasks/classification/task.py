"""The classification-loss task: a per-example loss for a small MLP on noisy, imbalanced real data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from discovery.tasks.base import (
    BatchItem,
    LibraryTask,
    SeedMetrics,
    Slot,
    Suite,
    SuiteConfig,
    check_loss_contract,
    curves_from,
    local_slot,
    one_training,
    suite_config,
)
from discovery.tasks.base import env_seed as base_env_seed
from discovery.tasks.classification import baselines as library
from discovery.tasks.classification.env import (
    EnvParams,
    build_inputs,
    score_classifier,
    train_classifiers,
    train_key,
)

SIGNATURE = "def loss(logits, targets) -> torch.Tensor"

CONTRACT = """\
`logits` is a float32 tensor of shape [B, C]: the classifier's unnormalised scores for B
examples and C classes (C is 2 to 10 in the suites). `targets` is an int64 (long) tensor of
shape [B] with the labelled class of each example, in 0..C-1; some labels are wrong (label
noise), and some classes may be rare (class imbalance). Return the per-example losses, a
float32 tensor of shape [B] that is finite and differentiable with respect to `logits`; the
trainer minimises its mean with Adam. `targets` is an index tensor: use it with
`gather`, `F.one_hot(targets, logits.shape[1])` or `F.cross_entropy`, not in float math.
Use only torch, torch.nn.functional (as F) and math; put hyper-parameters as constants inside
the function. This is the contract of `F.cross_entropy(logits, targets, reduction="none")`,
so a discovered loss drops into any PyTorch training loop in its place."""

FITNESS_DOC = """\
Per (configuration, seed): fitness = test accuracy - 0.5 * ECE, both measured on the clean
(never noisy) test labels of a stratified held-back split, after training a fresh MLP for a
fixed number of steps with no early stopping. Accuracy is the literature's headline for
noisy-label learning; ECE (expected calibration error, 15 bins) charges over- and
under-confidence, at half weight so calibration cannot be bought with accuracy. Test NLL,
balanced accuracy and the share of flipped training labels the network memorised are
reported alongside. The overall fitness is the mean over configurations of the
per-configuration mean over seeds."""

IMPORTS = "import math\n\nimport torch\nimport torch.nn.functional as F"


def env_seed(config: SuiteConfig, seed: int) -> int:
    """Each (configuration, seed) gets its own split, noise draw and initialisation."""
    return base_env_seed(config, seed, namespace="classification/")


DISCOVER = Suite(
    "discover",
    (
        suite_config("digits_clean", dataset="digits"),
        suite_config("digits_sym20", dataset="digits", noise="symmetric", noise_rate=0.2),
        suite_config("digits_sym40", dataset="digits", noise="symmetric", noise_rate=0.4),
        suite_config("digits_asym40", dataset="digits", noise="asymmetric", noise_rate=0.4),
        suite_config("cancer_imb5_asym20", dataset="breast_cancer", noise="asymmetric", noise_rate=0.2, imbalance=5.0),
    ),
    seeds=(0, 1, 2),
)

HELDOUT = Suite(
    "heldout",
    (
        suite_config("wine_clean", dataset="wine", test_fraction=0.4),
        suite_config(
            "wine_imb3_sym30", dataset="wine", noise="symmetric", noise_rate=0.3, imbalance=3.0, test_fraction=0.4
        ),
        suite_config("iris_asym30", dataset="iris", noise="asymmetric", noise_rate=0.3, test_fraction=0.4),
        suite_config("iris_sym30", dataset="iris", noise="symmetric", noise_rate=0.3, test_fraction=0.4),
    ),
    seeds=(1000, 1001, 1002, 1003, 1004),
)


class ClassificationTask(LibraryTask):
    """Discover classification losses robust to label noise and class imbalance."""

    name = "classification"
    description = "Classification losses (logits, targets) for a small MLP on scikit-learn data with label noise"
    slot = Slot(name="loss", signature=SIGNATURE, contract=CONTRACT)
    fitness_doc = FITNESS_DOC
    reference_baseline = "cross_entropy"
    cascade_configs = ("digits_clean", "digits_sym40")

    library = library
    imports = IMPORTS
    discover = DISCOVER
    heldout = HELDOUT

    def contract_check(self, fn: Callable[..., Any]) -> None:
        g = torch.Generator().manual_seed(1234)
        for batch, classes in ((10, 5), (6, 2)):
            logits = (torch.randn(batch, classes, generator=g) * 3).requires_grad_(True)
            targets = torch.randint(0, classes, (batch,), generator=g)
            check_loss_contract(
                fn, (logits, targets.clone()), batch, "the logits", {"the logits": logits}, context=f" (C = {classes})"
            )

    def prepare(self, config: SuiteConfig, seed: int, device: str = "cpu") -> dict[str, Any]:
        """The public inputs, built on the CPU whatever ``device`` is (the transport maps them)."""
        return build_inputs(EnvParams.from_mapping(config.params), env_seed(config, seed))

    def train(
        self, fn: Callable[..., Any], config: SuiteConfig, seed: int, inputs: dict[str, Any], device: str = "cpu"
    ) -> dict[str, Any]:
        """Train the MLP with ``fn`` on ``device`` (the vectorised trainer, one training); the raw outputs
        come back on the CPU."""
        return train_classifiers(one_training(fn), EnvParams.from_mapping(config.params), [inputs], device)[0]

    def batch_key(self, config: SuiteConfig) -> Any:
        """Seeds of a configuration, and configurations that differ only in their label noise, train as one batch."""
        return train_key(EnvParams.from_mapping(config.params))

    def train_batch(self, fn: Any, items: list[BatchItem], device: str = "cpu") -> list[dict[str, Any]]:
        """:meth:`train` for every item at once (:func:`train_classifiers`); ``fn`` batched over them."""
        params = EnvParams.from_mapping(items[0][0].params)
        return train_classifiers(local_slot(self.slot.kind, fn, len(items)), params, [i for _, _, i in items], device)

    def score(
        self, config: SuiteConfig, seed: int, inputs: dict[str, Any], outputs: dict[str, Any], device: str = "cpu"
    ) -> SeedMetrics:
        """Score on the CPU whatever ``device`` is: the network is tiny, and a score is then a
        function of the returned weights alone, the same on every machine."""
        metrics = score_classifier(EnvParams.from_mapping(config.params), env_seed(config, seed), outputs["model"])
        fitness = metrics.pop("fitness")
        curve = curves_from(outputs, ("loss", "grad_norm", "train_acc"))
        return SeedMetrics(config=config.name, seed=seed, fitness=fitness, metrics=metrics, curve=curve)

    def export_adapter(self) -> str:
        return EXPORT_ADAPTER


EXPORT_ADAPTER = '''
class DiscoveredLoss(torch.nn.Module):
    """A slot function as a drop-in for torch.nn.CrossEntropyLoss: input [N, C] or [N, C, d1, ...]
    logits, target [N] or [N, d1, ...] class indices; reduction "mean", "sum" or "none"."""

    def __init__(self, fn, reduction="mean"):
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
        self.fn, self.reduction = fn, reduction

    def forward(self, input, target):
        if input.dim() > 2:  # [N, C, d1, ...] -> [N * d1 * ..., C], as CrossEntropyLoss accepts
            classes = input.shape[1]
            shape = target.shape
            per_example = self.fn(input.movedim(1, -1).reshape(-1, classes), target.reshape(-1)).reshape(shape)
        else:
            per_example = self.fn(input, target)
        if self.reduction == "mean":
            return per_example.mean()
        if self.reduction == "sum":
            return per_example.sum()
        return per_example


def loss_module(name, reduction="mean"):
    """REGISTRY[name] wrapped as a torch.nn.Module loss (like torch.nn.CrossEntropyLoss)."""
    return DiscoveredLoss(REGISTRY[name], reduction)
'''


TASK = ClassificationTask()
