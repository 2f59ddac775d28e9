"""The task abstraction every discovery task plugs into.

A task names the *slot* an LLM fills (one function with a pinned signature), the seed
program and baseline library, a cheap contract check, and two fixed suites. Evaluation is
split in two so that candidate code never touches the score:

* ``train`` runs on the trusted side. The candidate's function runs in a jail
  (``sandbox.jail.function_server``) and ``train`` gets a proxy of it (``discovery.slots``): a
  callable for a differentiable slot, an object with ``reset``/``step`` for an update rule. The
  jail receives only the slot's arguments; the model, data, configuration and seed stay here.
* ``score`` runs on the trusted side too. It rebuilds the hidden parts of the environment
  (gold reward, evaluation prompts) from the seed and turns the raw tensors into metrics and
  a fitness.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


class ContractError(Exception):
    """The candidate does not honour the slot's contract (shape, dtype, NaN, gradient)."""


class TrainingFailed(Exception):
    """The candidate broke training (NaN, wrong shape or dtype, no gradient): status invalid.

    In a batched training, ``index`` is the position of the training that broke in the batch."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


#: one training of a batch: its configuration, seed and trusted inputs
BatchItem = tuple["SuiteConfig", int, dict[str, Any]]


@dataclass(frozen=True)
class Slot:
    """The function a proposer must write, as the proposer will see it."""

    name: str
    signature: str
    contract: str
    allowed_imports: tuple[str, ...] = ("torch", "torch.nn.functional", "math")
    #: how the trainer calls it: ``differentiable`` (a function whose gradient flows back to the
    #: trainer's graph, e.g. a loss) or ``update_rule`` (``update(param, grad, state, lr, step)``)
    kind: str = "differentiable"


@dataclass(frozen=True)
class SuiteConfig:
    """One named configuration of a suite; ``params`` are task-specific settings."""

    name: str
    params: Mapping[str, Any]
    weight: float = 1.0
    #: a secret mixed into this configuration's environment seed (the held-out suite's, per archive):
    #: without it, its data, gold reward and prompts cannot be rebuilt from the public code and seeds
    salt: str = ""


def suite_config(name: str, **params: Any) -> SuiteConfig:
    """A configuration from keyword parameters: ``suite_config("noise40", label_noise=0.4)``."""
    return SuiteConfig(name, dict(params))


def env_seed(config: SuiteConfig, seed: int, namespace: str = "") -> int:
    """A 32-bit seed of its own for each (configuration, seed): its own data, initialisation and
    environment, the same in every process (and, for a salted configuration, only where its
    salt is known)."""
    salt = f"{config.salt}#" if config.salt else ""
    digest = hashlib.sha256(f"{namespace}{salt}{config.name}/{seed}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def cache_dir() -> Path | None:
    """Where trusted, derived artefacts (reference policies, reference scores) are cached:
    ``$DISCOVERY_CACHE`` (``off`` disables the cache), else ``~/.cache/discovery``."""
    root = os.environ.get("DISCOVERY_CACHE")
    if root == "off":
        return None
    return Path(root) if root else Path.home() / ".cache" / "discovery"


def check_per_example(out: Any, batch: int, dtype: Any, where: str, wrt: str) -> None:
    """Raise TrainingFailed unless ``out`` is a finite tensor of shape [batch] and ``dtype`` that has a
    graph (a per-example loss); ``wrt`` names what the gradient should flow to."""
    import torch

    if not isinstance(out, torch.Tensor):
        raise TrainingFailed(f"{where}: loss returned {type(out).__name__}, expected a tensor of shape [{batch}]")
    if out.shape != (batch,):
        raise TrainingFailed(f"{where}: loss returned shape {tuple(out.shape)}, expected per-example [{batch}]")
    if out.dtype != dtype:
        raise TrainingFailed(f"{where}: loss returned dtype {out.dtype}, expected {dtype}")
    if not torch.isfinite(out).all():
        raise TrainingFailed(f"{where}: loss is NaN or infinite")
    if not out.requires_grad:
        raise TrainingFailed(f"{where}: loss has no gradient with respect to {wrt}")


def check_each(out: Any, batch: int, dtype: Any, where: str, wrt: str, trainings: int) -> None:
    """:func:`check_per_example` for every training of a batched call (``out`` [S, batch], or the list
    of S outputs that did not stack); the first that fails raises with its ``index``."""
    for s in range(trainings):
        try:
            check_per_example(out[s], batch, dtype, where, wrt)
        except TrainingFailed as exc:
            raise TrainingFailed(str(exc), index=s) from None
        except (IndexError, TypeError):
            raise TrainingFailed(
                f"{where}: loss returned {type(out).__name__}, expected per-example losses", s
            ) from None


def batch_norms(grads: list[Any]) -> Any:
    """Each training's total gradient norm [S] over stacked gradients [S, ...] (None: no gradient)."""
    import torch

    norms = [torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads if g is not None]
    return torch.linalg.vector_norm(torch.stack(norms), dim=0)


def descend_batch(loss: Any, opt: Any, parameters: Iterable[Any], step: int, max_norm: float | None = None) -> Any:
    """:func:`descend` for S stacked trainings: ``loss`` [S] (each training's own loss), parameters
    stacked [S, ...]; each training's gradient clipped by its own norm. Returns the norms [S]; raises
    ``TrainingFailed`` (with the training's ``index``) when one is not finite."""
    import torch

    params = list(parameters)
    opt.zero_grad()
    loss.sum().backward()
    grads = [q.grad for q in params]
    norm = batch_norms(grads)
    bad = (~torch.isfinite(norm)).nonzero()
    if bad.numel():
        raise TrainingFailed(f"gradient is not finite at step {step}", index=int(bad[0, 0]))
    if max_norm is not None:  # as torch.nn.utils.clip_grad_norm_, per training
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for g in grads:
            if g is not None:
                g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))
    opt.step()
    return norm


def split_trainings(
    weights_name: str, weights: Mapping[str, Any], curves: Mapping[str, list[Any]]
) -> list[dict[str, Any]]:
    """The raw outputs of each training of a vectorised one: its slice of the stacked ``weights`` (under
    ``weights_name``) and of every curve (``curve_<name>`` -> the per-step values [S] recorded), on the CPU."""
    import torch

    stacked = {name: torch.stack(values, dim=1) for name, values in curves.items()}
    size = next(iter(weights.values())).shape[0]
    return [
        {
            weights_name: {k: v[s].detach().to("cpu", copy=True) for k, v in weights.items()},
            **{name: curve[s].clone() for name, curve in stacked.items()},
        }
        for s in range(size)
    ]


def check_loss_contract(
    fn: Callable[..., Any], args: tuple[Any, ...], batch: int, wrt: str, watched: Mapping[str, Any], context: str = ""
) -> None:
    """Call a per-example loss once on contract inputs and back-propagate its mean.

    Raises ``ContractError`` unless it returns a finite float32 tensor of shape [batch] with a
    graph, whose gradient reaches at least one tensor of ``watched`` (name -> leaf tensor) and
    is finite wherever it does; ``wrt`` names the inputs the gradient should flow to, and
    ``context`` (e.g. " (C = 5)") ends the message about a non-finite gradient.
    """
    import torch

    try:
        out = fn(*args)
        check_per_example(out, batch, torch.float32, "contract", wrt)
        out.mean().backward()
    except TrainingFailed as exc:
        raise ContractError(str(exc).removeprefix("contract: ")) from None
    for name, tensor in watched.items():
        if tensor.grad is not None and not torch.isfinite(tensor.grad).all():
            raise ContractError(f"gradient with respect to {name} is NaN or infinite{context}")
    if all(tensor.grad is None for tensor in watched.values()):
        raise ContractError(f"loss does not depend on {wrt} (no gradient)")


def descend(loss: Any, opt: Any, parameters: Iterable[Any], step: int, max_norm: float | None = None) -> Any:
    """One optimizer step on ``loss``; returns the gradient's total norm (before clipping).

    Zeroes the gradients, back-propagates, clips them to ``max_norm`` when given, and raises
    ``TrainingFailed`` instead of stepping when the gradient is not finite.
    """
    import torch

    params = list(parameters)
    opt.zero_grad()
    loss.backward()
    if max_norm is None:
        norm = torch.nn.utils.get_total_norm([q.grad for q in params if q.grad is not None])
    else:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if not torch.isfinite(norm):
        raise TrainingFailed(f"gradient is not finite at step {step}")
    opt.step()
    return norm


def curves_from(outputs: Mapping[str, Any], names: Iterable[str]) -> dict[str, list[float]]:
    """The training curves ``curve_<name>`` of a sandbox's raw outputs, as plain lists keyed by name."""
    return {name: [float(v) for v in outputs[f"curve_{name}"]] for name in names if f"curve_{name}" in outputs}


@dataclass(frozen=True)
class Suite:
    """A fixed list of configurations, each evaluated with every seed in ``seeds``."""

    name: str
    configs: tuple[SuiteConfig, ...]
    seeds: tuple[int, ...]

    def config(self, name: str) -> SuiteConfig:
        """Return the configuration called ``name``."""
        for cfg in self.configs:
            if cfg.name == name:
                return cfg
        raise KeyError(f"suite {self.name!r} has no configuration {name!r}")

    def salted(self, secret: str) -> Suite:
        """This suite with ``secret`` mixed into every configuration's environment seed ("" : as is)."""
        if not secret:
            return self
        return Suite(self.name, tuple(replace(c, salt=secret) for c in self.configs), self.seeds)

    def with_seeds(self, n: int | None) -> Suite:
        """This suite with its first ``n`` seeds, or more seeds continuing its sequence."""
        if n is None or n == len(self.seeds):
            return self
        if n <= len(self.seeds):
            return Suite(self.name, self.configs, self.seeds[:n])
        extra = tuple(self.seeds[-1] + 1 + i for i in range(n - len(self.seeds)))
        return Suite(self.name, self.configs, self.seeds + extra)


@dataclass
class SeedMetrics:
    """Metrics of one (configuration, seed) evaluation, computed on the trusted side."""

    config: str
    seed: int
    fitness: float
    metrics: dict[str, float] = field(default_factory=dict)
    curve: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    #: how it trained: ``sequential``, or ``batched-vmap xS`` / ``batched-loop xS (why vmap failed)``
    path: str = ""


class Task(ABC):
    """A discovery task. Subclasses are stateless apart from caches of trusted inputs."""

    name: str
    description: str
    slot: Slot
    fitness_doc: str = ""
    #: the baseline the feedback compares against ("worse than DPO on 3/5 configs")
    reference_baseline: str = ""
    #: default wall-clock limit of one (configuration, seed) training in the sandbox, in seconds;
    #: generous for the CPU of a busy machine (``--training-seconds`` changes it per run)
    training_seconds: float = 60.0
    #: tensor elements one training's raw outputs may hold (the built-in tasks return a few
    #: thousand to tens of thousands); more is refused before scoring
    max_output_elements: int = 20_000_000

    @property
    @abstractmethod
    def seed_program(self) -> str:
        """Source of the starting candidate (usually the reference baseline)."""

    @property
    @abstractmethod
    def baselines(self) -> dict[str, str]:
        """Baseline library: name -> complete candidate source defining the slot."""

    @abstractmethod
    def suites(self) -> dict[str, Suite]:
        """The fixed suites, at least ``discover`` and ``heldout``."""

    @abstractmethod
    def contract_check(self, fn: Callable[..., Any]) -> None:
        """Cheap check of the candidate function; raise ContractError with a reason."""

    @abstractmethod
    def prepare(self, config: SuiteConfig, seed: int, device: str = "cpu") -> dict[str, Any]:
        """Trusted: the public training inputs for one (config, seed) (tensors only)."""

    @abstractmethod
    def train(
        self, fn: Callable[..., Any], config: SuiteConfig, seed: int, inputs: dict[str, Any], device: str
    ) -> dict[str, Any]:
        """Trusted: train with ``fn``, the proxy of the jailed candidate (or a trusted function in
        process); return raw tensors (no scores)."""

    @abstractmethod
    def score(
        self, config: SuiteConfig, seed: int, inputs: dict[str, Any], outputs: dict[str, Any], device: str
    ) -> SeedMetrics:
        """Trusted: turn the raw outputs of ``train`` into metrics and a fitness."""

    def batch_key(self, config: SuiteConfig) -> Any:
        """Configurations with equal keys (not None) train their seeds together as one vectorised
        training (:meth:`train_batch`): what the trainer and the candidate's function see must agree
        in shapes and in every plain argument. None (the default): one training per (config, seed)."""
        return None

    def train_batch(self, fn: Any, items: list[BatchItem], device: str) -> list[dict[str, Any]]:
        """Trusted: the trainings of ``items`` (equal :meth:`batch_key`) as one; ``fn`` is the batched
        proxy of the candidate (:mod:`discovery.slots`: tensors with a leading dimension of
        ``len(items)``). Returns what :meth:`train` returns, per item; must agree with it to 1e-5 in
        fitness. Raises TrainingFailed with the ``index`` of the training that broke."""
        raise NotImplementedError(f"task {self.name!r} does not batch its trainings")

    @property
    def cascade_configs(self) -> tuple[str, ...]:
        """Discover configurations of the cheap first stage of the evaluation cascade: by default
        the first two; a task overrides this with its most telling pair."""
        return tuple(c.name for c in self.suite("discover").configs[:2])

    def export_adapter(self) -> str:
        """Python source appended to an exported module, after its functions and its ``REGISTRY``
        dict (export name -> function): adapters that make each exported function usable where
        the field expects it (a ``trl.DPOTrainer`` subclass, a ``torch.optim.Optimizer``). Needs only
        torch; empty by default."""
        return ""

    def suite(self, name: str) -> Suite:
        """Return the suite called ``name``."""
        suites = self.suites()
        if name not in suites:
            raise KeyError(f"task {self.name!r} has no suite {name!r} (have: {', '.join(suites)})")
        return suites[name]

    def describe_slot(self) -> str:
        """The slot as shown to a proposer."""
        return f"{self.slot.signature}\n\n{self.slot.contract}"


class LibraryTask(Task):
    """A task whose baselines and controls are plain functions in a library module (its
    ``BASELINES`` and ``CONTROLS`` dicts), turned into candidate programs under ``imports``, whose
    suites are the class attributes ``discover`` and ``heldout``, and whose seed program is the
    reference baseline."""

    library: Any
    imports: str
    discover: Suite
    heldout: Suite

    @property
    def seed_program(self) -> str:
        return self.baselines[self.reference_baseline]

    @property
    def baselines(self) -> dict[str, str]:
        return {name: source_of(fn, self.slot.name, self.imports) for name, fn in self.library.BASELINES.items()}

    @property
    def controls(self) -> dict[str, str]:
        """Programs that must score badly (e.g. an always-zero loss): sanity checks of the suites."""
        return {name: source_of(fn, self.slot.name, self.imports) for name, fn in self.library.CONTROLS.items()}

    def suites(self) -> dict[str, Suite]:
        return {"discover": self.discover, "heldout": self.heldout}


class LocalUpdateRule:
    """An update rule ``update(param, grad, state, lr, step)`` run in this process (the trusted
    reference rules, tests); the same interface as the jailed proxy (``discovery.slots``)."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self.states: dict[int, dict[str, Any]] = {}

    def reset(self, seed: int) -> None:
        """Forget every state; seed torch's random numbers."""
        import torch

        torch.manual_seed(seed)
        self.states = {}

    def step(self, params: list[Any], grads: list[Any], lr: float, step: int) -> list[Any]:
        """The rule's new value of every parameter of one step."""
        import torch

        with torch.no_grad():
            return [
                self.fn(p, g, self.states.setdefault(i, {}), lr, step)
                for i, (p, g) in enumerate(zip(params, grads, strict=True))
            ]


class LocalBatchedFunction:
    """A trusted function run in this process for S trainings: the batched proxy's interface
    (:mod:`sandbox.batching`: ``vmap``, else one call per training)."""

    def __init__(self, fn: Callable[..., Any], batch: int):
        from sandbox.batching import BatchedSlot

        self.fn, self.batch = fn, batch
        self.slot = BatchedSlot(lambda: fn, batch)

    @property
    def mode(self) -> str:
        return self.slot.mode

    @property
    def fallback(self) -> str:
        return self.slot.fallback

    def __call__(self, *args: Any) -> Any:
        return self.slot.call(list(args))


class LocalBatchedUpdateRule(LocalBatchedFunction):
    """A trusted update rule run in this process for S trainings (``reset`` takes one seed per training)."""

    def reset(self, seed: int | list[int]) -> None:
        """Fresh states; training ``s``'s random numbers seeded with ``seed[s]``."""
        import torch

        from sandbox.batching import BatchedSlot, seeds_for

        seeds = seeds_for(seed, self.batch)
        torch.manual_seed(seeds[0])
        self.slot = BatchedSlot(lambda: self.fn, self.batch, seeds)

    def step(self, params: list[Any], grads: list[Any], lr: float, step: int) -> list[Any]:
        """The rule's new value of every stacked parameter [S, ...]."""
        return self.slot.update(params, grads, lr, step)


class OneTraining:
    """An unbatched slot function (a jailed proxy of one training, or a trusted function) as a batch of
    one training: it sees slice 0 of every tensor argument, and its values come back with a batch
    dimension of 1 (anything but a tensor as the one training's value, for the trainer's checks)."""

    batch = 1
    mode = ""
    fallback = ""

    def __init__(self, fn: Any):
        self.fn = fn
        self._rule: Any = None

    def __call__(self, *args: Any) -> Any:
        import torch

        out = self.fn(*[a[0] if isinstance(a, torch.Tensor) else a for a in args])
        return out.unsqueeze(0) if isinstance(out, torch.Tensor) else [out]

    @property
    def rule(self) -> Any:
        """``fn`` as an update rule with ``reset`` and ``step`` (:func:`as_update_rule`)."""
        if self._rule is None:
            self._rule = as_update_rule(self.fn)
        return self._rule

    def reset(self, seed: int | list[int]) -> None:
        """The update rule's reset, with the batch's one seed."""
        self.rule.reset(seed[0] if isinstance(seed, list) else seed)

    def step(self, params: list[Any], grads: list[Any], lr: float, step: int) -> list[Any]:
        """The update rule's step on slice 0, each new value given the batch dimension back."""
        import torch

        new = self.rule.step([p[0] for p in params], [g[0] for g in grads], lr, step)
        if not isinstance(new, list):
            return new
        return [v.unsqueeze(0) if isinstance(v, torch.Tensor) else [v] for v in new]


def one_training(fn: Any) -> Any:
    """``fn`` as a batch of one (:class:`OneTraining`), unless it is batched already."""
    return fn if getattr(fn, "batch", 0) else OneTraining(fn)


def local_slot(kind: str, fn: Any, batch: int) -> Any:
    """``fn`` if it is already batched (a jailed proxy with ``batch``), else the batched interface of
    the trusted function ``fn`` of a slot of ``kind``, run in this process."""
    from sandbox.wire import UPDATE_RULE

    if getattr(fn, "batch", 0):
        return fn
    return LocalBatchedUpdateRule(fn, batch) if kind == UPDATE_RULE else LocalBatchedFunction(fn, batch)


def as_update_rule(rule: Any) -> Any:
    """``rule`` if it already has ``step`` and ``reset`` (a jailed proxy), else a LocalUpdateRule of it."""
    return rule if hasattr(rule, "step") and hasattr(rule, "reset") else LocalUpdateRule(rule)


def source_of(fn: Callable[..., Any], slot_name: str, imports: str) -> str:
    """Turn a library function into a standalone candidate program defining ``slot_name``."""
    src = inspect.getsource(fn)
    head, rest = src.split("(", 1)
    assert head.startswith("def "), head
    return f"{imports}\n\n\ndef {slot_name}({rest}"
