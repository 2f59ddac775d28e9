"""The held-out suite's environments are drawn from a secret of the archive, not only from public seeds."""

from __future__ import annotations

import pytest
import torch

from discovery.evaluation import Evaluator
from discovery.tasks import get_task
from discovery.tasks.base import env_seed
from sandbox.host.local import LocalSandbox, bubblewrap_problem

TASK = get_task("preference")
CONFIG = TASK.suite("heldout").configs[0].name


def test_a_salt_changes_every_environment_seed_and_no_salt_changes_nothing():
    suite = TASK.suite("heldout")
    salted = suite.salted("s3cret")
    for plain, secret in zip(suite.configs, salted.configs, strict=True):
        assert plain.name == secret.name and plain.params == secret.params
        assert env_seed(plain, 1000) != env_seed(secret, 1000)
        assert env_seed(secret, 1000) == env_seed(suite.salted("s3cret").config(plain.name), 1000)
    assert suite.salted("") is suite


def test_the_evaluator_salts_only_the_heldout_suite():
    evaluator = Evaluator(TASK, heldout_secret="s3cret")
    assert all(c.salt == "s3cret" for c in evaluator.suite("heldout").configs)
    assert all(c.salt == "" for c in evaluator.suite("discover").configs)


def test_the_secret_draws_other_pairs_and_the_same_secret_the_same_ones():
    heldout = TASK.suite("heldout")
    public = Evaluator(TASK).inputs_for(heldout, CONFIG, 1000)
    a = Evaluator(TASK, heldout_secret="a").inputs_for(heldout.salted("a"), CONFIG, 1000)
    again = Evaluator(TASK, heldout_secret="a").inputs_for(heldout.salted("a"), CONFIG, 1000)
    assert not torch.equal(public["chosen"], a["chosen"])
    assert torch.equal(a["chosen"], again["chosen"])


@pytest.mark.skipif(bool(bubblewrap_problem()), reason=f"no bubblewrap: {bubblewrap_problem()}")
def test_heldout_scores_depend_on_the_secret_and_repeat_under_it():
    with LocalSandbox() as box:

        def score(secret: str) -> float:
            report = Evaluator(TASK, heldout_secret=secret).evaluate(
                TASK.seed_program, box, "heldout", configs=[CONFIG], seeds=[1000]
            )
            assert report.ok, report.one_line()
            return report.fitness.mean

        first, again, other = score("a"), score("a"), score("b")
    assert first == again  # deterministic under one archive's secret
    assert first != other  # another archive's environments
