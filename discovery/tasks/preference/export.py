"""Export adapter of the preference task: a discovered loss where DPO-style trainers expect one.

The text of this module from the marker below on is what ``PreferenceTask.export_adapter``
returns; it is appended to an exported module after its functions and its ``REGISTRY`` dict
(export name -> loss function), so it may refer to ``REGISTRY``. It needs only torch when the
module is imported: TRL is imported the first time ``DiscoveredDPOTrainer`` is looked up
(a module-level ``__getattr__``, PEP 562).

TRL removed ``DPOTrainer.dpo_loss`` (v0.29); in TRL 1.x the loss formula sits inside
``DPOTrainer._compute_loss(model, inputs, return_outputs)``, between the sequence log-probs it
computes and the metrics it logs. ``DiscoveredDPOTrainer`` overrides that method: it lets TRL
run it (forward pass, reference, every metric) with the reference log-probs computed up front by
TRL's own ``compute_ref_log_probs``, takes the policy's per-token log-probs from the forward pass,
sums them as TRL does, and returns the discovered loss instead of TRL's. On its first batch it
checks its log-probs and rewards against the ones TRL logged, so a TRL whose internals moved
fails loudly instead of training something else.
"""

import torch

# --- adapter source starts here ---


def _resolve_loss(loss):
    """The loss function: ``loss`` itself if callable, else ``REGISTRY[loss]``."""
    if isinstance(loss, str):
        registry = REGISTRY  # noqa: F821  (defined by the exported module this source is appended to)
        if loss not in registry:
            raise KeyError(f"unknown loss {loss!r}; exported: {', '.join(registry)}")
        return registry[loss]
    if not callable(loss):
        raise TypeError("loss must be a name of REGISTRY or a function with the slot's signature")
    return loss


def make_dpo_loss(loss, beta=0.1):
    """A TRL-style ``dpo_loss`` from a discovered loss (a name of REGISTRY, or the function).

    The result takes ``(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)``
    (summed log-probabilities of shape [B]; further positional or keyword arguments are
    ignored) and returns ``(losses, chosen_rewards, rejected_rewards)``: the per-example losses
    of shape [B], and the implicit rewards ``beta * (logps - ref_logps).detach()``. For a
    trainer of your own; with TRL, use ``DiscoveredDPOTrainer``.
    """
    loss = _resolve_loss(loss)
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


def _check_dpo_config(config):
    """Refuse DPOConfig settings that would change TRL's loss, which the discovered loss replaces."""
    if config is None:
        return
    problems = []
    if list(getattr(config, "loss_type", None) or ["sigmoid"]) != ["sigmoid"]:
        problems.append(f"loss_type={config.loss_type!r}")
    if getattr(config, "loss_weights", None) is not None:
        problems.append(f"loss_weights={config.loss_weights!r}")
    if str(getattr(config, "f_divergence_type", "reverse_kl")) != "reverse_kl":
        problems.append(f"f_divergence_type={config.f_divergence_type!r}")
    if getattr(config, "use_weighting", False):
        problems.append("use_weighting=True")
    if getattr(config, "label_smoothing", 0.0):
        problems.append(f"label_smoothing={config.label_smoothing!r}")
    if problems:
        raise ValueError(
            f"DiscoveredDPOTrainer trains the discovered loss, so {', '.join(problems)} would be "
            "ignored; leave them at their defaults (a discovered loss keeps its constants inside)"
        )


def _sequence_logps(log_probs, completion_mask, ld_alpha):
    """(chosen, rejected) summed completion log-probs from per-token ones, as TRL's ``_compute_loss`` sums
    them (``ld_alpha``: LD-DPO's down-weighting of the tokens past the shorter completion)."""
    mask = completion_mask[..., 1:]
    per_token = log_probs[:, -mask.size(1) :]
    if ld_alpha is None:
        logps = per_token.sum(dim=1)
    else:
        position = mask.cumsum(dim=1).to(per_token.device)
        chosen_lens, rejected_lens = mask.sum(dim=1).long().chunk(2, dim=0)
        shared = torch.minimum(chosen_lens, rejected_lens).repeat(2).unsqueeze(1).to(per_token.device)
        logps = (per_token * ((position > 0) & (position <= shared))).sum(dim=1) + ld_alpha * (
            per_token * (position > shared)
        ).sum(dim=1)
    return logps.chunk(2, dim=0)


def _discovered_dpo_trainer():
    """Build ``DiscoveredDPOTrainer`` on the installed ``trl.DPOTrainer`` (TRL is imported here)."""
    import inspect
    import warnings

    try:
        import trl
        from trl import DPOTrainer
    except ImportError as exc:
        raise ImportError("DiscoveredDPOTrainer needs TRL: pip install 'trl>=1.0'") from exc
    hook = getattr(DPOTrainer, "_compute_loss", None)
    hook_params = list(inspect.signature(hook).parameters) if callable(hook) else []
    if hook_params != ["self", "model", "inputs", "return_outputs"] or not callable(
        getattr(DPOTrainer, "compute_ref_log_probs", None)
    ):
        raise RuntimeError(
            f"DiscoveredDPOTrainer cannot hook into trl {trl.__version__}: it replaces the loss inside "
            "DPOTrainer._compute_loss(model, inputs, return_outputs) and needs DPOTrainer.compute_ref_log_probs "
            "(trl 1.x). Install a trl 1.x, or train with make_dpo_loss in a trainer of your own."
        )

    class DiscoveredDPOTrainer(DPOTrainer):
        """``trl.DPOTrainer`` optimising a discovered loss: ``DiscoveredDPOTrainer(loss="NAME", model=...,
        ref_model=..., args=DPOConfig(...), train_dataset=..., processing_class=...)``.

        ``loss`` is a name of REGISTRY or a function ``loss(policy_chosen_logps, policy_rejected_logps,
        reference_chosen_logps, reference_rejected_logps, beta)`` returning per-example losses [B];
        it gets TRL's summed completion log-probs and ``args.beta``, and the trainer minimises the
        mean. Everything else is TRL's: data, reference model or precomputed reference log-probs,
        PEFT, MoE auxiliary loss, and every logged metric (rewards/chosen, rewards/rejected,
        rewards/margins, rewards/accuracies, logps/*, ...). DPOConfig settings that only shape
        TRL's own loss (loss_type, loss_weights, f_divergence_type, use_weighting,
        label_smoothing) must stay at their defaults.
        """

        def __init__(self, *args, loss, **kwargs):
            discovered = _resolve_loss(loss)
            _check_dpo_config(kwargs["args"] if "args" in kwargs else (args[2] if len(args) > 2 else None))
            super().__init__(*args, **kwargs)
            self.discovered_loss = discovered
            self._discovered_checked = False

        def _compute_loss(self, model, inputs, return_outputs):
            calls = []

            def policy(*model_args, **model_kwargs):
                outputs = model(*model_args, **model_kwargs)
                calls.append(outputs)
                return outputs

            if self.precompute_ref_logps:
                ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
            else:
                # TRL's own reference pass (reference model, or the PEFT base), once, handed to TRL as precomputed
                ref_model = self.ref_model if self.ref_model is not None else self.model
                ref_chosen, ref_rejected = self.compute_ref_log_probs(ref_model, inputs)
                inputs = {**inputs, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
            precompute, self.precompute_ref_logps = self.precompute_ref_logps, True
            try:
                result = super()._compute_loss(policy, inputs, return_outputs)
            finally:
                self.precompute_ref_logps = precompute
            if not calls or getattr(calls[0], "log_probs", None) is None:
                raise RuntimeError(
                    f"trl {trl.__version__}: DPOTrainer._compute_loss did not return per-token "
                    "log-probs from the policy's forward pass; DiscoveredDPOTrainer cannot hook in"
                )
            outputs = calls[0]
            chosen, rejected = _sequence_logps(
                outputs.log_probs, inputs["completion_mask"], getattr(self, "ld_alpha", None)
            )
            ref_chosen, ref_rejected = ref_chosen.to(chosen.device), ref_rejected.to(chosen.device)
            losses = self.discovered_loss(chosen, rejected, ref_chosen, ref_rejected, self.beta)
            if not isinstance(losses, torch.Tensor) or losses.shape != chosen.shape:
                got = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
                raise ValueError(
                    f"the discovered loss returned {got}; per-example losses of shape {tuple(chosen.shape)} expected"
                )
            loss = losses.mean()
            if getattr(self, "aux_loss_enabled", False):
                loss = loss + self.router_aux_loss_coef * outputs.aux_loss
            if not self._discovered_checked:
                self._check_against_trl(chosen, rejected, ref_chosen, ref_rejected)
            return (loss, result[1]) if return_outputs else loss

        def _check_against_trl(self, chosen, rejected, ref_chosen, ref_rejected):
            """The log-probs and rewards the discovered loss got must be the ones TRL logged for this batch."""
            mode = "train" if self.model.training else "eval"
            logged = getattr(self, "_metrics", {}).get(mode, {})
            ours = {
                "logps/chosen": chosen,
                "logps/rejected": rejected,
                "rewards/chosen": self.beta * (chosen - ref_chosen),
                "rewards/rejected": self.beta * (rejected - ref_rejected),
            }
            compared = 0
            for key, value in ours.items():
                if not logged.get(key):
                    continue
                mine, theirs = self.accelerator.gather(value.detach()).mean().item(), logged[key][-1]
                if abs(mine - theirs) > 1e-4 * max(1.0, abs(theirs)):
                    raise RuntimeError(
                        f"trl {trl.__version__}: the {key} given to the discovered loss ({mine:.6g}) "
                        f"differ from the ones TRL logged ({theirs:.6g}); DiscoveredDPOTrainer does "
                        "not match this trl's DPOTrainer._compute_loss"
                    )
                compared += 1
            if not compared:
                warnings.warn(
                    f"trl {trl.__version__} logged none of {', '.join(ours)}; DiscoveredDPOTrainer could not "
                    "check its log-probs against TRL's",
                    RuntimeWarning,
                    stacklevel=3,
                )
            self._discovered_checked = True

    DiscoveredDPOTrainer.__module__, DiscoveredDPOTrainer.__qualname__ = __name__, "DiscoveredDPOTrainer"
    return DiscoveredDPOTrainer


def __getattr__(name):
    # PEP 562: DiscoveredDPOTrainer subclasses the installed trl.DPOTrainer, so TRL is imported on first use only
    if name == "DiscoveredDPOTrainer":
        cls = _discovered_dpo_trainer()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), "DiscoveredDPOTrainer"})
