"""The trusted data side: bundled datasets only, stratified deterministic splits, label noise
and imbalance as specified, and nothing about the test split in what the sandbox receives."""

import socket

import pytest
import torch

from discovery.tasks import get_task
from discovery.tasks.classification import data
from discovery.tasks.classification.env import EnvParams, build_inputs, split_for


def test_datasets_load_from_the_package_without_network(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("a dataset tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(tmp_path))
    for name in data.LOADERS:
        x, y = data.load.__wrapped__(name)
        assert x.shape[0] == y.shape[0] > 100 and x.dtype == torch.float64
    assert not any(tmp_path.iterdir())  # nothing was fetched into the data home


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        data.load("mnist")


def test_split_is_stratified_deterministic_and_standardised_with_train_statistics():
    a = data.make_split.__wrapped__("digits", "none", 0.0, 1.0, 0.3, 7)
    b = data.make_split.__wrapped__("digits", "none", 0.0, 1.0, 0.3, 7)
    c = data.make_split.__wrapped__("digits", "none", 0.0, 1.0, 0.3, 8)
    assert torch.equal(a.train_features, b.train_features) and torch.equal(a.test_labels, b.test_labels)
    assert not torch.equal(a.test_labels, c.test_labels) or not torch.equal(a.test_features, c.test_features)
    assert a.train_features.shape[0] + a.test_features.shape[0] == 1797
    share = torch.bincount(a.test_labels, minlength=10).float() / torch.bincount(a.clean_train_labels).float()
    assert share.min() > 0.38 and share.max() < 0.48  # ~0.3 / 0.7 in every class
    used = a.train_features.std(0) > 0
    assert a.train_features[:, used].mean(0).abs().max() < 1e-4
    assert (a.train_features[:, used].std(0) - 1).abs().max() < 1e-3


@pytest.mark.parametrize("rate", [0.2, 0.4])
def test_symmetric_noise_flips_the_given_share_to_other_classes(rate):
    s = data.make_split.__wrapped__("digits", "symmetric", rate, 1.0, 0.3, 0)
    flipped = s.train_labels != s.clean_train_labels
    assert abs(flipped.float().mean().item() - rate) < 0.05
    # flips land on every other class, not on a favourite one
    assert len(torch.unique(s.train_labels[flipped & (s.clean_train_labels == 3)])) >= 7


def test_asymmetric_noise_flips_only_to_the_similar_class():
    s = data.make_split.__wrapped__("digits", "asymmetric", 0.4, 1.0, 0.3, 0)
    flipped = s.train_labels != s.clean_train_labels
    pairs = set(zip(s.clean_train_labels[flipped].tolist(), s.train_labels[flipped].tolist(), strict=True))
    assert pairs == set(data.ASYMMETRIC_MAPS["digits"].items())
    for source in data.ASYMMETRIC_MAPS["digits"]:
        share = flipped[s.clean_train_labels == source].float().mean().item()
        assert 0.25 < share < 0.55


def test_imbalance_makes_a_long_tail_in_training_only():
    s = data.make_split.__wrapped__("digits", "none", 0.0, 10.0, 0.3, 0)
    counts = torch.bincount(s.train_labels, minlength=10)
    assert counts[0] >= 120 and 10 <= counts[9] <= 14 and (counts[:-1] >= counts[1:]).all()
    assert torch.bincount(s.test_labels).min() >= 50  # the clean test split stays as shipped


def test_inputs_for_the_sandbox_hold_no_test_data_or_clean_labels():
    task = get_task("classification")
    cfg = task.suite("discover").config("digits_sym40")
    inputs = task.prepare(cfg, 0)
    assert set(inputs) == {"features", "labels", "num_classes", "init_seed", "order_seed"}
    assert all(isinstance(v, torch.Tensor) for v in inputs.values())
    p = EnvParams.from_mapping(cfg.params)
    from discovery.tasks.classification.task import env_seed

    split = split_for(p, env_seed(cfg, 0))
    assert torch.equal(inputs["labels"], split.train_labels)
    assert not torch.equal(inputs["labels"], split.clean_train_labels)
    assert inputs["features"].shape[0] == split.train_features.shape[0] < 1797
    assert build_inputs(p, env_seed(cfg, 0))["labels"].equal(inputs["labels"])


def test_suites_keep_datasets_apart():
    task = get_task("classification")
    discover = {c.params["dataset"] for c in task.suite("discover").configs}
    heldout = {c.params["dataset"] for c in task.suite("heldout").configs}
    assert discover.isdisjoint(heldout)
    assert set(task.cascade_configs) <= {c.name for c in task.suite("discover").configs}
    assert task.reference_baseline in task.baselines
