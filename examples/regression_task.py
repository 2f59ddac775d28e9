"""A user's own task, as a worked example: robust regression losses under outliers.

Run it with any command that takes ``--task``::

    discovery tasks --task examples/regression_task.py
    discovery baselines --task examples/regression_task.py --suite both
    discovery run --task examples/regression_task.py --budget 20

The file only has to define ``TASK``, an instance of :class:`discovery.tasks.Task`. It runs on
the trusted side only: ``train`` gets ``fn``, a proxy of the candidate's loss, which runs in a
fresh jail per training and receives only each call's arguments (its output's backward is the
jail's gradient). It opts in to batched trainings (``batch_key`` and ``train_batch``): the seeds
of a configuration train as one vectorised training, with one call of the jailed loss per step
for all of them; a task without these two methods trains one (configuration, seed) at a time.
Heavy imports (scikit-learn here) sit inside :meth:`prepare` and :meth:`score` so that listing
the task stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from discovery.tasks.base import (
    BatchItem,
    ContractError,
    SeedMetrics,
    Slot,
    Suite,
    SuiteConfig,
    Task,
    TrainingFailed,
    env_seed,
    local_slot,
    one_training,
)

IMPORTS = "import math\n\nimport torch\nimport torch.nn.functional as F"

# -- the baseline library: complete candidate programs defining the slot --------------------------
BASELINES = {
    "mse": IMPORTS + "\n\n\ndef loss(pred, target):\n    return (pred - target) ** 2\n",
    "mae": IMPORTS + "\n\n\ndef loss(pred, target):\n    return (pred - target).abs()\n",
    "huber": IMPORTS + "\n\n\ndef loss(pred, target):\n"
    "    return F.huber_loss(pred, target, reduction='none', delta=1.0)\n",
    "log_cosh": IMPORTS + "\n\n\ndef loss(pred, target):\n    r = pred - target\n"
    "    return r + F.softplus(-2.0 * r) - math.log(2.0)\n",
}

# -- the suites: named configurations, each run with every seed ---------------------------------
DISCOVER = Suite(
    "discover",
    (
        SuiteConfig("clean", {"data": "diabetes", "outliers": 0.0}),
        SuiteConfig("outliers10", {"data": "diabetes", "outliers": 0.1}),
        SuiteConfig("outliers30", {"data": "diabetes", "outliers": 0.3}),
    ),
    seeds=(0, 1, 2),
)
HELDOUT = Suite(
    "heldout",
    (  # another dataset and another kind of corruption, its own seeds
        SuiteConfig("friedman_outliers20", {"data": "friedman", "outliers": 0.2}),
        SuiteConfig("diabetes_heavy_tail", {"data": "diabetes", "outliers": 0.0, "student_t": 1.5}),
    ),
    seeds=(100, 101, 102),
)

STEPS, LR = 300, 0.05


def _dataset(config: SuiteConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Trusted side: standardised features, corrupted training targets, clean test targets."""
    import numpy as np
    from sklearn.datasets import load_diabetes, make_friedman1
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(env_seed(config, seed))
    p = dict(config.params)
    if p["data"] == "diabetes":
        x, y = load_diabetes(return_X_y=True)
    else:
        x, y = make_friedman1(n_samples=600, n_features=10, noise=0.5, random_state=int(rng.integers(1 << 30)))
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=int(rng.integers(1 << 30)))
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-8
    y_mu, y_sd = y_tr.mean(), y_tr.std()
    x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
    y_tr, y_te = (y_tr - y_mu) / y_sd, (y_te - y_mu) / y_sd
    y_tr = y_tr.copy()
    n_bad = int(p.get("outliers", 0.0) * len(y_tr))
    bad = rng.choice(len(y_tr), n_bad, replace=False)
    y_tr[bad] = rng.normal(6, 3, n_bad)  # gross one-sided outliers, unrelated to the features
    if "student_t" in p:
        y_tr = y_tr + 0.5 * rng.standard_t(p["student_t"], len(y_tr))
    f = torch.float32
    return (
        torch.tensor(x_tr, dtype=f),
        torch.tensor(y_tr, dtype=f),
        torch.tensor(x_te, dtype=f),
        torch.tensor(y_te, dtype=f),
    )


def _model(n_features: int) -> torch.nn.Module:
    return torch.nn.Linear(n_features, 1)  # robust *linear* regression: the classic setting


class RobustRegressionTask(Task):
    """Discover regression losses that fit well when some training targets are outliers."""

    name = "robust_regression"
    description = "Regression losses under outlier targets (example of a user task file)"
    slot = Slot(
        name="loss",
        signature="def loss(pred, target) -> torch.Tensor",
        contract="pred and target are float32 tensors of shape [B] (standardised targets, some of them gross "
        "outliers). Return per-example losses, float32 [B], finite and differentiable in pred; the "
        "trainer minimises their mean with Adam.",
    )
    fitness_doc = "Per (configuration, seed): R^2 of the trained model on clean test targets (1 is perfect)."
    reference_baseline = "mse"
    cascade_configs = ("clean", "outliers30")

    @property
    def seed_program(self) -> str:
        return BASELINES["mse"]

    @property
    def baselines(self) -> dict[str, str]:
        return dict(BASELINES)

    def suites(self) -> dict[str, Suite]:
        return {"discover": DISCOVER, "heldout": HELDOUT}

    def contract_check(self, fn: Callable[..., Any]) -> None:
        pred = torch.linspace(-3, 3, 8).requires_grad_(True)
        out = fn(pred, torch.zeros(8))
        if not isinstance(out, torch.Tensor) or out.shape != (8,) or out.dtype != torch.float32:
            raise ContractError(f"must return a float32 tensor of shape [8], got {getattr(out, 'shape', out)!r}")
        if not torch.isfinite(out).all():
            raise ContractError("returned NaN or infinite losses")
        out.mean().backward()
        if pred.grad is None or not torch.isfinite(pred.grad).all():
            raise ContractError("no finite gradient with respect to pred")

    def prepare(self, config: SuiteConfig, seed: int, device: str = "cpu") -> dict[str, Any]:
        x_tr, y_tr, _, _ = _dataset(config, seed)  # the test split stays on the trusted side
        # CPU tensors whatever `device` is: the transport moves them onto the job's device
        return {"x": x_tr, "y": y_tr, "seed": torch.tensor(env_seed(config, seed))}

    def train(
        self, fn: Callable[..., Any], config: SuiteConfig, seed: int, inputs: dict[str, Any], device: str = "cpu"
    ) -> dict[str, Any]:
        """One training: the batched trainer below with a batch of one, so that a (configuration, seed)
        scores the same whether it trained alone or batched."""
        return self.train_batch(one_training(fn), [(config, seed, inputs)], device)[0]

    def batch_key(self, config: SuiteConfig) -> Any:
        """Opt in to batched trainings: the seeds of a configuration, and configurations of the same
        dataset (equal shapes), train as one vectorised training with one call of the loss per step."""
        return config.params["data"]

    def train_batch(self, fn: Any, items: list[BatchItem], device: str = "cpu") -> list[dict[str, Any]]:
        """S trainings at once: weights stacked [S, ...], the model ``vmap``-ed over ``functional_call``,
        one Adam for all (elementwise: S independent Adams); ``fn`` gets tensors [S, B] and returns [S, B]
        (the candidate's loss applied per training, under ``vmap`` in the jail)."""
        fn = local_slot(self.slot.kind, fn, len(items))  # a trusted function in process gets the same interface
        x = torch.stack([inputs["x"] for _, _, inputs in items]).to(device)
        y = torch.stack([inputs["y"] for _, _, inputs in items]).to(device)
        models = []
        for _, _, inputs in items:
            torch.manual_seed(int(inputs["seed"]))
            models.append(_model(x.shape[2]))  # initialised on the CPU: the same weights on every device
        model = models[0].to(device)
        weights = {
            name: torch.stack([dict(m.named_parameters())[name].detach() for m in models]).to(device).requires_grad_()
            for name, _ in model.named_parameters()
        }
        opt = torch.optim.Adam(list(weights.values()), lr=LR)
        forward = torch.func.vmap(lambda w, features: torch.func.functional_call(model, w, (features,)).squeeze(-1))
        curve = []
        for step in range(STEPS):
            losses = fn(forward(weights, x), y)
            for s in range(len(items)):
                if not isinstance(losses, torch.Tensor) or losses[s].shape != y[s].shape:
                    raise TrainingFailed(f"step {step}: loss must have shape {tuple(y[s].shape)}", index=s)
            value = losses.mean(dim=1)  # each training's own mean
            bad = (~torch.isfinite(value)).nonzero()
            if bad.numel():
                raise TrainingFailed(f"step {step}: loss is NaN or infinite", index=int(bad[0, 0]))
            opt.zero_grad()
            value.sum().backward()  # the trainings' gradients do not mix: each depends on its own weights
            opt.step()
            if step % 30 == 0 or step == STEPS - 1:
                curve.append(value.detach().cpu())
        curves = torch.stack(curve, dim=1)
        # raw outputs go back to the trusted side: CPU tensors
        return [
            {"weights": {k: v[s].detach().cpu() for k, v in weights.items()}, "curve_loss": curves[s].clone()}
            for s in range(len(items))
        ]

    def score(
        self, config: SuiteConfig, seed: int, inputs: dict[str, Any], outputs: dict[str, Any], device: str = "cpu"
    ) -> SeedMetrics:
        _, _, x_te, y_te = _dataset(config, seed)  # scored on the CPU: a linear model needs no GPU
        model = _model(x_te.shape[1])
        model.load_state_dict(outputs["weights"])  # untrusted tensors: shapes are checked by torch
        with torch.no_grad():
            pred = model(x_te).squeeze(-1)
        mse = float(((pred - y_te) ** 2).mean())
        r2 = 1.0 - mse / float(y_te.var(unbiased=False))
        r2 = max(r2, -1.0) if r2 == r2 else -1.0  # a blown-up model scores -1, not -inf or NaN
        return SeedMetrics(
            config=config.name,
            seed=seed,
            fitness=r2,
            metrics={"r2": r2, "test_mse": mse},
            curve={"loss": [float(v) for v in outputs["curve_loss"]]},
        )


TASK = RobustRegressionTask()
