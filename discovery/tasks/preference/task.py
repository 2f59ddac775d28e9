"""The preference-optimization loss task (DiscoPOP's slot, on a CPU-sized environment)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
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
    env_seed,
    local_slot,
    one_training,
    suite_config,
)
from discovery.tasks.preference import baselines as library
from discovery.tasks.preference.env import (
    POLICY_LOGPS,
    EnvParams,
    build_inputs,
    score_policy,
    train_key,
    train_policies,
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

_ADAPTER_MARKER = "# --- adapter source starts here ---"


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
        watched = {"policy_chosen_logps": args[0], "policy_rejected_logps": args[1]}
        check_loss_contract(fn, (*args, 0.1), 10, POLICY_LOGPS, watched)

    def export_adapter(self) -> str:
        """``DiscoveredDPOTrainer`` (a ``trl.DPOTrainer`` optimising a discovered loss, built on first use),
        ``make_dpo_loss(name_or_fn, beta)`` and ``DiscoveredDPOLoss``: the source of ``export.py``."""
        text = (Path(__file__).parent / "export.py").read_text()
        return text.split(_ADAPTER_MARKER, 1)[1].lstrip("\n")

    def prepare(self, config: SuiteConfig, seed: int, device: str = "cpu") -> dict[str, Any]:
        """The public inputs, built on the CPU whatever ``device`` is: the environment (reference
        policy, sampled pairs) is then the same on every device; the transport maps the tensors."""
        return build_inputs(EnvParams.from_mapping(config.params), env_seed(config, seed))

    def train(
        self, fn: Callable[..., Any], config: SuiteConfig, seed: int, inputs: dict[str, Any], device: str = "cpu"
    ) -> dict[str, Any]:
        """Train the policy with ``fn`` on ``device`` (the vectorised trainer, one training); the raw outputs
        come back on the CPU."""
        return train_policies(one_training(fn), EnvParams.from_mapping(config.params), [inputs], device)[0]

    def batch_key(self, config: SuiteConfig) -> Any:
        """Seeds of a configuration, and configurations that differ only in their data (label noise), train
        as one batch; ``beta`` is part of the key (the loss gets it as a plain number)."""
        return train_key(EnvParams.from_mapping(config.params))

    def train_batch(self, fn: Any, items: list[BatchItem], device: str = "cpu") -> list[dict[str, Any]]:
        """:meth:`train` for every item at once (:func:`train_policies`); ``fn`` batched over them."""
        params = EnvParams.from_mapping(items[0][0].params)
        return train_policies(local_slot(self.slot.kind, fn, len(items)), params, [i for _, _, i in items], device)

    def score(
        self, config: SuiteConfig, seed: int, inputs: dict[str, Any], outputs: dict[str, Any], device: str = "cpu"
    ) -> SeedMetrics:
        """Score on the CPU whatever ``device`` is: the model is tiny, and a score is then a function
        of the returned weights alone, the same on every machine."""
        metrics = score_policy(EnvParams.from_mapping(config.params), env_seed(config, seed), outputs["policy"])
        fitness = metrics.pop("fitness")
        curve = curves_from(outputs, ("loss", "grad_norm", "margin"))
        return SeedMetrics(config=config.name, seed=seed, fitness=fitness, metrics=metrics, curve=curve)


TASK = PreferenceTask()
