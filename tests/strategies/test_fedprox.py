"""FedProx: FedAvg at the centre and the proximal weight sent to the sites."""

from __future__ import annotations

import numpy as np

from medfed.pipelines.strategies import FedProx, build_strategy

from .conftest import NUM_EXAMPLES, make_updates, numpy_weighted_mean


def test_fedprox_aggregates_like_fedavg(global_state):
    updates, arrays = make_updates(seed=7)
    result = FedProx().aggregate(global_state, updates)
    expected = numpy_weighted_mean(arrays, NUM_EXAMPLES, "layer.weight")
    np.testing.assert_allclose(result["layer.weight"].numpy(), expected, rtol=1e-6, atol=1e-6)
    assert result["norm.num_batches_tracked"].dtype == global_state["norm.num_batches_tracked"].dtype


def test_fedprox_hints_carry_mu():
    strategy = build_strategy({"name": "fedprox", "proximal_mu": 0.25})
    hints = strategy.site_hints()
    assert hints.proximal_mu == 0.25
    assert hints.site_options()["proximal_mu"] == 0.25
    assert not hints.control_variates
