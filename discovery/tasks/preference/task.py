"""The preference-optimization loss task (DiscoPOP's slot, on a CPU-sized environment)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from discovery.tasks.base import (
    ContractError,
    LibraryTask,
    SeedMetrics,
    Slot,
    Suite,
    SuiteConfig,
    check_per_example,
    curves_from,
    env_seed,
    suite_config,
)
from discovery.tasks.preference import baselines as library
from discovery.tasks.preference.env import (
    POLICY_LOGPS,
    EnvParams,
    TrainingFailed,
    build_inputs,
    make_policy,
    score_policy,
    train_policy,
)

SIGNATURE = (
    "def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, "
    "reference_rejected_logps, beta) -> torch.Tensor"
)

CONTRACT = """\
Arguments are float32 tensors of shape [B]: the summed token log-probabilities of the chosen
and the rejected response under the policy being trained and under the frozen reference
policy; `beta` is a Python float (0.02 to 0.5 in the suites). Return the per-example losses,
a float32 tensor of shape [B] that is finite and differentiable with respect to the policy
log-probs; the trainer minimises its mean. Use only torch, torch.nn.functional (as F) and
math; put hyper-parameters as constants inside the function. This is the TRL / DiscoPOP
contract, so a discovered loss drops into a DPO-style trainer unchanged."""

FITNESS_DOC = """\
Per (configuration, seed): fitness = reward_gain - 0.05 * KL(policy || reference), where
reward_gain is the policy's mean gold reward minus the reference's, in units of the
reference's reward standard deviation, on unseen prompts. This is the KL-regularised
objective that RLHF and the DPO family target, with one fixed coefficient for every
configuration (not each configuration's beta), so a loss cannot win by merely drifting far
from the reference, and standing still (fitness 0) beats learning the wrong preference.
Win rate against the reference and held-out preference accuracy are reported alongside.
The overall fitness is the mean over configurations of the per-configuration mean over seeds."""

IMPORTS = "import math\n\nimport torch\nimport torch.nn.functional as F"

EXPORT_ADAPTER = '''
def make_dpo_loss(loss, beta=0.1):
    """A TRL-style ``dpo_loss`` from a discovered loss (a name of REGISTRY, or the function).

    The result takes ``(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)``
    (summed log-probabilities of shape [B]; further positional or keyword arguments such as
    TRL's ``loss_type`` and ``model_output`` are ignored) and returns ``(losses,
    chosen_rewards, rejected_rewards)``: the per-example losses of shape [B], and the implicit
    rewards ``beta * (logps - ref_logps).detach()``, as ``DPOTrainer.dpo_loss`` does.
    """
    if isinstance(loss, str):
        if loss not in REGISTRY:
            raise KeyError(f"unknown loss {loss!r}; exported: {', '.join(REGISTRY)}")
        loss = REGISTRY[loss]
    if not callable(loss):
        raise TypeError("loss must be a name of REGISTRY or a function")
    beta = float(beta)

    def dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *args, **kwargs):
        ref_chosen_logps = ref_chosen_logps.to(chosen_logps.device)
        ref_rejected_logps = ref_rejected_logps.to(rejected_logps.device)
        losses = loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
        chosen_rewards = beta * (chosen_logps - ref_chosen_logps).detach()
        rejected_rewards = beta * (rejected_logps - ref_rejected_logps).detach()
        return losses, chosen_rewards, rejected_rewards

    dpo_loss.__name__ = f"dpo_loss_{getattr(loss, '__name__', 'loss')}"
    dpo_loss.__doc__ = loss.__doc__
    return dpo_loss


class DiscoveredDPOLoss(torch.nn.Module):
    """A discovered loss as a module: ``forward(policy_chosen_logps, policy_rejected_logps,
    reference_chosen_logps, reference_rejected_logps)`` returns ``(losses, chosen_rewards,
    rejected_rewards)`` like ``make_dpo_loss``; ``reduction="mean"`` averages the losses."""

    def __init__(self, loss, beta=0.1, reduction="none"):
        super().__init__()
        if reduction not in ("none", "mean"):
            raise ValueError("reduction must be 'none' or 'mean'")
        self.beta = float(beta)
        self.reduction = reduction
        self.dpo_loss = make_dpo_loss(loss, self.beta)

    def forward(self, policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps):
        losses, chosen_rewards, rejected_rewards = self.dpo_loss(
            policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
        )
        return (losses.mean() if self.reduction == "mean" else losses), chosen_rewards, rejected_rewards
'''


DISCOVER = Suite(
    "discover",
    (
        suite_config("clean", label_noise=0.0, beta=0.1, n_pairs=512),
        suite_config("noise20", label_noise=0.2, beta=0.1, n_pairs=512),
        suite_config("noise40", label_noise=0.4, beta=0.1, n_pairs=1024),
        suite_config("small_data", label_noise=0.1, beta=0.05, n_pairs=256),
        suite_config("beta05_len8", label_noise=0.1, beta=0.5, n_pairs=512, length=8),
    ),
    seeds=(0, 1, 2),
)

HELDOUT = Suite(
    "heldout",
    (
        suite_config("motif_clean_len5", reward_family="motif", label_noise=0.0, beta=0.1, length=5),
        suite_config("motif_noise30_len10", reward_family="motif", label_noise=0.3, beta=0.2, n_pairs=1024, length=10),
        suite_config("motif_noise10_beta002", reward_family="motif", label_noise=0.1, beta=0.02, n_pairs=512),
        suite_config("linear_noise30_len7", label_noise=0.3, beta=0.1, n_pairs=768, length=7),
    ),
    seeds=(1000, 1001, 1002),
)


class PreferenceTask(LibraryTask):
    """Discover offline preference-optimization losses (DPO and its relatives)."""

    name = "preference"
    description = "Offline preference-optimization losses (DiscoPOP slot) on a small autoregressive policy"
    slot = Slot(name="loss", signature=SIGNATURE, contract=CONTRACT)
    fitness_doc = FITNESS_DOC
    reference_baseline = "dpo"
    cascade_configs = ("clean", "noise40")

    library = library
    imports = IMPORTS
    discover = DISCOVER
    heldout = HELDOUT

    def contract_check(self, fn: Callable[..., Any]) -> None:
        g = torch.Generator().manual_seed(1234)
        args = [(torch.randn(10, generator=g) * 3 - 10).requires_grad_(True) for _ in range(4)]
        try:
            out = fn(*args, 0.1)
            check_per_example(out, 10, torch.float32, "contract", POLICY_LOGPS)
            out.mean().backward()
        except TrainingFailed as exc:
            raise ContractError(str(exc).removeprefix("contract: ")) from None
        for name, tensor in zip(("policy_chosen_logps", "policy_rejected_logps"), args, strict=False):
            if tensor.grad is not None and not torch.isfinite(tensor.grad).all():
                raise ContractError(f"gradient with respect to {name} is NaN or infinite")
        if all(t.grad is None for t in args[:2]):
            raise ContractError("loss does not depend on the policy log-probs (no gradient)")

    def export_adapter(self) -> str:
        """``make_dpo_loss(name_or_fn, beta)`` (a TRL-style ``dpo_loss``) and ``DiscoveredDPOLoss``."""
        return EXPORT_ADAPTER

    def warmup(self) -> None:
        params = EnvParams(n_pairs=8, batch=4, steps=2)
        state = make_policy(params).state_dict()
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, params.vocab, (params.n_pairs, params.length), generator=g)
        inputs = {
            "reference": state, "prompts": torch.randn(params.n_pairs, params.prompt_dim, generator=g),
            "chosen": tokens, "rejected": tokens.flip(0),
            "reference_chosen_logps": torch.zeros(params.n_pairs),
            "reference_rejected_logps": torch.zeros(params.n_pairs),
            "order_seed": torch.tensor(0),
        }
        train_policy(library.dpo, params, inputs)

    def prepare(self, config: SuiteConfig, seed: int, device: str = "cpu") -> dict[str, Any]:
        return build_inputs(EnvParams.from_mapping(config.params), env_seed(config, seed))

    def train(
        self, fn: Callable[..., Any], config: SuiteConfig, seed: int, inputs: dict[str, Any], device: str
    ) -> dict[str, Any]:
        return train_policy(fn, EnvParams.from_mapping(config.params), inputs)

    def score(
        self, config: SuiteConfig, seed: int, inputs: dict[str, Any], outputs: dict[str, Any], device: str
    ) -> SeedMetrics:
        metrics = score_policy(EnvParams.from_mapping(config.params), env_seed(config, seed), outputs["policy"])
        fitness = metrics.pop("fitness")
        curve = curves_from(outputs, ("loss", "grad_norm", "margin"))
        return SeedMetrics(config=config.name, seed=seed, fitness=fitness, metrics=metrics, curve=curve)


TASK = PreferenceTask()
