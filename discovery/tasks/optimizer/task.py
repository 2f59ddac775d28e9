"""The optimizer update-rule task (the Lion paper's slot, on CPU-sized problems)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from discovery.tasks.base import (
    BatchItem,
    ContractError,
    LibraryTask,
    SeedMetrics,
    Slot,
    Suite,
    SuiteConfig,
    as_update_rule,
    env_seed,
    local_slot,
    suite_config,
)
from discovery.tasks.optimizer import baselines as library
from discovery.tasks.optimizer.env import (
    ProblemParams,
    build_inputs,
    normalized,
    reference_means,
    scoring_context,
    train_grid,
    train_grids,
)

SIGNATURE = "def update(param, grad, state, lr, step) -> torch.Tensor"

CONTRACT = """\
An update rule for one parameter tensor, called once per parameter and training step under
torch.no_grad(). `param` is the current value (a float32 tensor of any shape: a weight
matrix, a bias vector, a conv kernel, a vector of coordinates) and `grad` its gradient, of
the same shape and dtype. `state` is this parameter's own dict: empty at step 1, the same
dict at every later step, so the rule keeps its buffers there, e.g.
`m = 0.9 * state.get("m", 0.0) + 0.1 * grad; state["m"] = m` (a scalar 0.0 default is a zero
buffer) or `if "m" not in state: state["m"] = torch.zeros_like(param)`. `lr` is a positive
Python float, the learning rate in *Adam units*: each problem passes a base learning rate at
which AdamW trains well, times 1/3, 1 or 3; a rule whose step has another natural scale
multiplies `lr` by a constant of its own (plain SGD here uses 10 * lr, Lion lr / 3). `step`
is an int counting from 1 (for bias correction or schedules). Return the new parameter
value: a finite float32 tensor of the same shape as `param`; it is copied into the
parameter (modifying `param` in place is neither required nor forbidden; do not keep `grad`
itself in the state, keep a copy or an expression of it). Weight decay, momentum
coefficients and epsilons are constants inside the function; helper functions in the same
file are allowed. Use only torch and math. This is the form of torch.optim's per-parameter
update, so an exported rule runs in any torch training loop through the adapter
`RuleOptimizer(model.parameters(), rule, lr)`."""

FITNESS_DOC = """\
Per (configuration, seed): the rule trains the configuration's problem from fixed initial
weights once per learning rate of a 3-point grid (base x 1/3, 1, 3); each run's final weights
get a metric on trusted data (test cross-entropy of the digits classifiers and the
character-level language model; log10 of the objective for the noisy quadratic and the
Rosenbrock problems; lower is better), clipped at the metric of the initial weights (a run
that diverges, returns NaN or ends worse than it started counts as standing still). The grid
mean M of these metrics rewards robustness to the learning rate. The fitness normalises M
between plain SGD (0) and AdamW (1) on the same problem, seed and grid:
(M_sgd - M) / (M_sgd - M_adamw), clipped to [-1, 3] (the denominator is at least 5% of
AdamW's improvement over the initial weights), so every problem counts on the same scale and
one blow-up cannot dominate. The overall fitness is the mean over configurations of the
per-configuration mean over seeds. Metrics at the middle learning rate, the best of the grid,
the test accuracy and the number of diverged runs are reported alongside."""

IMPORTS = "import math\n\nimport torch"

_ADAPTER_MARKER = "# --- adapter source starts here ---"


DISCOVER = Suite(
    "discover",
    (
        suite_config("logreg", kind="logreg", steps=100, batch=64, base_lr=0.1),
        suite_config("mlp", kind="mlp", steps=100, batch=64, hidden=32, base_lr=0.03),
        suite_config("cnn", kind="cnn", steps=80, batch=32, channels=8, base_lr=0.02),
        suite_config("charlm", kind="charlm", steps=150, batch=64, hidden=64, embed=12, context=6, base_lr=0.01),
        suite_config("quadratic", kind="nqm", steps=150, dim=100, cond=10000.0, noise=0.0, base_lr=0.03),
        suite_config("rosenbrock", kind="rosenbrock", steps=200, dim=10, base_lr=0.03),
    ),
    seeds=(0, 1, 2),
)

HELDOUT = Suite(
    "heldout",
    (
        suite_config("mlp_deep_long", kind="mlp", steps=250, batch=64, hidden=64, depth=2, base_lr=0.01),
        suite_config("cnn_wide_long", kind="cnn", steps=200, batch=32, channels=16, base_lr=0.01),
        suite_config(
            "charlm_large_long", kind="charlm", steps=400, batch=64, hidden=128, embed=16, context=8, base_lr=0.003
        ),
        suite_config("noisy_quadratic_long", kind="nqm", steps=300, dim=400, cond=10000.0, noise=0.3, base_lr=0.03),
        suite_config("rosenbrock_30d_long", kind="rosenbrock", steps=500, dim=30, base_lr=0.03),
        suite_config("autoencoder", kind="autoencoder", steps=250, batch=64, hidden=16, base_lr=0.01),
    ),
    seeds=(1000, 1001, 1002),
)

#: the trusted rules that define fitness 0 and 1
REFERENCES = {"sgd": library.sgd, "adamw": library.adamw}
_REFERENCE_SOURCES = "".join(inspect.getsource(fn) for fn in REFERENCES.values())


class OptimizerTask(LibraryTask):
    """Discover optimizer update rules (SGD, Adam, Lion and their relatives)."""

    name = "optimizer"
    description = (
        "Optimizer update rules (Lion slot) on digits classifiers, a character-level LM "
        "and ill-conditioned problems, over a learning-rate grid"
    )
    slot = Slot(
        name="update", signature=SIGNATURE, contract=CONTRACT, allowed_imports=("torch", "math"), kind="update_rule"
    )
    fitness_doc = FITNESS_DOC
    reference_baseline = "adamw"
    cascade_configs = ("charlm", "quadratic")

    library = library
    imports = IMPORTS
    discover = DISCOVER
    heldout = HELDOUT

    def contract_check(self, fn: Callable[..., Any]) -> None:
        rule = as_update_rule(fn)
        rule.reset(0)
        g = torch.Generator().manual_seed(1234)
        shapes = ((4, 3), (3,), (2, 1, 3, 3))
        params = [torch.randn(shape, generator=g) for shape in shapes]
        for step in (1, 2, 3):
            grads = [torch.randn(shape, generator=g) for shape in shapes]
            news = rule.step([p.clone() for p in params], grads, 0.01, step)
            for i, (shape, new) in enumerate(zip(shapes, news, strict=True)):
                where = f"step {step}, parameter of shape {shape}"
                if not isinstance(new, torch.Tensor):
                    raise ContractError(f"{where}: update returned {type(new).__name__}, expected a tensor")
                if tuple(new.shape) != shape:
                    raise ContractError(f"{where}: update returned shape {tuple(new.shape)}, expected {shape}")
                if new.dtype != torch.float32:
                    raise ContractError(f"{where}: update returned dtype {new.dtype}, expected torch.float32")
                if not torch.isfinite(new).all():
                    raise ContractError(f"{where}: update returned NaN or infinite values")
                params[i] = new.detach().clone()

    def prepare(self, config: SuiteConfig, seed: int, device: str = "cpu") -> dict[str, Any]:
        """The public inputs, built on the CPU whatever ``device`` is (the transport maps them)."""
        return build_inputs(ProblemParams.from_mapping(config.params), env_seed(config, seed))

    def train(
        self, fn: Callable[..., Any], config: SuiteConfig, seed: int, inputs: dict[str, Any], device: str = "cpu"
    ) -> dict[str, Any]:
        """Run the rule ``fn`` over the learning-rate grid with parameters, gradients and the rule's
        state on ``device``; the raw outputs come back on the CPU."""
        return train_grid(fn, ProblemParams.from_mapping(config.params), inputs, device)

    def batch_key(self, config: SuiteConfig) -> Any:
        """The seeds of a configuration, and configurations of equal problems, train as one batch: the
        problem's settings hold every shape, the step count and the learning-rate grid the rule sees."""
        return ProblemParams.from_mapping(config.params)

    def train_batch(self, fn: Any, items: list[BatchItem], device: str = "cpu") -> list[dict[str, Any]]:
        """:meth:`train` for every item at once (:func:`train_grids`), ``fn`` batched over them: per learning
        rate, one vectorised training of all items. A training's outputs are those it gets alone."""
        p = ProblemParams.from_mapping(items[0][0].params)
        return train_grids(local_slot(self.slot.kind, fn, len(items)), p, [i for _, _, i in items], device)

    def score(
        self, config: SuiteConfig, seed: int, inputs: dict[str, Any], outputs: dict[str, Any], device: str = "cpu"
    ) -> SeedMetrics:
        """Score on the CPU whatever ``device`` is, the SGD and AdamW references included: the
        yardstick of fitness 0 and 1 (and its disk cache) is then the same on every machine."""
        p = ProblemParams.from_mapping(config.params)
        env = env_seed(config, seed)
        finals = outputs["final"]
        if not isinstance(finals, list) or len(finals) != len(p.lr_grid):
            raise ValueError(f"expected final weights for {len(p.lr_grid)} learning rates")
        ctx = scoring_context(p, env, inputs)
        grid = ctx.grid(finals)
        refs = reference_means(p, env, inputs, REFERENCES, _REFERENCE_SOURCES)
        mid = p.lr_grid.index(1.0) if 1.0 in p.lr_grid else len(p.lr_grid) // 2
        diverged = sum(
            1 for d, m in zip(outputs["diverged_at"].tolist(), grid["raw"], strict=True) if d > 0 or m > ctx.init_metric
        )
        metrics = {
            "grid_mean": grid["mean"],
            "best": min(grid["per_lr"]),
            "at_base_lr": grid["per_lr"][mid],
            "init": ctx.init_metric,
            "sgd_grid_mean": refs["sgd"],
            "adamw_grid_mean": refs["adamw"],
            "diverged_runs": float(diverged),
        }
        if grid["accuracy"]:
            metrics["accuracy_at_base_lr"] = grid["accuracy"][mid]
        fitness = normalized(grid["mean"], refs["sgd"], refs["adamw"], ctx.init_metric)
        curves = outputs["curve_loss"]
        curve = {"loss": [float(v) for v in curves[mid]]}
        curve["loss_lr_low"] = [float(v) for v in curves[0]]
        curve["loss_lr_high"] = [float(v) for v in curves[-1]]
        return SeedMetrics(config=config.name, seed=seed, fitness=fitness, metrics=metrics, curve=curve)

    def export_adapter(self) -> str:
        """``RuleOptimizer(params, rule, lr)``, a ``torch.optim.Optimizer``, and ``make_optimizer(name, ...)``."""
        text = (Path(__file__).parent / "export.py").read_text()
        return text.split(_ADAPTER_MARKER, 1)[1].lstrip("\n")


TASK = OptimizerTask()
