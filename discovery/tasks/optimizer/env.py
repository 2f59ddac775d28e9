"""Small training problems on which an update rule is run, and how its result is measured.

Problems (``ProblemParams.kind``):

* ``logreg``, ``mlp``, ``cnn``: classifiers of scikit-learn's 8x8 digits (read from the CSV
  that ships inside scikit-learn, no download); a seeded split keeps 500 test images on the
  trusted side.
* ``autoencoder``: a tanh autoencoder of the same digits (held-out problem).
* ``charlm``: a character-level language model (an MLP over the previous characters, as in
  Bengio et al. 2003) on the English text of ``pydoc_data.topics``, which ships with CPython;
  the last 15% of the text is the trusted validation text.
* ``nqm``: the noisy quadratic model (Zhang et al. 2019): an ill-conditioned diagonal
  quadratic with gradient noise proportional to the curvature, optimum at a random point.
* ``rosenbrock``: the chained Rosenbrock function, optimum moved to a random point.

Every problem is a dictionary of named float32 tensors (the parameters) and a loss. Training
(sandboxed) starts from trusted initial weights, draws minibatches from a seeded generator
and calls the candidate rule once per parameter tensor and step, for each learning rate of
the problem's grid. Scoring (trusted) turns the final weights into a metric: test
cross-entropy (classifiers, language model), test reconstruction error (autoencoder), or
log10 of the objective (synthetic problems); lower is better.
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import importlib.util
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from discovery.tasks.base import TrainingFailed, cache_dir, one_training

ENV_VERSION = "opt-env-v1"
#: training loss recorded at about this many points per run (the curve shown as feedback)
CURVE_POINTS = 20
#: a run stops as diverged when its training loss is not finite or exceeds this many times its first
DIVERGE_FACTOR = 100.0
DIGITS_TEST = 500
TEXT_VOCAB = "abcdefghijklmnopqrstuvwxyz0123456789 .,;:'\"()-_=\n?"
TEXT_VAL_FRACTION = 0.15
TEXT_TRAIN_CHARS = 60000
TEXT_VAL_WINDOWS = 4000


@dataclass(frozen=True)
class ProblemParams:
    """Settings of one problem configuration."""

    kind: str
    steps: int = 150
    batch: int = 64
    hidden: int = 32
    depth: int = 1
    channels: int = 8
    context: int = 8
    embed: int = 12
    dim: int = 50
    cond: float = 100.0
    noise: float = 0.0
    base_lr: float = 1e-2
    lr_grid: tuple[float, ...] = field(default=(1 / 3, 1.0, 3.0))

    @classmethod
    def from_mapping(cls, params: Any) -> ProblemParams:
        values = dict(params)
        if "lr_grid" in values:
            values["lr_grid"] = tuple(float(v) for v in values["lr_grid"])
        return cls(**values)

    @property
    def lrs(self) -> list[float]:
        """The learning rates the rule is run with: the base times each multiplier of the grid."""
        return [self.base_lr * m for m in self.lr_grid]

    @property
    def synthetic(self) -> bool:
        return self.kind in ("nqm", "rosenbrock")


def generator(*parts: object) -> torch.Generator:
    """A torch generator seeded from a hash of ``parts`` (and the environment version)."""
    digest = hashlib.sha256(repr((ENV_VERSION,) + parts).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


# ----------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=1)
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits: images [1797, 64] scaled to [0, 1] and labels [1797]."""
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is not None and path.exists():  # read the bundled CSV without importing scikit-learn
        with gzip.open(path, "rt") as fh:
            rows = [[float(v) for v in row] for row in csv.reader(fh) if row]
        data = torch.tensor(rows, dtype=torch.float32)
        x, y = data[:, :-1], data[:, -1].long()
    else:
        from sklearn.datasets import load_digits

        d = load_digits()
        x, y = torch.tensor(d.data, dtype=torch.float32), torch.tensor(d.target).long()
    return x / 16.0, y


def digits_split(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, test images, test labels) of one seeded split."""
    x, y = digits()
    perm = torch.randperm(x.shape[0], generator=generator("digits-split", seed))
    test, train = perm[:DIGITS_TEST], perm[DIGITS_TEST:]
    return x[train], y[train], x[test], y[test]


@functools.lru_cache(maxsize=1)
def corpus() -> torch.Tensor:
    """The English text of ``pydoc_data.topics`` as character codes into TEXT_VOCAB (uint8)."""
    from pydoc_data.topics import topics

    text = "\n".join(topics[k] for k in sorted(topics)).lower()
    index = {c: i for i, c in enumerate(TEXT_VOCAB)}
    unknown = index["?"]
    return torch.tensor([index.get(c, unknown) for c in text], dtype=torch.uint8)


def text_split(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(a seeded training slice of TEXT_TRAIN_CHARS characters, the validation text)."""
    codes = corpus()
    cut = int(len(codes) * (1 - TEXT_VAL_FRACTION))
    start = int(torch.randint(0, cut - TEXT_TRAIN_CHARS, (1,), generator=generator("text-slice", seed)))
    return codes[start : start + TEXT_TRAIN_CHARS].clone(), codes[cut:]


# ----------------------------------------------------------------------------- models


def _normal(shape: tuple[int, ...], fan_in: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=g) / math.sqrt(fan_in)


def init_params(p: ProblemParams, seed: int, extra: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Trusted: the initial parameters of one (configuration, seed)."""
    g = generator("init", p.kind, seed)
    n_cls, vocab = 10, len(TEXT_VOCAB)
    if p.kind == "logreg":
        return {"w": _normal((64, n_cls), 64, g) * 0.1, "b": torch.zeros(n_cls)}
    if p.kind in ("mlp", "autoencoder"):
        sizes = [64] + [p.hidden] * p.depth + [64 if p.kind == "autoencoder" else n_cls]
        out: dict[str, torch.Tensor] = {}
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            out[f"w{i}"] = _normal((a, b), a, g)
            out[f"b{i}"] = torch.zeros(b)
        return out
    if p.kind == "cnn":
        c = p.channels
        return {
            "conv1": _normal((c, 1, 3, 3), 9, g),
            "bconv1": torch.zeros(c),
            "conv2": _normal((c, c, 3, 3), 9 * c, g),
            "bconv2": torch.zeros(c),
            "w": _normal((c * 4, n_cls), c * 4, g),
            "b": torch.zeros(n_cls),
        }
    if p.kind == "charlm":
        return {
            "embed": torch.randn(vocab, p.embed, generator=g),
            "w1": _normal((p.context * p.embed, p.hidden), p.context * p.embed, g),
            "b1": torch.zeros(p.hidden),
            "w2": _normal((p.hidden, vocab), p.hidden, g) * 0.5,
            "b2": torch.zeros(vocab),
        }
    if p.kind == "nqm":
        return {"x": extra["optimum"] + torch.randn(p.dim, generator=g)}
    if p.kind == "rosenbrock":
        z0 = torch.tensor([-1.2, 1.0]).repeat((p.dim + 1) // 2)[: p.dim] + 0.1 * torch.randn(p.dim, generator=g)
        return {"x": z0 + extra["optimum"] - 1.0}
    raise ValueError(f"unknown problem kind {p.kind!r}")


def forward(p: ProblemParams, w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Outputs of the network ``w`` on inputs ``x`` (logits, or reconstructions)."""
    if p.kind == "logreg":
        return x @ w["w"] + w["b"]
    if p.kind in ("mlp", "autoencoder"):
        h = x
        for i in range(p.depth + 1):
            h = h @ w[f"w{i}"] + w[f"b{i}"]
            if i < p.depth:
                h = torch.relu(h) if p.kind == "mlp" else torch.tanh(h)
        return h
    if p.kind == "cnn":
        return _conv_features(w, x) @ w["w"] + w["b"]
    if p.kind == "charlm":
        e = w["embed"][x].flatten(1)
        return torch.tanh(e @ w["w1"] + w["b1"]) @ w["w2"] + w["b2"]
    raise ValueError(f"problem kind {p.kind!r} has no network")


def _conv_features(w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The convolutional network's features [B, 4 channels] of images ``x`` [B, 64]."""
    h = F.max_pool2d(torch.relu(F.conv2d(x.view(-1, 1, 8, 8), w["conv1"], w["bconv1"], padding=1)), 2)
    h = F.max_pool2d(torch.relu(F.conv2d(h, w["conv2"], w["bconv2"], padding=1)), 2)
    return h.flatten(1)


def forward_batch(p: ProblemParams, w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """:func:`forward` of S networks at once: weights stacked [S, ...], each network on its own inputs
    ``x`` [S, B, ...]; outputs [S, B, ...]. Batched matrix products; the convolutions run one training
    at a time (a grouped convolution rounds differently with the number of groups), so that a
    training's outputs do not depend on how many trainings share the batch."""
    if p.kind == "cnn":
        conv = ("conv1", "bconv1", "conv2", "bconv2")
        features = torch.stack([_conv_features({k: w[k][s] for k in conv}, x[s]) for s in range(x.shape[0])])
        return features @ w["w"] + w["b"].unsqueeze(1)
    if p.kind == "charlm":
        rows = torch.arange(x.shape[0], device=x.device).view(-1, 1, 1)
        e = w["embed"][rows, x].flatten(2)
        return torch.tanh(e @ w["w1"] + w["b1"].unsqueeze(1)) @ w["w2"] + w["b2"].unsqueeze(1)
    if p.kind in ("logreg", "mlp", "autoencoder"):  # every bias [S, n] broadcast over the batch
        return forward(p, {k: v.unsqueeze(1) if v.dim() == 2 else v for k, v in w.items()}, x)
    raise ValueError(f"problem kind {p.kind!r} has no network")


def synthetic_loss(p: ProblemParams, x: torch.Tensor, problem: dict[str, torch.Tensor]) -> torch.Tensor:
    """The deterministic objective of a synthetic problem (>= 0, 0 at the optimum); for points ``x``
    stacked [S, dim] (and their problems), one objective per point [S]."""
    if p.kind == "nqm":
        return 0.5 * (problem["curvature"] * (x - problem["optimum"]) ** 2).sum(-1)
    z = x - problem["optimum"] + 1.0
    return (100.0 * (z[..., 1:] - z[..., :-1] ** 2) ** 2 + (1.0 - z[..., :-1]) ** 2).sum(-1) / (p.dim - 1)


def nqm_curvature(p: ProblemParams) -> torch.Tensor:
    """Curvatures log-spaced from 1 down to 1/cond (condition number ``cond``)."""
    return torch.logspace(0.0, -math.log10(p.cond), p.dim)


# ----------------------------------------------------------------------------- trusted inputs


def build_inputs(p: ProblemParams, seed: int) -> dict[str, Any]:
    """Trusted: the public training inputs of one (configuration, seed): initial weights, the
    training data or the synthetic problem, and the seed of the minibatch order."""
    inputs: dict[str, Any] = {"order_seed": torch.tensor(seed * 7919 + 17)}
    if p.kind in ("logreg", "mlp", "cnn", "autoencoder"):
        x_train, y_train, _, _ = digits_split(seed)
        inputs["x"], inputs["y"] = x_train, y_train
        extra: dict[str, torch.Tensor] = {}
    elif p.kind == "charlm":
        inputs["text"] = text_split(seed)[0]
        extra = {}
    elif p.synthetic:
        g = generator("problem", p.kind, p.dim, seed)
        extra = {"optimum": torch.randn(p.dim, generator=g) * (1.0 if p.kind == "nqm" else 0.5)}
        if p.kind == "nqm":
            extra["curvature"] = nqm_curvature(p)
        inputs["problem"] = extra
    else:
        raise ValueError(f"unknown problem kind {p.kind!r}")
    inputs["init"] = init_params(p, seed, extra)
    return inputs


# ----------------------------------------------------------------------------- training (sandboxed)

#: version of the trainer's arithmetic (part of the reference cache's key: a change re-trains SGD and AdamW)
TRAINER_VERSION = "batched-2"


class _Batches:
    """Minibatches of S trainings of one problem on ``device``, stacked along a first dimension: each
    training's own data, drawn from a generator seeded by its inputs. The draws happen on the CPU
    (CUDA generators have other streams) and are then moved, so that every device sees the same batches."""

    def __init__(self, p: ProblemParams, batch: list[dict[str, Any]], device: str = "cpu"):
        self.p = p
        gens = [torch.Generator().manual_seed(int(inputs["order_seed"])) for inputs in batch]

        def stacked(key: str) -> torch.Tensor:
            return torch.stack([inputs[key] for inputs in batch]).to(device)

        def draws(high: int) -> torch.Tensor:
            """Each training's minibatch rows [S, steps, batch], offset into the S trainings' rows laid end to end."""
            index = torch.stack([torch.randint(0, high, (p.steps, p.batch), generator=g) for g in gens])
            return (index + high * torch.arange(len(batch)).view(-1, 1, 1)).to(device)

        if p.kind == "charlm":
            windows = stacked("text").long().unfold(1, p.context + 1, 1)
            self.index = draws(windows.shape[1])
            self.windows = windows.flatten(0, 1)
        elif not p.synthetic:
            x, y = stacked("x"), stacked("y")
            self.index = draws(x.shape[1])
            self.x, self.y = x.flatten(0, 1), y.flatten(0, 1)
        else:
            self.problem = {k: torch.stack([i["problem"][k] for i in batch]).to(device) for k in batch[0]["problem"]}
            self.noise = (
                torch.stack([torch.randn(p.steps, p.dim, generator=g) for g in gens]).to(device)
                if p.noise > 0
                else None
            )

    def data(self, step: int) -> dict[str, torch.Tensor]:
        """What each training's loss at ``step`` (from 1) reads, stacked [S, ...]."""
        p = self.p
        if p.synthetic:
            noise = {} if self.noise is None else {"noise": self.noise[:, step - 1]}
            return {**self.problem, **noise}
        idx = self.index[:, step - 1]
        if p.kind == "charlm":
            return {"window": self.windows[idx]}
        return {"x": self.x[idx], "y": self.y[idx]}


def _losses(p: ProblemParams, w: dict[str, torch.Tensor], data: dict[str, torch.Tensor]) -> Any:
    """Each training's (loss whose gradient the rule sees, loss value recorded), both [S]."""
    if p.synthetic:
        value = synthetic_loss(p, w["x"], data)
        if "noise" not in data:
            return value, value
        # noisy quadratic model: gradient noise with variance proportional to the curvature
        scale = p.noise * torch.sqrt(data["curvature"])
        return value + (scale * data["noise"] * w["x"]).sum(-1), value
    if p.kind == "charlm":
        window = data["window"]
        logits, target = forward_batch(p, w, window[..., :-1]), window[..., -1]
    elif p.kind == "autoencoder":
        xb = data["x"]
        loss = ((forward_batch(p, w, xb) - xb) ** 2).sum(2).mean(1)
        return loss, loss
    else:
        logits, target = forward_batch(p, w, data["x"]), data["y"]
    loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view(target.shape).mean(1)
    return loss, loss


def _check_update(new: Any, old: torch.Tensor, name: str, step: int) -> None:
    if not isinstance(new, torch.Tensor):
        raise TrainingFailed(
            f"step {step}: update returned {type(new).__name__} for parameter {name!r}, "
            f"expected a tensor of shape {tuple(old.shape)}"
        )
    if new.shape != old.shape:
        raise TrainingFailed(
            f"step {step}: update returned shape {tuple(new.shape)} for parameter {name!r} of shape {tuple(old.shape)}"
        )
    if new.dtype != old.dtype:
        raise TrainingFailed(
            f"step {step}: update returned dtype {new.dtype} for parameter {name!r}, expected {old.dtype}"
        )
    if new.device != old.device:
        raise TrainingFailed(
            f"step {step}: update returned a tensor on {new.device} for parameter {name!r} "
            f"on {old.device}; create new tensors like param (torch.zeros_like, device=)"
        )


def _checked(new: Any, old: torch.Tensor, name: str, step: int, live: list[bool]) -> torch.Tensor:
    """The S trainings' new values [S, ...] of one parameter, each checked as a training alone checks its
    own (a training that stopped is not: its value is not used); the first that broke raises, with its
    ``index``. ``new``: stacked values, or the list of the S values when they did not stack."""
    if isinstance(new, torch.Tensor) and new.shape == old.shape and new.dtype == old.dtype and new.device == old.device:
        return new
    size, first = old.shape[0], live.index(True)
    if isinstance(new, torch.Tensor):
        if new.dim() == 0 or new.shape[0] != size:
            raise TrainingFailed(
                f"step {step}: the update of parameter {name!r} came back as shape {tuple(new.shape)} for "
                f"{size} trainings",
                index=first,
            )
        _check_one(new[first], old[first], name, step, first)  # stacked: one shape, dtype and device for all
        return new
    if not (isinstance(new, list) and len(new) == size):
        _check_one(new, old[first], name, step, first)  # raises: not one value per training
    for s, value in enumerate(new):
        if live[s]:
            _check_one(value, old[s], name, step, s)
    return torch.stack([value if live[s] else old[s] for s, value in enumerate(new)])


def _check_one(new: Any, old: torch.Tensor, name: str, step: int, index: int) -> None:
    try:
        _check_update(new, old, name, step)
    except TrainingFailed as exc:
        raise TrainingFailed(str(exc), index=index) from None


def train_runs(
    rule: Any, p: ProblemParams, batch: list[dict[str, Any]], lr: float, torch_seeds: list[int], device: str = "cpu"
) -> list[dict[str, Any]]:
    """S runs at learning rate ``lr`` on ``device`` as one vectorised training: the S trainings'
    parameters stacked [S, ...], their losses and gradients computed by batched operations
    (:func:`forward_batch`; each training's gradient is that of its own loss), and one call
    of the batched update rule ``rule`` (``reset(seeds)``, ``step(params, grads, lr, step)`` on stacked
    tensors) per step for all of them. Each training starts fresh, its rule's random numbers seeded by
    its ``torch_seeds`` entry, and stops on its own when it diverges (its weights stay as they were; the
    rule then sees its frozen weights and a zero gradient). Per training: final weights (on the CPU),
    loss curve, step it diverged at (0: never). A training's results do not depend on S."""
    size = len(batch)
    rule.reset(list(torch_seeds))
    torch.manual_seed(torch_seeds[0])
    w = {
        k: torch.stack([inputs["init"][k] for inputs in batch]).to(device).requires_grad_(True)
        for k in batch[0]["init"]
    }
    names = list(w)
    tensors = [w[k] for k in names]
    batches = _Batches(p, batch, device)
    every = max(1, p.steps // CURVE_POINTS)
    curves: list[list[float]] = [[] for _ in range(size)]
    first: list[float | None] = [None] * size
    diverged = [0] * size
    ones = torch.ones(size, device=device)
    for step in range(1, p.steps + 1):
        loss, value = _losses(p, w, batches.data(step))
        for s, v in enumerate(value.detach().tolist()):
            if diverged[s]:
                continue
            if first[s] is None:
                first[s] = abs(v)
            if not math.isfinite(v) or abs(v) > DIVERGE_FACTOR * max(first[s] or 0.0, 1e-12):
                diverged[s] = step
                curves[s].append(float("nan"))
            elif (step - 1) % every == 0:
                curves[s].append(v)
        if all(diverged):
            break
        grads = list(torch.autograd.grad(loss, tensors, ones))  # each training's gradient of its own loss
        live = None if not any(diverged) else torch.tensor([d == 0 for d in diverged], device=device)
        if live is not None:  # a training that stopped sees its frozen weights and a zero gradient
            grads = [torch.where(_along(live, g), g, torch.zeros_like(g)) for g in grads]
        # one call for every parameter of every training (a stopped training's weights as a copy: the rule
        # may change ``param`` in place; the others' are overwritten by its values anyway)
        news = rule.step([t.detach() if live is None else t.detach().clone() for t in tensors], grads, lr, step)
        if not isinstance(news, list) or len(news) != len(names):
            raise TrainingFailed(
                f"step {step}: the update rule returned {type(news).__name__}, not {len(names)} values"
            )
        with torch.no_grad():
            for name, tensor, new in zip(names, tensors, news, strict=True):
                checked = _checked(new, tensor, name, step, [d == 0 for d in diverged])
                tensor.copy_(checked if live is None else torch.where(_along(live, checked), checked, tensor))
    n_points = (p.steps - 1) // every + 1
    runs = []
    for s in range(size):
        curve = curves[s] + [float("nan")] * (n_points - len(curves[s]))
        runs.append(
            {
                "final": {k: v[s].detach().to("cpu", copy=True) for k, v in w.items()},
                "curve": torch.tensor(curve[:n_points]),
                "diverged_at": diverged[s],
            }
        )
    return runs


def _along(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The [S] ``mask`` shaped to broadcast over a stacked tensor [S, ...]."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


def train_grids(rule: Any, p: ProblemParams, batch: list[dict[str, Any]], device: str = "cpu") -> list[dict[str, Any]]:
    """The learning-rate grid of S (configuration, seed) trainings of equal problems at once: per
    learning rate, one :func:`train_runs` of all S, each training's rule fresh (``reset``) and seeded
    with its ``order_seed`` plus the learning rate's index. ``rule`` is batched over S (``reset`` takes
    S seeds; :mod:`discovery.slots`, :class:`discovery.tasks.base.LocalBatchedUpdateRule`). Raw outputs
    only, on the CPU, one dict per training."""
    runs = [
        train_runs(rule, p, batch, lr, [int(inputs["order_seed"]) + i for inputs in batch], device)
        for i, lr in enumerate(p.lrs)
    ]
    return [
        {
            "final": [r[s]["final"] for r in runs],
            "curve_loss": torch.stack([r[s]["curve"] for r in runs]),
            "diverged_at": torch.tensor([r[s]["diverged_at"] for r in runs]),
        }
        for s in range(len(batch))
    ]


def train_grid(rule: Any, p: ProblemParams, inputs: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """Run ``rule`` (an update rule of one training, or a plain function) on ``device`` once per
    learning rate of the grid: :func:`train_grids` with a batch of one, so a training scores the same
    alone as in a batch. Each learning rate gets a fresh copy of the rule (``reset``): nothing it
    remembers crosses runs."""
    return train_grids(one_training(rule), p, [inputs], device)[0]


# ----------------------------------------------------------------------------- scoring (trusted)


class ScoringContext:
    """Trusted, per (configuration, seed): test data and the metric of the initial weights."""

    def __init__(self, p: ProblemParams, seed: int, inputs: dict[str, Any]):
        self.p = p
        problem = inputs.get("problem")  # scoring runs on the CPU, wherever the inputs were made
        self.problem = {k: v.cpu() for k, v in problem.items()} if problem is not None else None
        if p.kind in ("logreg", "mlp", "cnn", "autoencoder"):
            _, _, self.x_test, self.y_test = digits_split(seed)
        elif p.kind == "charlm":
            val = corpus()[int(len(corpus()) * (1 - TEXT_VAL_FRACTION)) :].long()
            windows = val.unfold(0, p.context + 1, 1)
            pick = torch.randint(0, windows.shape[0], (TEXT_VAL_WINDOWS,), generator=generator("text-val"))
            self.x_test, self.y_test = windows[pick, :-1], windows[pick, -1]
        self.init_metric = self.metric(inputs["init"])["metric"]

    @torch.no_grad()
    def metric(self, weights: dict[str, torch.Tensor]) -> dict[str, float]:
        """``metric`` (lower is better; inf for unusable weights) and, for classifiers, ``accuracy``."""
        p = self.p
        expected = self._shapes()
        if set(weights) != set(expected) or any(tuple(weights[k].shape) != s for k, s in expected.items()):
            raise ValueError("returned weights do not match the problem's parameters")
        w = {k: v.float().cpu() for k, v in weights.items()}
        if not all(torch.isfinite(v).all() for v in w.values()):
            return {"metric": math.inf}
        if p.synthetic:
            assert self.problem is not None, "a synthetic problem's inputs always hold it"
            value = float(synthetic_loss(p, w["x"], self.problem))
            return {"metric": math.log10(value + 1e-12) if math.isfinite(value) else math.inf}
        out = forward(p, w, self.x_test)
        if p.kind == "autoencoder":
            return {"metric": float(((out - self.x_test) ** 2).sum(1).mean())}
        ce = float(F.cross_entropy(out, self.y_test))
        acc = float((out.argmax(1) == self.y_test).float().mean())
        return {"metric": ce if math.isfinite(ce) else math.inf, "accuracy": acc}

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        if not hasattr(self, "_shape_cache"):
            self._shape_cache = {k: tuple(v.shape) for k, v in init_params(self.p, 0, self._extra()).items()}
        return self._shape_cache

    def _extra(self) -> dict[str, torch.Tensor]:
        return {"optimum": torch.zeros(self.p.dim)}

    def grid(self, finals: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """Per learning rate: the metric clipped at the initial weights' (a run that ends worse than
        it started, diverges or returns NaN counts as standing still), and the grid mean."""
        per_lr, raw, acc = [], [], []
        for weights in finals:
            m = self.metric(weights)
            raw.append(m["metric"])
            per_lr.append(min(m["metric"], self.init_metric))
            if "accuracy" in m:
                acc.append(m["accuracy"])
        return {"per_lr": per_lr, "raw": raw, "accuracy": acc, "mean": sum(per_lr) / len(per_lr)}


_contexts: dict[tuple[ProblemParams, int], ScoringContext] = {}


def scoring_context(p: ProblemParams, seed: int, inputs: dict[str, Any]) -> ScoringContext:
    """The cached :class:`ScoringContext` of one (configuration, seed)."""
    key = (p, seed)
    if key not in _contexts:
        if len(_contexts) > 256:
            _contexts.clear()
        _contexts[key] = ScoringContext(p, seed, inputs)
    return _contexts[key]


_references: dict[str, dict[str, float]] = {}


def reference_means(
    p: ProblemParams, seed: int, inputs: dict[str, Any], rules: dict[str, Any], rule_sources: str
) -> dict[str, float]:
    """Trusted: the grid mean of each trusted reference rule (plain SGD, AdamW) on this
    (configuration, seed), computed once (memory, then a disk cache keyed by the problem, the
    seed and the rules' source) by running the rules in this process."""
    key = hashlib.sha256(repr((ENV_VERSION, TRAINER_VERSION, p, seed, rule_sources)).encode()).hexdigest()[:24]
    if key in _references:
        return _references[key]
    cache = cache_dir()
    path = cache / f"optref-{key}.json" if cache else None
    if path is not None and path.exists():
        try:
            _references[key] = {k: float(v) for k, v in json.loads(path.read_text()).items()}
            return _references[key]
        except (OSError, ValueError, AttributeError):
            path.unlink(missing_ok=True)
    ctx = scoring_context(p, seed, inputs)
    # one intra-op thread, as a sandboxed training has: a conv's or matmul's last bits depend on the
    # thread count, and a chaotic training (the char LM) turns them into a different reference
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {name: ctx.grid(train_grid(rule, p, inputs)["final"])["mean"] for name, rule in rules.items()}
    finally:
        torch.set_num_threads(threads)
    _references[key] = out
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(out))
            os.replace(tmp, path)
        except OSError:
            pass
    return out


def normalized(mean: float, floor: float, ceiling: float, init: float) -> float:
    """(floor - mean) / (floor - ceiling): 0 at plain SGD's grid mean, 1 at AdamW's, clipped to
    [-1, 3]; the denominator is at least 5% of AdamW's improvement over the initial weights."""
    span = max(floor - ceiling, 0.05 * max(init - ceiling, 1e-9))
    return max(-1.0, min(3.0, (floor - mean) / span))
