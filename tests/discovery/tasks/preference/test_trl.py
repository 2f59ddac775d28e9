"""The exported module's ``DiscoveredDPOTrainer`` against the installed TRL, and the baselines against TRL's losses.

A tiny Llama built from a config (random weights, seeded) and a character-level tokenizer built
here, a few preference pairs, a few CPU steps. The module comes from ``discovery.export.export``
(what ``discovery export`` runs) over an archive holding DPO, 2 x DPO, an always-zero loss and the
README's ``my_loss`` (CELL).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

from discovery.archive import Archive
from discovery.export import export
from discovery.tasks.preference import baselines as lib

if importlib.util.find_spec("trl") is None:  # the dev extra installs it; CI must not pass by skipping
    if os.environ.get("CI") == "true":
        pytest.fail("trl is not installed (pip install -e '.[dev]'); the TRL tests must run under CI", pytrace=False)
    pytest.skip("trl is not installed (pip install -e '.[dev]')", allow_module_level=True)

import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from tokenizers import Regex, Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

HEAD = "import math\nimport torch\nimport torch.nn.functional as F\n\n\n"
SIG = "def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):\n"
CANDIDATES = {  # name -> (code, is_baseline)
    "dpo": (HEAD + inspect.getsource(lib.dpo).replace("def dpo(", "def loss(", 1), True),
    "twice_dpo": (
        HEAD + SIG + "    h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - "
        "reference_rejected_logps)\n    return -2.0 * F.logsigmoid(beta * h)\n",
        False,
    ),
    "zero": (HEAD + SIG + "    return 0 * (policy_chosen_logps - policy_rejected_logps)\n", False),
    "my_loss": (HEAD + inspect.getsource(lib.cell).replace("def cell(", "def loss(", 1), False),  # the README's
}
REWARDS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
PAIRS = {
    "prompt": ["the sky is", "grass is", "snow is", "fire is", "the sea is", "coal is", "milk is", "blood is"],
    "chosen": [" blue", " green", " white", " hot", " deep", " black", " white", " red"],
    "rejected": [" green", " red", " black", " cold", " dry", " white", " blue", " green"],
}


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """An exported module, written as ``discovery export --candidate ...`` writes it."""
    folder = tmp_path_factory.mktemp("trl-export")
    db = folder / "runs.db"
    ids = []
    with Archive(db) as archive:
        run = archive.create_run("preference", {"task": "preference"})
        for i, (name, (code, baseline)) in enumerate(CANDIDATES.items()):
            added = archive.add_candidate(
                run, name=name, code=code, code_hash=name, proposer="test", is_baseline=baseline
            )
            archive.update_candidate(added.id, status="ok", fitness=1.0 - 0.1 * i)
            ids.append(added.id)
    text, chosen, skipped = export(db, candidate_ids=ids)
    assert [name for name, _ in chosen] == list(CANDIDATES) and not skipped
    path = folder / "discovered_losses.py"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def dl(exported: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("discovered_losses_trl_test", exported)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """Characters as tokens, with pad and eos: nothing downloaded."""
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz ")}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def tiny_llama(seed: int, vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
    )
    return LlamaForCausalLM(config)


def config(out: Path, **overrides) -> DPOConfig:
    settings = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        max_steps=4,
        logging_steps=1,
        learning_rate=1e-2,
        weight_decay=0.0,
        beta=0.1,
        max_length=32,
        seed=0,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
    )
    return DPOConfig(**{**settings, **overrides})


def train(trainer_class, tokenizer, out: Path, precompute: bool = False, **kwargs):
    """Train a fresh copy of the same policy (seed 0) against a different reference (seed 1) for 4 steps;
    the trainer, its per-step logs and the initial weights."""
    policy = tiny_llama(0, len(tokenizer))
    initial = {k: v.detach().clone() for k, v in policy.state_dict().items()}
    trainer_kwargs = {k: kwargs.pop(k) for k in ("loss",) if k in kwargs}
    trainer = trainer_class(
        model=policy,
        ref_model=tiny_llama(1, len(tokenizer)),
        args=config(out, precompute_ref_log_probs=precompute, **kwargs),
        train_dataset=Dataset.from_dict(PAIRS),
        processing_class=tokenizer,
        **trainer_kwargs,
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logs] == [1, 2, 3, 4]
    return trainer, logs, initial


def losses(logs: list[dict]) -> list[float]:
    return [entry["loss"] for entry in logs]


# ------------------------------------------------------------------------------------- the exported module


def test_module_imports_without_trl_and_builds_the_trainer_on_first_use(exported, dl, tmp_path):
    code = f"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("discovered_losses", {str(exported)!r})
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("trl", "transformers", "datasets", "discovery"))
try:
    mod.no_such_thing
except AttributeError as exc:
    missing = str(exc)
print(json.dumps({{"heavy": heavy, "listed": "DiscoveredDPOTrainer" in dir(mod), "missing": missing}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []  # importing the module imports torch only
    assert out["listed"] and "no_such_thing" in out["missing"]
    cls = dl.DiscoveredDPOTrainer  # built on first access, then kept
    assert issubclass(cls, DPOTrainer) and vars(dl)["DiscoveredDPOTrainer"] is cls is dl.DiscoveredDPOTrainer
    assert cls.__qualname__ == "DiscoveredDPOTrainer" and cls.__module__ == dl.__name__


@pytest.fixture(scope="module")
def runs(dl, tokenizer, tmp_path_factory):
    """``runs(key, trainer_class, **kwargs)``: ``train(...)`` once per key for the module."""
    done: dict[str, tuple] = {}

    def run(key: str, trainer_class, precompute: bool = False, **kwargs):
        if key not in done:
            done[key] = train(trainer_class, tokenizer, tmp_path_factory.mktemp(key), precompute, **kwargs)
        return done[key]

    return run


@pytest.mark.parametrize("precompute", [False, True], ids=["ref-model", "precomputed-ref"])
def test_exported_dpo_trains_step_by_step_like_trl_sigmoid(dl, runs, precompute):
    ref, ref_logs, initial = runs(f"trl-{precompute}", DPOTrainer, precompute)
    ours, our_logs, _ = runs(f"dpo-{precompute}", dl.DiscoveredDPOTrainer, precompute, loss="dpo")
    assert isinstance(ours, DPOTrainer) and ours.args.loss_type == ["sigmoid"]
    assert losses(our_logs) == pytest.approx(losses(ref_logs), abs=1e-4)
    assert abs(losses(ref_logs)[0] - math.log(2)) > 1e-3  # the reference differs from the policy: not log 2
    assert len(set(losses(ref_logs))) == 4  # and the loss moves step by step
    # every metric TRL logs, by the names the installed trl uses, with the same values
    assert set(REWARDS) <= set(our_logs[0]) and set(our_logs[0]) == set(ref_logs[0])
    for mine, theirs in zip(our_logs, ref_logs, strict=True):
        for key in REWARDS + ("logps/chosen", "logps/rejected"):
            assert mine[key] == pytest.approx(theirs[key], abs=1e-4), key
    moved = False
    for (name, a), b in zip(ours.model.state_dict().items(), ref.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name
        moved |= not torch.equal(a, initial[name])
    assert moved


def test_the_discovered_loss_is_what_gets_optimised(dl, runs):
    _, dpo_logs, _ = runs("dpo-False", dl.DiscoveredDPOTrainer, loss="dpo")
    _, twice_logs, _ = runs("twice", dl.DiscoveredDPOTrainer, loss="twice_dpo")
    assert twice_logs[0]["loss"] == pytest.approx(2 * dpo_logs[0]["loss"], rel=1e-5)
    zero, zero_logs, initial = runs("zero", dl.DiscoveredDPOTrainer, loss="zero")
    assert losses(zero_logs) == [0.0] * 4
    for name, value in zero.model.state_dict().items():
        assert torch.equal(value, initial[name]), name  # no gradient and no weight decay: nothing moves
    assert set(REWARDS) <= set(zero_logs[0]) and zero_logs[0]["rewards/margins"] == dpo_logs[0]["rewards/margins"]


def test_a_plain_function_and_ld_alpha(dl, runs):
    _, ref_logs, _ = runs("trl-ld", DPOTrainer, ld_alpha=0.5)
    _, our_logs, _ = runs("fn-ld", dl.DiscoveredDPOTrainer, ld_alpha=0.5, loss=lambda *args: lib.dpo(*args))
    assert losses(our_logs) == pytest.approx(losses(ref_logs), abs=1e-4)  # LD-DPO's sum, as TRL makes it


def test_misuse_fails_loudly(dl, tokenizer, tmp_path, monkeypatch):
    for setting in (
        {"loss_type": "hinge"},
        {"loss_type": ["sigmoid", "sft"]},
        {"label_smoothing": 0.1},
        {"f_divergence_type": "js_divergence"},
        {"use_weighting": True},
    ):
        with pytest.raises(ValueError, match="DiscoveredDPOTrainer trains the discovered loss"):
            train(dl.DiscoveredDPOTrainer, tokenizer, tmp_path / "bad", loss="dpo", **setting)
    with pytest.raises(KeyError, match="unknown loss 'nope'"):
        train(dl.DiscoveredDPOTrainer, tokenizer, tmp_path / "bad", loss="nope")
    with pytest.raises(ValueError, match=r"returned \(\); per-example losses of shape \(4,\) expected"):
        train(dl.DiscoveredDPOTrainer, tokenizer, tmp_path / "bad", loss=lambda *args: dl.dpo(*args).mean())
    # TRL's internals moved (here: log-probs summed differently): the first batch says so instead of training on
    monkeypatch.setitem(dl.__dict__, "_sequence_logps", lambda lp, mask, alpha: (0.5 * lp.sum(1)).chunk(2))
    with pytest.raises(RuntimeError, match="logps/chosen given to the discovered loss .* differ from the ones TRL"):
        train(dl.DiscoveredDPOTrainer, tokenizer, tmp_path / "drift", loss="dpo")
    monkeypatch.undo()
    # a trl without the method the loss is computed in: no class at all, rather than one training sigmoid DPO
    monkeypatch.delattr(DPOTrainer, "_compute_loss")
    with pytest.raises(RuntimeError, match=f"cannot hook into trl {trl.__version__}.*_compute_loss"):
        dl._discovered_dpo_trainer()


def test_the_readme_recipe_runs_as_written(exported, dl, tokenizer, tmp_path, monkeypatch):
    readme = (Path(__file__).resolve().parents[4] / "README.md").read_text()
    section = readme.split("## Export discovered losses", 1)[1].split("\n## ", 1)[0]
    (recipe,) = [b for b in re.findall(r"```python\n(.*?)```", section, re.S) if "DiscoveredDPOTrainer" in b]
    monkeypatch.syspath_prepend(str(exported.parent))
    monkeypatch.delitem(sys.modules, "discovered_losses", raising=False)
    monkeypatch.chdir(tmp_path)
    namespace = {
        "model": tiny_llama(0, len(tokenizer)),
        "ref_model": tiny_llama(1, len(tokenizer)),
        "dataset": Dataset.from_dict(PAIRS),
        "tokenizer": tokenizer,
    }
    exec(compile(recipe, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    trainer = namespace["trainer"]
    assert trainer.discovered_loss is namespace["dl"].REGISTRY["my_loss"] and trainer.args.beta == 0.1
    assert trainer.state.global_step > 0 and math.isfinite(trainer.state.log_history[-1]["train_loss"])


# ------------------------------------------------------------------------------------- baselines vs TRL's losses

# our baseline -> (TRL loss_type, TRL settings). The per-example losses must be equal on the same tensors and beta.
TRL_TWINS = {
    "dpo": ("sigmoid", {}),
    "hinge": ("hinge", {}),
    "ipo": ("ipo", {}),  # TRL averages log-ratios over completion tokens: see per_token_average below
    "robust_dpo": ("robust", {"label_smoothing": 0.2}),  # our flip rate eps = 0.2 is TRL's label_smoothing
    "bco_pair": ("bco_pair", {}),  # ours subtracts delta = batch-mean reward; TRL 1.x has delta = 0: see below
    "nca_pair": ("nca_pair", {}),
    "sppo_hard": ("sppo_hard", {}),
    "apo_zero": ("apo_zero", {}),
    "discopop": ("discopop", {"discopop_tau": 0.05}),  # our tau = 0.05, TRL's default
}


class PerTokenLogps:
    """A stand-in for the fused-LM-head policy: returns per-token log-probs that sum, over each
    completion, to the given sequence log-probs (TRL's ``_compute_loss`` only calls the model)."""

    def __init__(self, logps: torch.Tensor, completion_mask: torch.Tensor):
        shifted = completion_mask[:, 1:].float()
        per_token = shifted * (logps / shifted.sum(1)).unsqueeze(1)
        zeros = torch.zeros_like(per_token)
        self.outputs = SimpleNamespace(
            log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(), aux_loss=None
        )

    def __call__(self, **kwargs):
        return self.outputs


def trl_losses(trainer, loss_type, settings, pc, pr, rc, rr, lengths):
    """TRL's own per-example losses: ``DPOTrainer._compute_loss`` on one pair at a time, with the
    reference log-probs given as precomputed and completions of ``lengths`` (chosen, rejected) tokens."""
    trainer.loss_types, trainer.loss_weights, trainer.precompute_ref_logps = [loss_type], [1.0], True
    trainer.label_smoothing = settings.get("label_smoothing", 0.0)
    trainer.args.discopop_tau = settings.get("discopop_tau", 0.05)
    width = 1 + max(lengths)
    mask = torch.tensor([[0] + [1] * n + [0] * (width - 1 - n) for n in lengths])
    out = []
    for i in range(len(pc)):
        model = PerTokenLogps(torch.stack([pc[i], pr[i]]), mask)
        inputs = {
            "input_ids": torch.ones_like(mask),
            "attention_mask": torch.ones_like(mask),
            "completion_mask": mask,
            "ref_chosen_logps": rc[i : i + 1],
            "ref_rejected_logps": rr[i : i + 1],
        }
        out.append(DPOTrainer._compute_loss(trainer, model, inputs, False))
    return torch.stack(out)


@pytest.fixture(scope="module")
def plain_trainer(tokenizer, tmp_path_factory) -> DPOTrainer:
    """A real DPOTrainer (for its accelerator, metrics and settings); only its ``_compute_loss`` is used."""
    out = tmp_path_factory.mktemp("trl-baselines")
    return DPOTrainer(
        model=tiny_llama(0, len(tokenizer)),
        ref_model=tiny_llama(1, len(tokenizer)),
        args=config(out),
        train_dataset=Dataset.from_dict(PAIRS),
        processing_class=tokenizer,
    )


@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize("name", sorted(TRL_TWINS))
def test_baseline_equals_trls_loss_on_the_same_tensors(plain_trainer, name, beta):
    g = torch.Generator().manual_seed(7)
    pc, pr, rc, rr = [torch.randn(16, generator=g) * 3 - 10 for _ in range(4)]
    loss_type, settings = TRL_TWINS[name]
    plain_trainer.beta = beta
    ours_fn = getattr(lib, name)
    for lengths in ((1, 1), (3, 2)):
        ours = ours_fn(pc, pr, rc, rr, beta)
        theirs_in = (pc, pr, rc, rr)
        if name == "ipo":  # TRL's IPO is ours on log-ratios averaged per completion token
            lc, lr = lengths
            ours = ours_fn(pc / lc, pr / lr, rc / lc, rr / lr, beta)
        if name == "bco_pair":  # ours is TRL's with both rewards shifted by our delta (their delta is 0)
            delta = (beta * torch.cat([pc - rc, pr - rr])).mean()
            theirs_in = (pc - delta / beta, pr - delta / beta, rc, rr)
        theirs = trl_losses(plain_trainer, loss_type, settings, *theirs_in, lengths=lengths)
        assert ours.shape == theirs.shape == (16,)
        assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5), (name, lengths, (ours - theirs).abs().max())
    if name == "ipo":  # without the per-token average they differ as soon as a completion is longer than 1 token
        assert not torch.allclose(ours_fn(pc, pr, rc, rr, beta), theirs, rtol=1e-3)
    if name == "bco_pair":
        assert not torch.allclose(
            ours_fn(pc, pr, rc, rr, beta),
            trl_losses(plain_trainer, loss_type, settings, pc, pr, rc, rr, lengths=(1, 1)),
            rtol=1e-3,
        )
