"""Run configuration: defaults, a TOML file, then command-line options, validated by pydantic."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ConfigError(ValueError):
    """An invalid configuration, with a one-line message."""


class ModelConfig(BaseModel):
    """One LLM, chosen with probability proportional to ``weight``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    weight: float = Field(1.0, gt=0)
    api_base: str | None = None
    api_key_env: str | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    max_tokens: int = Field(2048, gt=0)
    price_in: float | None = Field(None, ge=0, description="USD per 1M prompt tokens, if litellm does not know")
    price_out: float | None = Field(None, ge=0, description="USD per 1M completion tokens")


class RunConfig(BaseModel):
    """Everything a run needs; stored with the run so it can be resumed and audited."""

    model_config = ConfigDict(extra="forbid")

    task: str = "preference"
    models: list[ModelConfig] = Field(default_factory=list)
    proposer: Literal["auto", "llm", "mutation", "random"] = "auto"
    budget: int = Field(24, gt=0, description="candidates proposed (unusable replies count)")
    max_cost: float | None = Field(None, gt=0, description="USD, counting calls in flight")
    workers: int = Field(2, gt=0)
    db: str = "runs.db"
    seed: int = 0
    sandbox: Literal["local", "docker"] = "local"
    docker_image: str = "discovery-sandbox:test"
    seeds: int | None = Field(None, gt=0, description="seeds per discover configuration (default: the suite's)")
    islands: int = Field(2, gt=0)
    baselines: Literal["reference", "all"] = "reference"
    cascade_configs: list[str] | None = Field(None, description="cheap first stage (default: the task's)")
    cascade_seeds: int = Field(1, gt=0)
    cascade_margin: float = Field(0.25, ge=0, description="promote when cascade >= best cascade - margin")
    leaders: int = Field(3, ge=0, description="top candidates that get extra seeds")
    extra_seeds: int = Field(2, ge=0)
    heldout_top: int = Field(3, ge=0, description="top candidates scored on the held-out suite at the end")
    top_k: int = Field(8, gt=0)
    diverse: int = Field(3, ge=0)
    failures_shown: int = Field(5, ge=0)
    crossover_rate: float = Field(0.25, ge=0, le=1)
    llm_timeout: float = Field(120.0, gt=0)
    llm_retries: int = Field(4, ge=0)

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
        if value is not None:
            data[key] = value
    try:
        return RunConfig(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_first_error(exc)}") from None
