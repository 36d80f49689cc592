"""SCAFFOLD's centre: model and control-variate updates written out in numpy for two rounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfed.pipelines.strategies import AggregationError, Scaffold, SiteUpdate, build_strategy

from .conftest import NUM_EXAMPLES, make_updates, numpy_weighted_mean

FLOAT_KEYS = ("layer.weight", "layer.bias")


def with_control_deltas(updates: list[SiteUpdate], seed: int) -> tuple[list[SiteUpdate], dict[str, dict[str, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    deltas = {
        update.site_id: {key: rng.normal(size=update.tensors[key].shape).astype(np.float32) for key in FLOAT_KEYS}
        for update in updates
    }
    rebuilt = [
        SiteUpdate(
            site_id=update.site_id,
            num_examples=update.num_examples,
            tensors=update.tensors,
            control_variate_delta={key: torch.from_numpy(value) for key, value in deltas[update.site_id].items()},
        )
        for update in updates
    ]
    return rebuilt, deltas


@pytest.mark.parametrize(("total_sites", "share"), [(None, 1.0), (6, 3 / 6)])
def test_scaffold_two_rounds_match_numpy(global_state, total_sites, share):
    strategy = build_strategy({"name": "scaffold", "server_learning_rate": 0.5, "total_sites": total_sites})
    assert isinstance(strategy, Scaffold)
    assert strategy.site_hints().control_variates
    assert strategy.server_payloads() == {"control_variate": {}}

    state = global_state
    x = {key: global_state[key].numpy().astype(np.float64) for key in FLOAT_KEYS}
    c = {key: np.zeros_like(x[key]) for key in FLOAT_KEYS}
    for round_seed in (31, 32):
        updates, arrays = make_updates(seed=round_seed)
        updates, deltas = with_control_deltas(updates, seed=round_seed + 100)
        state = strategy.aggregate(state, updates)
        for key in FLOAT_KEYS:
            x[key] = x[key] + 0.5 * (numpy_weighted_mean(arrays, NUM_EXAMPLES, key) - x[key])
            c[key] = c[key] + share * numpy_weighted_mean(deltas, NUM_EXAMPLES, key)
            np.testing.assert_allclose(state[key].numpy(), x[key], rtol=1e-5, atol=1e-6)
            sent = strategy.server_payloads()["control_variate"][key]
            np.testing.assert_allclose(sent.numpy(), c[key], rtol=1e-5, atol=1e-6)
        counter = state["norm.num_batches_tracked"]
        assert counter.dtype == torch.int64
        assert int(counter) == int(np.round(numpy_weighted_mean(arrays, NUM_EXAMPLES, "norm.num_batches_tracked")))


def test_scaffold_missing_delta_raises(global_state):
    updates, _ = make_updates(seed=33)
    with pytest.raises(AggregationError, match="control-variate"):
        Scaffold().aggregate(global_state, updates)


def test_scaffold_empty_site_needs_no_delta(global_state):
    updates, _ = make_updates(seed=34, num_examples={"a": 4, "c": 0})
    with_delta, _ = with_control_deltas(updates[:1], seed=35)
    result = Scaffold().aggregate(global_state, [with_delta[0], updates[1]])
    np.testing.assert_allclose(result["layer.weight"].numpy(), updates[0].tensors["layer.weight"].numpy(), rtol=1e-6)


def test_scaffold_server_state_round_trip(global_state):
    strategy = Scaffold()
    updates, _ = with_control_deltas(make_updates(seed=36)[0], seed=37)
    strategy.aggregate(global_state, updates)
    restored = Scaffold()
    restored.load_server_state(strategy.server_state())
    for key, tensor in strategy.server_payloads()["control_variate"].items():
        assert torch.equal(restored.server_payloads()["control_variate"][key], tensor)
