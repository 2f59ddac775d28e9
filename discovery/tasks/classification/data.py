"""Trusted data preparation for the classification task: bundled datasets, splits, label noise.

Only the small datasets that ship inside scikit-learn are used (``load_digits``,
``load_breast_cancer``, ``load_wine``, ``load_iris``): they are read from the package's own
data files, nothing is downloaded. scikit-learn is imported lazily, on the trusted side only;
the sandbox never needs it.

For one (dataset, noise, imbalance, seed) :func:`make_split` returns a stratified train/test
split with features standardised by the training statistics, the long-tailed subsampling
of the training set (class imbalance), and the noisy training labels. Test labels are
always the clean ones.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import torch

DATA_VERSION = "cls-data-v1"

#: dataset name -> scikit-learn loader (all bundled with the package, none downloads)
LOADERS = {
    "digits": "load_digits",
    "breast_cancer": "load_breast_cancer",
    "wine": "load_wine",
    "iris": "load_iris",
}

#: asymmetric noise: class -> the "similar" class its labels flip to
#: digits: Patrini et al. 2017 (used by the GCE and SCE papers for MNIST): 2->7, 3->8, 5<->6, 7->1;
#: breast_cancer: malignant (0) recorded as benign (1), a missed diagnosis; iris: versicolor <-> virginica
#: (setosa is linearly separable from both); wine: cyclic 0->1->2->0 (the CIFAR-100 scheme of those papers).
ASYMMETRIC_MAPS: dict[str, dict[int, int]] = {
    "digits": {2: 7, 3: 8, 5: 6, 6: 5, 7: 1},
    "breast_cancer": {0: 1},
    "iris": {1: 2, 2: 1},
    "wine": {0: 1, 1: 2, 2: 0},
}

NOISE_KINDS = ("none", "symmetric", "asymmetric")


@dataclass(frozen=True)
class Split:
    """One prepared split. ``train_labels`` are noisy; ``clean_train_labels`` never leave the trusted side."""

    train_features: torch.Tensor  # [N, D] float32, standardised
    train_labels: torch.Tensor  # [N] int64, after label noise
    clean_train_labels: torch.Tensor  # [N] int64
    test_features: torch.Tensor  # [M, D] float32, standardised with training statistics
    test_labels: torch.Tensor  # [M] int64, clean
    num_classes: int


def generator(*parts: object) -> torch.Generator:
    """A torch generator seeded from a hash of ``parts`` (stable across processes and runs)."""
    digest = hashlib.sha256(repr((DATA_VERSION,) + parts).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


@functools.lru_cache(maxsize=8)
def load(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Features [N, D] float64 and labels [N] int64 of a bundled scikit-learn dataset."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r} (have: {', '.join(LOADERS)})")
    import sklearn.datasets

    x, y = getattr(sklearn.datasets, LOADERS[name])(return_X_y=True)
    return torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.int64)


def stratified_split(y: torch.Tensor, test_fraction: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, test): each class contributes round(test_fraction * its count) test examples."""
    train, test = [], []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = max(1, round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def long_tail(y: torch.Tensor, ratio: float, g: torch.Generator) -> torch.Tensor:
    """Indices of a long-tailed subsample: class c keeps n_max * ratio^(-c / (C - 1)) examples
    (class 0 the head, the last class the tail), as in the imbalanced-learning literature."""
    classes = torch.unique(y).tolist()
    if ratio <= 1.0 or len(classes) < 2:
        return torch.arange(len(y))
    n_max = max(int((y == c).sum()) for c in classes)
    keep = []
    for rank, c in enumerate(classes):
        idx = torch.nonzero(y == c).squeeze(1)
        n = max(2, min(len(idx), round(n_max * ratio ** (-rank / (len(classes) - 1)))))
        keep.append(idx[torch.randperm(len(idx), generator=g)[:n]])
    return torch.cat(keep).sort().values


def add_noise(
    y: torch.Tensor, num_classes: int, kind: str, rate: float, mapping: dict[int, int], g: torch.Generator
) -> torch.Tensor:
    """Noisy copy of ``y``. Symmetric: each label, with probability ``rate``, becomes one of the
    other classes uniformly (GCE/SCE convention). Asymmetric: each label of a class in
    ``mapping``, with probability ``rate``, becomes its mapped "similar" class."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r} (have: {', '.join(NOISE_KINDS)})")
    if kind == "none" or rate <= 0:
        return y.clone()
    flip = torch.rand(len(y), generator=g) < rate
    if kind == "symmetric":
        shift = torch.randint(1, num_classes, (len(y),), generator=g)
        return torch.where(flip, (y + shift) % num_classes, y)
    target = torch.tensor([mapping.get(c, c) for c in range(num_classes)], dtype=y.dtype)
    return torch.where(flip, target[y], y)


@functools.lru_cache(maxsize=128)
def make_split(dataset: str, noise: str, noise_rate: float, imbalance: float, test_fraction: float, seed: int) -> Split:
    """The prepared split of one environment (a deterministic function of its arguments)."""
    x, y = load(dataset)
    num_classes = int(y.max()) + 1
    train_idx, test_idx = stratified_split(y, test_fraction, generator("split", dataset, test_fraction, seed))
    sub = long_tail(y[train_idx], imbalance, generator("imbalance", dataset, imbalance, seed))
    train_idx = train_idx[sub]
    x_train, x_test = x[train_idx], x[test_idx]
    mean, std = x_train.mean(0), x_train.std(0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant pixels of digits stay 0
    clean = y[train_idx]
    noisy = add_noise(
        clean,
        num_classes,
        noise,
        noise_rate,
        ASYMMETRIC_MAPS.get(dataset, {}),
        generator("noise", dataset, noise, noise_rate, imbalance, seed),
    )
    return Split(
        train_features=((x_train - mean) / std).to(torch.float32),
        train_labels=noisy,
        clean_train_labels=clean,
        test_features=((x_test - mean) / std).to(torch.float32),
        test_labels=y[test_idx],
        num_classes=num_classes,
    )
