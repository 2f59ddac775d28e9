"""Run configuration: the generated docs, the complete example, limits from TOML and CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

from discovery import config_docs
from discovery.config import ConfigError, ModelConfig, RunConfig, SandboxLimits, load_config
from discovery.evaluation import Evaluator
from discovery.tasks import get_task

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_doc_is_generated_from_the_models():
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == config_docs.render(), "run: python -m discovery.config_docs > docs/configuration.md"
    for model, prefix in ((RunConfig, ""), (SandboxLimits, "limits."), (ModelConfig, "")):
        for name in model.model_fields:
            assert f"| `{prefix}{name}` |" in committed


def test_example_run_toml_names_every_key_and_loads():
    path = ROOT / "examples" / "run.toml"
    data = tomllib.loads(path.read_text())["run"]
    assert set(data) == set(RunConfig.model_fields)
    assert set(data["limits"]) == set(SandboxLimits.model_fields)
    assert set().union(*(m.keys() for m in data["models"])) == set(ModelConfig.model_fields)
    cfg = load_config(path, {})
    assert cfg.limits.training_seconds == 60.0 and cfg.models[1].api_base == "http://127.0.0.1:8000/v1"


def test_limits_from_toml_and_command_line_merge(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[run]\nbudget = 3\n[run.limits]\ntraining_seconds = 5\nmemory_mb = 2048\n")
    cfg = load_config(path, {"limits": {"training_seconds": 7.5}, "budget": None})
    assert cfg.limits.training_seconds == 7.5 and cfg.limits.memory_mb == 2048 and cfg.budget == 3
    with pytest.raises(ConfigError, match="limits.memory_mb"):
        load_config(None, {"limits": {"memory_mb": 1}})
    with pytest.raises(ConfigError, match="device"):
        load_config(None, {"device": "tpu"})


def test_limits_reach_every_job():
    task = get_task("preference")
    limits = SandboxLimits(training_seconds=5, job_seconds=None, memory_mb=2048)
    evaluator = Evaluator(task, limits=limits.to_limits())
    job = evaluator.limits_for(4)
    assert job.training_seconds == 5 and job.memory_mb == 2048
    assert job.wall_seconds == 60 + 4 * 5 and job.cpu_seconds == int(job.wall_seconds) + 60
    fixed = Evaluator(task, limits=limits.to_limits(), job_seconds=30, cpu_seconds=50).limits_for(4)
    assert fixed.wall_seconds == 30 and fixed.cpu_seconds == 50
    default = Evaluator(task).limits_for(0)
    assert default.training_seconds == task.training_seconds == 60.0 and default.wall_seconds == 60
