"""Run configuration: the generated docs, the complete example, limits from TOML and CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from discovery import config_docs
from discovery.config import ConfigError, ModelConfig, RunConfig, SandboxLimits, load_config, parse_model, tomllib
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


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file_or_overrides():
    cfg = load_config(None, {})
    assert cfg == RunConfig()
    assert (cfg.task, cfg.budget, cfg.workers, cfg.proposer, cfg.sandbox, cfg.device) == (
        "preference",
        24,
        2,
        "auto",
        "local",
        "auto",
    )
    assert cfg.limits == SandboxLimits() and cfg.limits.memory_mb == 6144 and cfg.limits.training_seconds is None
    assert cfg.models == [] and not cfg.uses_llm


def test_a_file_sets_only_what_it_names(tmp_path):
    cfg = load_config(_write(tmp_path, "[run]\nbudget = 5\nproposer = 'random'\n"), {})
    assert cfg.budget == 5 and cfg.proposer == "random"
    assert cfg.workers == RunConfig().workers and cfg.limits == SandboxLimits()


def test_a_file_without_a_run_table_is_read_at_the_top_level(tmp_path):
    assert load_config(_write(tmp_path, "budget = 7\nseed = 3\n"), {}).budget == 7


def test_models_from_a_file(tmp_path):
    text = "[[run.models]]\nname = 'openai/a'\n[[run.models]]\nname = 'openai/b'\nweight = 3\n"
    cfg = load_config(_write(tmp_path, text), {})
    assert [(m.name, m.weight) for m in cfg.models] == [("openai/a", 1.0), ("openai/b", 3.0)] and cfg.uses_llm


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[run]\nbudgt = 3\n", "budgt"),
        ("[run.limits]\nmemroy_mb = 4096\n", "limits.memroy_mb"),
        ("[[run.models]]\nname = 'a'\nwieght = 2\n", "models.0.wieght"),
        ("[other]\nbudget = 3\n", "other"),
    ],
)
def test_unknown_keys_are_rejected_naming_the_key(tmp_path, text, where):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text), {})
    assert str(info.value) == f"invalid configuration: {where}: Extra inputs are not permitted"


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("[run]\nbudget = 'many'\n", "budget", "valid integer"),
        ("[run]\nworkers = 2.5\n", "workers", "fractional part"),
        ("[run]\nbudget = 0\n", "budget", "greater than 0"),
        ("[run]\ncrossover_rate = 1.5\n", "crossover_rate", "less than or equal to 1"),
        ("[run]\nproposer = 'genetic'\n", "proposer", "'auto', 'llm', 'mutation' or 'random'"),
        ("[run]\ncascade_configs = []\n", "cascade_configs", "at least one configuration"),
        ("[run.limits]\nmemory_mb = 100\n", "limits.memory_mb", "greater than or equal to 256"),
        ("[[run.models]]\nname = 'a'\nweight = 0\n", "models.0.weight", "greater than 0"),
        ("[[run.models]]\nweight = 1\n", "models.0.name", "Field required"),
    ],
)
def test_wrong_types_and_values_are_rejected_with_one_line(tmp_path, text, where, message):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text), {})
    text = str(info.value)
    assert text.startswith(f"invalid configuration: {where}: ") and message in text and "\n" not in text


def test_unreadable_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", {})
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(_write(tmp_path, "[run\nbudget = 3\n"), {})
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe budget")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(binary, {})


def test_command_line_overrides_beat_the_file_and_none_keeps_it(tmp_path):
    path = _write(tmp_path, "[run]\nbudget = 5\nworkers = 4\nseed = 9\n[[run.models]]\nname = 'openai/a'\n")
    cfg = load_config(path, {"budget": 11, "workers": None, "models": [{"name": "openai/b", "weight": 2.0}]})
    assert cfg.budget == 11  # the command line wins
    assert cfg.workers == 4 and cfg.seed == 9  # None: not given on the command line
    assert [m.name for m in cfg.models] == ["openai/b"]  # a list is replaced, not merged


def test_command_line_overrides_are_validated_too():
    with pytest.raises(ConfigError, match="invalid configuration: workers: Input should be greater than 0"):
        load_config(None, {"workers": 0})
    with pytest.raises(ConfigError, match="invalid configuration: colour: Extra inputs"):
        load_config(None, {"colour": "blue"})


def test_limits_from_the_command_line_alone():
    assert load_config(None, {"limits": {"job_seconds": 30.0}}).limits == SandboxLimits(job_seconds=30.0)


def test_parse_model_from_the_command_line():
    assert parse_model("openai/gpt-4o") == ModelConfig(name="openai/gpt-4o")
    model = parse_model(" openai/x @2.5", api_base="http://127.0.0.1:8000/v1")
    assert (model.name, model.weight, model.api_base) == ("openai/x", 2.5, "http://127.0.0.1:8000/v1")
    with pytest.raises(ConfigError, match=r"invalid --model 'a@x'"):
        parse_model("a@x")
    with pytest.raises(ConfigError, match=r"invalid --model 'a@-1': weight: Input should be greater than 0"):
        parse_model("a@-1")
