"""Cyclic weight transfer: site order per cycle and pass-through aggregation."""

from __future__ import annotations

import numpy as np
import torch

from medfed.pipelines.strategies import Cyclic, build_strategy

from .conftest import make_updates

SITES = ["cleveland", "hungarian", "switzerland", "va"]


def test_cyclic_order_matches_sequential_permutations():
    strategy = build_strategy({"name": "cyclic", "seed": 42})
    generator = np.random.default_rng(42)
    expected = []
    for _ in range(3):
        expected += [SITES[int(i)] for i in generator.permutation(len(SITES))]
    visited = [strategy.select_sites(round_number, SITES) for round_number in range(1, 13)]
    assert visited == [[site] for site in expected]


def test_cyclic_visits_every_site_once_per_cycle():
    strategy = Cyclic(Cyclic.config_class(seed=3))
    for cycle in range(4):
        rounds = range(1 + 4 * cycle, 5 + 4 * cycle)
        visited = [strategy.select_sites(r, SITES)[0] for r in rounds]
        assert sorted(visited) == sorted(SITES)


def test_cyclic_fixed_order_without_shuffle():
    strategy = Cyclic(Cyclic.config_class(shuffle_each_cycle=False))
    assert [strategy.select_sites(r, SITES)[0] for r in range(1, 6)] == [*SITES, SITES[0]]


def test_cyclic_returns_visited_site_weights(global_state):
    updates, arrays = make_updates(seed=51, num_examples={"b": 30})
    result = Cyclic().aggregate(global_state, updates)
    for key, value in arrays["b"].items():
        assert result[key].dtype == global_state[key].dtype
        np.testing.assert_array_equal(result[key].numpy(), value)


def test_cyclic_empty_site_passes_model_on(global_state):
    updates, _ = make_updates(seed=52, num_examples={"c": 0})
    result = Cyclic().aggregate(global_state, updates)
    for key, tensor in global_state.items():
        assert torch.equal(result[key], tensor)
