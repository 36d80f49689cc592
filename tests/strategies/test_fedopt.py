"""FedAdam, FedYogi and FedAdagrad against Reddi et al.'s update rules written out in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfed.pipelines.strategies import FedAdagrad, FedAdam, FedYogi, build_strategy

from .conftest import NUM_EXAMPLES, make_updates, numpy_weighted_mean

FLOAT_KEYS = ("layer.weight", "layer.bias")
SETTINGS = {"server_learning_rate": 0.05, "beta1": 0.8, "beta2": 0.9, "tau": 1e-3}


def adam_rule(v, d, beta2):
    return beta2 * v + (1 - beta2) * d * d


def yogi_rule(v, d, beta2):
    return v - (1 - beta2) * d * d * np.sign(v - d * d)


def adagrad_rule(v, d, beta2):
    return v + d * d


@pytest.mark.parametrize(
    ("name", "cls", "rule"),
    [("fedadam", FedAdam, adam_rule), ("fedyogi", FedYogi, yogi_rule), ("fedadagrad", FedAdagrad, adagrad_rule)],
)
def test_fedopt_two_rounds_match_numpy(global_state, name, cls, rule):
    strategy = build_strategy({"name": name, **SETTINGS})
    assert isinstance(strategy, cls)
    state = global_state
    x = {key: global_state[key].numpy().astype(np.float64) for key in FLOAT_KEYS}
    m = {key: np.zeros_like(x[key]) for key in FLOAT_KEYS}
    v = {key: np.zeros_like(x[key]) for key in FLOAT_KEYS}
    for round_seed in (11, 12):
        updates, arrays = make_updates(seed=round_seed)
        state = strategy.aggregate(state, updates)
        for key in FLOAT_KEYS:
            d = numpy_weighted_mean(arrays, NUM_EXAMPLES, key) - x[key]
            m[key] = SETTINGS["beta1"] * m[key] + (1 - SETTINGS["beta1"]) * d
            v[key] = rule(v[key], d, SETTINGS["beta2"])
            x[key] = x[key] + SETTINGS["server_learning_rate"] * m[key] / (np.sqrt(v[key]) + SETTINGS["tau"])
            np.testing.assert_allclose(state[key].numpy(), x[key], rtol=1e-5, atol=1e-6)
        counter = state["norm.num_batches_tracked"]
        assert counter.dtype == torch.int64
        assert int(counter) == int(np.round(numpy_weighted_mean(arrays, NUM_EXAMPLES, "norm.num_batches_tracked")))


def test_fedopt_server_state_round_trip(global_state):
    strategy = FedYogi()
    strategy.aggregate(global_state, make_updates(seed=21)[0])
    restored = FedYogi()
    restored.load_server_state(strategy.server_state())
    updates, _ = make_updates(seed=22)
    first = strategy.aggregate(global_state, updates)
    second = restored.aggregate(global_state, updates)
    for key in FLOAT_KEYS:
        assert torch.equal(first[key], second[key])


def test_fedopt_rejects_unknown_option():
    with pytest.raises(ValueError, match="momentum"):
        build_strategy({"name": "fedadam", "momentum": 0.9})
