"""FedAvgM against its update rule written out in numpy for two rounds."""

from __future__ import annotations

import numpy as np
import torch

from medfed.pipelines.strategies import FedAvgM, build_strategy

from .conftest import NUM_EXAMPLES, make_updates, numpy_weighted_mean

FLOAT_KEYS = ("layer.weight", "layer.bias")


def test_fedavgm_two_rounds_match_numpy(global_state):
    strategy = build_strategy({"name": "fedavgm", "server_learning_rate": 0.7, "server_momentum": 0.5})
    assert isinstance(strategy, FedAvgM)
    state = global_state
    expected = {name: global_state[name].numpy().astype(np.float64) for name in FLOAT_KEYS}
    velocity = {name: np.zeros_like(expected[name]) for name in FLOAT_KEYS}
    for round_seed in (1, 2):
        updates, arrays = make_updates(seed=round_seed)
        state = strategy.aggregate(state, updates)
        for name in FLOAT_KEYS:
            delta = numpy_weighted_mean(arrays, NUM_EXAMPLES, name) - expected[name]
            velocity[name] = 0.5 * velocity[name] + delta
            expected[name] = expected[name] + 0.7 * velocity[name]
            np.testing.assert_allclose(state[name].numpy(), expected[name], rtol=1e-5, atol=1e-5)
        counter = state["norm.num_batches_tracked"]
        assert counter.dtype == torch.int64
        assert int(counter) == int(np.round(numpy_weighted_mean(arrays, NUM_EXAMPLES, "norm.num_batches_tracked")))


def test_fedavgm_without_momentum_is_fedavg(global_state):
    strategy = FedAvgM(FedAvgM.config_class(server_momentum=0.0, server_learning_rate=1.0))
    updates, arrays = make_updates(seed=3)
    result = strategy.aggregate(global_state, updates)
    expected = numpy_weighted_mean(arrays, NUM_EXAMPLES, "layer.weight")
    np.testing.assert_allclose(result["layer.weight"].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_fedavgm_server_state_round_trip(global_state):
    strategy = FedAvgM()
    strategy.aggregate(global_state, make_updates(seed=4)[0])
    restored = FedAvgM()
    restored.load_server_state(strategy.server_state())
    updates, _ = make_updates(seed=5)
    first = strategy.aggregate(global_state, updates)
    second = restored.aggregate(global_state, updates)
    for name in FLOAT_KEYS:
        assert torch.equal(first[name], second[name])
