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

from discovery.tasks.base import TrainingFailed, as_update_rule, cache_dir

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
        h = F.max_pool2d(torch.relu(F.conv2d(x.view(-1, 1, 8, 8), w["conv1"], w["bconv1"], padding=1)), 2)
        h = F.max_pool2d(torch.relu(F.conv2d(h, w["conv2"], w["bconv2"], padding=1)), 2)
        return h.flatten(1) @ w["w"] + w["b"]
    if p.kind == "charlm":
        e = w["embed"][x].flatten(1)
        return torch.tanh(e @ w["w1"] + w["b1"]) @ w["w2"] + w["b2"]
    raise ValueError(f"problem kind {p.kind!r} has no network")


def synthetic_loss(p: ProblemParams, x: torch.Tensor, problem: dict[str, torch.Tensor]) -> torch.Tensor:
    """The deterministic objective of a synthetic problem (>= 0, 0 at the optimum)."""
    if p.kind == "nqm":
        return 0.5 * (problem["curvature"] * (x - problem["optimum"]) ** 2).sum()
    z = x - problem["optimum"] + 1.0
    return (100.0 * (z[1:] - z[:-1] ** 2) ** 2 + (1.0 - z[:-1]) ** 2).sum() / (p.dim - 1)


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


class _Batches:
    """Minibatches (inputs, targets) of one run on ``device``, drawn from a generator seeded by the
    inputs. The draws happen on the CPU (CUDA generators have other streams) and are then moved,
    so that every device sees the same batches."""

    def __init__(self, p: ProblemParams, inputs: dict[str, Any], device: str = "cpu"):
        self.p = p
        g = torch.Generator().manual_seed(int(inputs["order_seed"]))
        if p.kind == "charlm":
            text = inputs["text"].to(device).long()
            self.windows = text.unfold(0, p.context + 1, 1)
            self.index = torch.randint(0, self.windows.shape[0], (p.steps, p.batch), generator=g).to(device)
        elif not p.synthetic:
            self.x, self.y = inputs["x"].to(device), inputs["y"].to(device)
            self.index = torch.randint(0, self.x.shape[0], (p.steps, p.batch), generator=g).to(device)
        else:
            self.problem = {k: v.to(device) for k, v in inputs["problem"].items()}
            self.noise = torch.randn(p.steps, p.dim, generator=g).to(device) if p.noise > 0 else None

    def loss(self, w: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, float]:
        """(the loss whose gradient the rule sees at ``step`` (from 1), the loss value recorded)."""
        p = self.p
        if p.synthetic:
            problem = self.problem
            value = synthetic_loss(p, w["x"], problem)
            if self.noise is None:
                return value, float(value.detach())
            # noisy quadratic model: gradient noise with variance proportional to the curvature
            scale = p.noise * torch.sqrt(problem["curvature"])
            return value + (scale * self.noise[step - 1] * w["x"]).sum(), float(value.detach())
        idx = self.index[step - 1]
        if p.kind == "charlm":
            window = self.windows[idx]
            loss = F.cross_entropy(forward(p, w, window[:, :-1]), window[:, -1])
        elif p.kind == "autoencoder":
            xb = self.x[idx]
            loss = ((forward(p, w, xb) - xb) ** 2).sum(1).mean()
        else:
            loss = F.cross_entropy(forward(p, w, self.x[idx]), self.y[idx])
        return loss, float(loss.detach())


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


def train_one(
    rule: Any, p: ProblemParams, inputs: dict[str, Any], lr: float, torch_seed: int, device: str = "cpu"
) -> dict[str, Any]:
    """One run of ``rule`` (an update rule with ``reset`` and ``step``, or a plain function) at
    learning rate ``lr`` on ``device``: final weights (on the CPU), loss curve, step it diverged
    at (0: never). The rule starts fresh (no state, no module globals kept) with its random
    numbers seeded by ``torch_seed``, so that a rule that draws them gets the same ones every time."""
    rule = as_update_rule(rule)
    rule.reset(torch_seed)
    torch.manual_seed(torch_seed)
    w = {k: v.detach().to(device, copy=True).requires_grad_(True) for k, v in inputs["init"].items()}
    names = list(w)
    tensors = [w[k] for k in names]
    batches = _Batches(p, inputs, device)
    every = max(1, p.steps // CURVE_POINTS)
    curve: list[float] = []
    first = None
    diverged = 0
    for step in range(1, p.steps + 1):
        loss, value = batches.loss(w, step)
        if first is None:
            first = abs(value)
        if not math.isfinite(value) or abs(value) > DIVERGE_FACTOR * max(first, 1e-12):
            diverged = step
            curve.append(float("nan"))
            break
        if (step - 1) % every == 0:
            curve.append(value)
        grads = torch.autograd.grad(loss, tensors)
        news = rule.step([t.detach() for t in tensors], list(grads), lr, step)  # one call for every parameter
        with torch.no_grad():
            for name, tensor, new in zip(names, tensors, news, strict=True):
                _check_update(new, tensor, name, step)
                tensor.copy_(new)
    n_points = (p.steps - 1) // every + 1
    curve += [float("nan")] * (n_points - len(curve))
    return {
        "final": {k: v.detach().to("cpu", copy=True) for k, v in w.items()},
        "curve": torch.tensor(curve[:n_points]),
        "diverged_at": diverged,
    }


def train_grid(rule: Any, p: ProblemParams, inputs: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """Run ``rule`` on ``device`` once per learning rate of the grid; raw outputs only, on the CPU.
    Each learning rate gets a fresh copy of the rule (``reset``): nothing it remembers crosses runs."""
    rule = as_update_rule(rule)
    runs = [train_one(rule, p, inputs, lr, int(inputs["order_seed"]) + i, device) for i, lr in enumerate(p.lrs)]
    return {
        "final": [r["final"] for r in runs],
        "curve_loss": torch.stack([r["curve"] for r in runs]),
        "diverged_at": torch.tensor([r["diverged_at"] for r in runs]),
    }


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
    key = hashlib.sha256(repr((ENV_VERSION, p, seed, rule_sources)).encode()).hexdigest()[:24]
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
    out = {name: ctx.grid(train_grid(rule, p, inputs)["final"])["mean"] for name, rule in rules.items()}
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
