"""The preference suite separates good losses from bad ones, through the real sandbox."""

import pytest

from discovery.evaluation import Evaluator
from discovery.tasks import get_task
from sandbox.host.local import LocalSandbox


@pytest.fixture(scope="module")
def scored():
    task = get_task("preference")
    evaluator = Evaluator(task)
    programs = {"dpo": task.baselines["dpo"], **task.controls}
    with LocalSandbox(threads=2) as box:
        return {name: evaluator.evaluate(src, box, "discover") for name, src in programs.items()}


def test_every_program_is_scored(scored):
    for name, report in scored.items():
        assert report.ok, f"{name}: {report.one_line()}"
        assert report.fitness.n == 3
        assert len(report.configs) == 5


def test_dpo_clearly_beats_zero_loss(scored):
    dpo, zero = scored["dpo"].fitness, scored["zero"].fitness
    assert abs(zero.mean) < 0.02  # the policy never leaves the reference
    assert dpo.low > zero.high, (dpo, zero)


def test_dpo_clearly_beats_sign_flipped_dpo(scored):
    dpo, anti = scored["dpo"].fitness, scored["anti_dpo"].fitness
    assert dpo.low > anti.high, (dpo, anti)
    assert anti.mean < 0


def test_metrics_tell_the_same_story(scored):
    by_config = {c.name: c for c in scored["dpo"].configs}
    clean = by_config["clean"].metrics
    assert clean["win_rate"].mean > 0.6
    assert clean["pref_accuracy"].mean > 0.6
    assert clean["kl"].mean > 0
    anti = {c.name: c for c in scored["anti_dpo"].configs}["clean"].metrics
    assert anti["win_rate"].mean < 0.4


def test_contract_check_runs_on_baselines_in_process():
    task = get_task("preference")
    for source in task.baselines.values():
        namespace: dict = {}
        exec(source, namespace)
        task.contract_check(namespace["loss"])
