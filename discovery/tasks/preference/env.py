"""A CPU-sized stand-in for preference-tuning a language model.

* Prompts are feature vectors ``x`` (what a prompt "is about"); the policy sees them.
* Responses are token sequences; a sequence's log-prob is the sum of its token log-probs,
  produced by a small autoregressive network (prompt + previous token + prefix summary).
* A hidden *gold reward* r(x, y) is a shared function of prompt features and tokens, so
  what the policy learns on training prompts carries over to unseen prompts.
* The reference policy is obtained by supervised training on a base distribution.
* Offline pairs are sampled from the reference and labelled by a Bradley-Terry model of
  the gold reward, then a fraction of labels is flipped (label noise).

Everything is a deterministic function of (configuration, seed). The trusted side builds
the whole environment; the sandbox only receives the public training inputs.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from discovery.tasks.base import cache_dir, check_each, descend_batch, split_trainings

ENV_VERSION = "pref-env-v1"
#: what a preference loss must pass gradient to
POLICY_LOGPS = "the policy log-probs"


@dataclass(frozen=True)
class EnvParams:
    """Settings of one preference configuration."""

    vocab: int = 8
    length: int = 6
    prompt_dim: int = 6
    hidden: int = 32
    reward_family: str = "linear"  # "linear" (discover) or "motif" (held-out)
    n_pairs: int = 512
    label_noise: float = 0.0
    beta: float = 0.1
    bt_temperature: float = 0.5  # Bradley-Terry temperature on gold-reward differences
    steps: int = 150
    batch: int = 64
    lr: float = 3e-3
    eval_prompts: int = 512
    eval_samples: int = 4
    kl_coef: float = 0.05  # weight of KL(policy || reference) in the fitness

    @classmethod
    def from_mapping(cls, params: Any) -> EnvParams:
        return cls(**dict(params))


class SequencePolicy(nn.Module):
    """Autoregressive policy: p(y_t | x, y_<t) from the prompt, previous token and prefix mean."""

    def __init__(self, vocab: int, length: int, prompt_dim: int, hidden: int):
        super().__init__()
        self.vocab, self.length = vocab, length
        self.prompt = nn.Linear(prompt_dim, hidden)
        self.prev = nn.Embedding(vocab + 1, hidden)  # index `vocab` is BOS
        self.prefix = nn.Linear(vocab, hidden, bias=False)
        self.position = nn.Embedding(length, hidden)
        self.mix = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, vocab)

    def logits(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Next-token logits [B, L, V] for every position of responses ``y`` [B, L]."""
        batch, length = y.shape
        bos = torch.full((batch, 1), self.vocab, dtype=y.dtype, device=y.device)
        prev = torch.cat([bos, y[:, :-1]], dim=1)
        onehot = F.one_hot(y, self.vocab).to(x.dtype)
        counts = torch.cumsum(onehot, dim=1) - onehot  # tokens strictly before t
        steps = torch.arange(length, device=y.device)
        prefix_mean = counts / steps.clamp(min=1).to(x.dtype).view(1, -1, 1)
        h = torch.tanh(self.prompt(x).unsqueeze(1) + self.prev(prev) + self.prefix(prefix_mean) + self.position(steps))
        h = torch.tanh(self.mix(h)) + h
        return self.out(h)

    def token_logps(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Log-prob of each token [B, L]."""
        logp = F.log_softmax(self.logits(x, y), dim=-1)
        return logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)

    def sequence_logps(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Log-prob of each whole response [B]: the sum of its token log-probs, as in an LLM."""
        return self.token_logps(x, y).sum(dim=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:meth:`sequence_logps` (what ``torch.func.functional_call`` calls in a batched training)."""
        return self.sequence_logps(x, y)

    @torch.no_grad()
    def sample(self, x: torch.Tensor, generator: torch.Generator, temperature: float = 1.0) -> torch.Tensor:
        """Sample responses [B, L] token by token."""
        batch = x.shape[0]
        y = torch.zeros(batch, self.length, dtype=torch.long, device=x.device)
        for t in range(self.length):
            logits = self.logits(x, y)[:, t] / temperature
            probs = torch.softmax(logits, dim=-1)
            y[:, t] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return y


def make_policy(p: EnvParams) -> SequencePolicy:
    return SequencePolicy(p.vocab, p.length, p.prompt_dim, p.hidden)


def _generator(*parts: object) -> torch.Generator:
    digest = hashlib.sha256(repr((ENV_VERSION,) + parts).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


class GoldReward:
    """The hidden reward r(x, y). Never leaves the trusted side."""

    def __init__(self, p: EnvParams, seed: int):
        g = _generator("gold", p.reward_family, p.vocab, p.prompt_dim, seed)
        self.family, self.vocab = p.reward_family, p.vocab
        self.token_weights = torch.randn(p.vocab, p.prompt_dim, generator=g) / math.sqrt(p.prompt_dim)
        self.bigram = torch.randn(p.vocab, p.vocab, generator=g) * 0.5
        self.hidden = torch.randn(16, p.prompt_dim, generator=g) / math.sqrt(p.prompt_dim)
        self.readout = torch.randn(p.vocab, 16, generator=g) / 4.0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        length = y.shape[1]
        if self.family == "linear":
            per_token = (x @ self.token_weights.T).gather(1, y)  # prompt-dependent token values
            pairs = self.bigram[y[:, :-1], y[:, 1:]].sum(1)
            return (per_token.sum(1) + pairs) / math.sqrt(length)
        if self.family == "motif":
            values = torch.tanh(torch.tanh(x @ self.hidden.T) @ self.readout.T) * 2.0
            per_token = values.gather(1, y).sum(1)
            repeats = (y[:, 1:] == y[:, :-1]).float().sum(1)
            return (per_token - 0.75 * repeats) / math.sqrt(length)
        raise ValueError(f"unknown reward family {self.family!r}")


def _prompts(p: EnvParams, seed: int, split: str, n: int) -> torch.Tensor:
    return torch.randn(n, p.prompt_dim, generator=_generator("prompts", split, p.prompt_dim, seed))


def reference_policy(p: EnvParams, seed: int) -> dict[str, torch.Tensor]:
    """Weights of the reference: SFT of a fresh policy on samples of a base distribution."""
    key = f"{ENV_VERSION}-ref-{p.vocab}-{p.length}-{p.prompt_dim}-{p.hidden}-{seed}"
    cache = cache_dir()
    path = cache / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.pt" if cache else None
    if path is not None and path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # a torn cache file is rebuilt, never trusted
            path.unlink(missing_ok=True)
    torch.manual_seed(0)
    g = _generator("base", p.vocab, p.length, p.prompt_dim, seed)
    base = make_policy(p)
    with torch.no_grad():
        for param in base.parameters():
            param.copy_(torch.randn(param.shape, generator=g) * 0.6)
    x = _prompts(p, seed, "sft", 4096)
    y = base.sample(x, g, temperature=1.0)
    ref = make_policy(p)
    with torch.no_grad():
        for param in ref.parameters():
            param.copy_(torch.randn(param.shape, generator=g) * 0.1)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    order = torch.randperm(x.shape[0], generator=g)
    for step in range(150):
        idx = order[(step * 256) % x.shape[0] :][:256]
        loss = -ref.token_logps(x[idx], y[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(state, tmp)
            os.replace(tmp, path)
        except OSError:
            pass
    return state


def build_inputs(p: EnvParams, seed: int) -> dict[str, Any]:
    """Trusted: the public training inputs (reference weights, labelled pairs, ref log-probs)."""
    ref_state = reference_policy(p, seed)
    ref = make_policy(p)
    ref.load_state_dict(ref_state)
    gold = GoldReward(p, seed)
    g = _generator("pairs", p.reward_family, p.label_noise, p.n_pairs, seed)
    x = _prompts(p, seed, "train", p.n_pairs)
    y1, y2 = ref.sample(x, g), ref.sample(x, g)
    margin = (gold(x, y1) - gold(x, y2)) / p.bt_temperature
    first_wins = torch.rand(p.n_pairs, generator=g) < torch.sigmoid(margin)
    flip = torch.rand(p.n_pairs, generator=g) < p.label_noise
    first_wins = first_wins ^ flip
    chosen = torch.where(first_wins.unsqueeze(1), y1, y2)
    rejected = torch.where(first_wins.unsqueeze(1), y2, y1)
    with torch.no_grad():
        ref_chosen, ref_rejected = ref.sequence_logps(x, chosen), ref.sequence_logps(x, rejected)
    return {
        "reference": ref_state,
        "prompts": x,
        "chosen": chosen,
        "rejected": rejected,
        "reference_chosen_logps": ref_chosen,
        "reference_rejected_logps": ref_rejected,
        "order_seed": torch.tensor(seed * 7919 + 17),
    }


def train_key(p: EnvParams) -> EnvParams:
    """What a training depends on besides its data: configurations with equal keys train as one batch
    (the labels' noise, the reward family and the scoring settings only change the data or the score)."""
    return replace(
        p, reward_family="", label_noise=0.0, bt_temperature=0.0, eval_prompts=0, eval_samples=0, kl_coef=0.0
    )


def train_policies(
    loss_fn: Any, p: EnvParams, batch: list[dict[str, Any]], device: str = "cpu"
) -> list[dict[str, Any]]:
    """Trusted: train S policies (S environments of equal :func:`train_key`) from their references with
    the candidate loss, as one vectorised training on ``device``; the returned weights and curves are on
    the CPU. The S policies' weights are stacked, their forward is ``vmap``-ed over ``functional_call``,
    one Adam steps the stacked weights (Adam is elementwise: S independent Adams), each training's
    gradient is clipped by its own norm, and the batched ``loss_fn`` is called once per step for all S
    (each training its own minibatches, in its own order). A training's result does not depend on S or
    on the others in the batch: the same (configuration, seed) gives the same weights alone or batched."""
    size = len(batch)
    policy = make_policy(p).to(device)
    params = {
        name: torch.stack([inputs["reference"][name] for inputs in batch]).to(device).requires_grad_(True)
        for name, _ in policy.named_parameters()
    }
    opt = torch.optim.Adam(list(params.values()), lr=p.lr)

    def stacked(key: str) -> torch.Tensor:
        return torch.stack([inputs[key] for inputs in batch]).to(device)

    x, chosen, rejected = stacked("prompts"), stacked("chosen"), stacked("rejected")
    ref_c, ref_r = stacked("reference_chosen_logps"), stacked("reference_rejected_logps")
    gens = [torch.Generator().manual_seed(int(inputs["order_seed"])) for inputs in batch]
    n = x.shape[1]
    orders = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device)
    rows = torch.arange(size, device=device).unsqueeze(1)

    def logps(weights: dict[str, torch.Tensor], prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(policy, weights, (prompts, responses))

    batched_logps = torch.func.vmap(logps)
    losses, grad_norms, margins = [], [], []
    every = max(1, p.steps // 20)
    cursor = 0
    for step in range(p.steps):
        if cursor + p.batch > n:
            orders, cursor = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device), 0
        idx = orders[:, cursor : cursor + p.batch]
        cursor += p.batch
        xb = x[rows, idx]
        both = batched_logps(params, xb.repeat(1, 2, 1), torch.cat([chosen[rows, idx], rejected[rows, idx]], dim=1))
        pc, pr = both[:, : p.batch], both[:, p.batch :]
        rc, rr = ref_c[rows, idx], ref_r[rows, idx]
        out = loss_fn(pc, pr, rc, rr, p.beta)
        check_each(out, p.batch, pc.dtype, f"step {step}", POLICY_LOGPS, size)
        loss = out.mean(dim=1)
        norm = descend_batch(loss, opt, params.values(), step, max_norm=1.0)
        if step % every == 0 or step == p.steps - 1:
            losses.append(loss.detach().cpu())
            grad_norms.append(norm.detach().cpu())
            with torch.no_grad():
                margins.append(((pc - rc) - (pr - rr)).mean(dim=1).cpu())
    return split_trainings(
        "policy", params, {"curve_loss": losses, "curve_grad_norm": grad_norms, "curve_margin": margins}
    )


class ScoringContext:
    """Trusted, per environment: everything about the reference that scoring needs, computed once."""

    def __init__(self, p: EnvParams, seed: int):
        self.params, self.seed = p, seed
        self.ref = make_policy(p)
        self.ref.load_state_dict(reference_policy(p, seed))
        self.gold = GoldReward(p, seed)
        g = _generator("eval-samples", seed)
        self.x = _prompts(p, seed, "eval", p.eval_prompts).repeat_interleave(p.eval_samples, dim=0)
        self.policy_sampling_state = g.get_state()
        with torch.no_grad():
            self.r_ref = self.gold(self.x, self.ref.sample(self.x, _generator("eval-ref-samples", seed)))
            # held-out preference pairs: fresh reference samples on unseen prompts, gold-labelled
            gp = _generator("pref-eval", seed)
            self.xa = _prompts(p, seed, "pref-eval", 1024)
            self.ya, self.yb = self.ref.sample(self.xa, gp), self.ref.sample(self.xa, gp)
            ra, rb = self.gold(self.xa, self.ya), self.gold(self.xa, self.yb)
            self.keep = ra != rb
            self.a_wins = ra > rb
            self.ref_margin = self.ref.sequence_logps(self.xa, self.ya) - self.ref.sequence_logps(self.xa, self.yb)


_contexts: dict[tuple[EnvParams, int], ScoringContext] = {}


def scoring_context(p: EnvParams, seed: int) -> ScoringContext:
    """The cached :class:`ScoringContext` of one environment."""
    key = (p, seed)
    if key not in _contexts:
        if len(_contexts) > 256:
            _contexts.clear()
        _contexts[key] = ScoringContext(p, seed)
    return _contexts[key]


@torch.no_grad()
def score_policy(p: EnvParams, seed: int, policy_state: dict[str, torch.Tensor]) -> dict[str, float]:
    """Trusted: gold-reward win rate, KL and held-out preference accuracy of a trained policy."""
    ctx = scoring_context(p, seed)
    policy = make_policy(p)
    policy.load_state_dict(policy_state, strict=True)
    for value in policy_state.values():
        if not torch.isfinite(value).all():
            raise ValueError("trained weights contain NaN or infinity")
    g = torch.Generator()
    g.set_state(ctx.policy_sampling_state)
    y_pol = policy.sample(ctx.x, g)
    r_pol, r_ref = ctx.gold(ctx.x, y_pol), ctx.r_ref
    win_rate = float(((r_pol > r_ref).float() + 0.5 * (r_pol == r_ref).float()).mean())
    logp_pol = F.log_softmax(policy.logits(ctx.x, y_pol), -1)
    logp_ref = F.log_softmax(ctx.ref.logits(ctx.x, y_pol), -1)
    kl = float((logp_pol.exp() * (logp_pol - logp_ref)).sum(-1).sum(-1).mean())
    reward_gain = float((r_pol.mean() - r_ref.mean()) / r_ref.std().clamp(min=1e-6))
    implicit = policy.sequence_logps(ctx.xa, ctx.ya) - policy.sequence_logps(ctx.xa, ctx.yb) - ctx.ref_margin
    pref_acc = float(((implicit > 0) == ctx.a_wins)[ctx.keep].float().mean())
    return {
        "win_rate": win_rate,
        "kl": kl,
        "reward_gain": reward_gain,
        "pref_accuracy": pref_acc,
        "fitness": reward_gain - p.kl_coef * kl,
    }
