"""Run configuration: defaults, a TOML file, then command-line options, validated by pydantic."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sandbox.base import Limits

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib


class ConfigError(ValueError):
    """An invalid configuration, with a one-line message."""


class ModelConfig(BaseModel):
    """One LLM, chosen with probability proportional to ``weight``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="litellm model name, e.g. openai/gpt-4o, anthropic/claude-sonnet-4-5")
    weight: float = Field(1.0, gt=0, description="relative probability of this model for each proposal")
    api_base: str | None = Field(None, description="OpenAI-compatible server URL (vLLM, llama.cpp, Ollama)")
    api_key_env: str | None = Field(
        None, description="environment variable holding the key (default: the provider's, e.g. OPENAI_API_KEY)"
    )
    temperature: float = Field(1.0, ge=0, le=2, description="sampling temperature")
    max_tokens: int = Field(2048, gt=0, description="largest reply, in tokens")
    price_in: float | None = Field(None, ge=0, description="USD per 1M prompt tokens, if litellm does not know")
    price_out: float | None = Field(None, ge=0, description="USD per 1M completion tokens")


class SandboxLimits(BaseModel):
    """Limits of each candidate's sandboxed job ([run.limits] in a TOML file)."""

    model_config = ConfigDict(extra="forbid")

    training_seconds: float | None = Field(
        None,
        gt=0,
        description="wall-clock seconds one (configuration, seed) training may take; "
        "default: the task's (60 for the built-in tasks)",
    )
    job_seconds: float | None = Field(
        None,
        gt=0,
        description="wall-clock seconds of one whole job (start, contract check, all its "
        "trainings); default: 60 + training_seconds for each training",
    )
    memory_mb: int = Field(
        6144,
        ge=256,
        description="address-space limit of a CPU job, MB (a CUDA job "
        "is bounded by its GPU instead; Docker: the container's memory)",
    )
    cpu_seconds: int | None = Field(
        None, gt=0, description="CPU seconds of one job; default: its wall seconds x its threads"
    )
    file_mb: int = Field(
        64, gt=0, description="largest file a job may write, MB (its scratch directory holds at most 4x this)"
    )

    def to_limits(self) -> Limits:
        """The sandbox's :class:`~sandbox.base.Limits` (walls and CPU time are set per job)."""
        return Limits(memory_mb=self.memory_mb, file_mb=self.file_mb, training_seconds=self.training_seconds or 0.0)


class RunConfig(BaseModel):
    """Everything a run needs; stored with the run so it can be resumed and audited."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(
        "preference", description="built-in task (preference, classification, optimizer) or the path of a task file"
    )
    models: list[ModelConfig] = Field(
        default_factory=list, description="LLMs ([[run.models]] tables); none: the offline mutation proposer"
    )
    proposer: Literal["auto", "llm", "mutation", "random"] = Field(
        "auto", description="auto: llm when models are given, else mutation; random: unguided mutation"
    )
    budget: int = Field(24, gt=0, description="candidates proposed (unusable replies count)")
    max_cost: float | None = Field(None, gt=0, description="USD, counting calls in flight")
    workers: int = Field(2, gt=0, description="evaluations in parallel (one sandbox, and one GPU, each)")
    prefetch: int = Field(
        2, ge=0, description="LLM proposals asked for ahead of a free worker, so no worker waits for a reply"
    )
    db: str = Field("runs.db", description="the SQLite archive")
    seed: int = Field(0, description="seed of the proposer and selection (suites have their own fixed seeds)")
    sandbox: Literal["local", "docker"] = Field("local", description="local (bubblewrap) | docker")
    docker_image: str = Field("discovery-sandbox:test", description="image for sandbox = docker")
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="auto | cpu | cuda | cuda:N; stored resolved (auto becomes cpu or cuda)",
    )
    limits: SandboxLimits = Field(default_factory=SandboxLimits, description="sandbox limits per job")
    seeds: int | None = Field(None, gt=0, description="seeds per discover configuration (default: the suite's)")
    reuse: bool = Field(
        True,
        description="copy a stored result of the same code, task version, suite, configuration, seed and "
        "device kind from the archive instead of training again; false: train everything afresh",
    )
    islands: int = Field(2, gt=0, description="sub-populations that evolve apart")
    baselines: Literal["reference", "all"] = Field(
        "reference", description="baselines scored at the start: the reference only, or the whole library"
    )
    cascade_configs: list[str] | None = Field(None, description="cheap first stage (default: the task's)")
    cascade_seeds: int = Field(1, gt=0, description="seeds of the cascade stage")
    cascade_margin: float = Field(0.25, ge=0, description="promote when cascade >= best cascade - margin")
    leaders: int = Field(3, ge=0, description="top candidates that get extra seeds")
    extra_seeds: int = Field(2, ge=0, description="seeds added to each leader")
    heldout_top: int = Field(3, ge=0, description="top candidates scored on the held-out suite at the end")
    top_k: int = Field(8, gt=0, description="best candidates of the island shown in a prompt")
    diverse: int = Field(3, ge=0, description="diverse candidates (other islands, Pareto front) shown in a prompt")
    failures_shown: int = Field(5, ge=0, description="recent failures shown in a prompt, one line each")
    crossover_rate: float = Field(0.25, ge=0, le=1, description="share of offline proposals that cross two parents")
    llm_timeout: float = Field(120.0, gt=0, description="seconds one LLM call may take")
    llm_retries: int = Field(4, ge=0, description="retries of a failed LLM call (429, 5xx, timeouts), with backoff")

    @field_validator("cascade_configs")
    @classmethod
    def _non_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("must name at least one configuration")
        return value

    @property
    def uses_llm(self) -> bool:
        return self.proposer == "llm" or (self.proposer == "auto" and bool(self.models))


def parse_model(text: str, api_base: str | None = None) -> ModelConfig:
    """``name`` or ``name@weight`` from the command line."""
    name, _, weight = text.partition("@")
    try:
        return ModelConfig(name=name.strip(), weight=float(weight) if weight else 1.0, api_base=api_base)
    except (ValueError, ValidationError) as exc:
        raise ConfigError(f"invalid --model {text!r}: {_first_error(exc)}") from None


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        return f"{where}: {err['msg']}" if where else err["msg"]
    return str(exc)


def load_config(path: Path | None, overrides: dict[str, Any]) -> RunConfig:
    """Defaults < TOML file < command-line overrides (``None`` values are ignored)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        data = data.get("run", data)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(data.get(key), dict):  # e.g. limits: merge keys
            data[key] = {**data[key], **{k: v for k, v in value.items() if v is not None}}
        else:
            data[key] = value
    try:
        return RunConfig(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_first_error(exc)}") from None
