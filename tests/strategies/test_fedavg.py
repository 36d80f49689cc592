"""FedAvg and the shared weighted sum, against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfed.pipelines.strategies import AggregationError, FedAvg, SiteUpdate
from medfed.pipelines.strategies.fedavg import WeightedSum

from .conftest import NUM_EXAMPLES, make_updates, numpy_weighted_mean


def test_fedavg_matches_numpy_weighted_mean(global_state):
    updates, arrays = make_updates(seed=0)
    result = FedAvg().aggregate(global_state, updates)
    for name in ("layer.weight", "layer.bias"):
        expected = numpy_weighted_mean(arrays, NUM_EXAMPLES, name)
        np.testing.assert_allclose(result[name].numpy(), expected, rtol=1e-6, atol=1e-6)
    counter = result["norm.num_batches_tracked"]
    assert counter.dtype == torch.int64
    assert int(counter) == int(np.round(numpy_weighted_mean(arrays, NUM_EXAMPLES, "norm.num_batches_tracked")))


def test_fedavg_all_sites_empty_raises(global_state):
    updates, _ = make_updates(seed=0, num_examples={"a": 0, "b": 0})
    with pytest.raises(AggregationError, match="no site contributed"):
        FedAvg().aggregate(global_state, updates)


def test_fedavg_negative_count_raises(global_state):
    updates, _ = make_updates(seed=0, num_examples={"a": -1})
    with pytest.raises(AggregationError, match="num_examples=-1"):
        FedAvg().aggregate(global_state, updates)


def test_weighted_sum_divides_by_senders_weight():
    sums = WeightedSum()
    sums.add({"shared": torch.tensor([1.0]), "partial": torch.tensor([4.0])}, weight=1.0)
    sums.add({"shared": torch.tensor([3.0])}, weight=3.0)
    mean = sums.mean()
    assert float(mean["shared"]) == pytest.approx(2.5)
    # Only the first site sent "partial", so its average is that site's value.
    assert float(mean["partial"]) == pytest.approx(4.0)


def test_weighted_sum_reset_forgets_keys():
    sums = WeightedSum()
    sums.add({"old": torch.tensor([1.0])}, weight=1.0)
    sums.reset()
    sums.add({"new": torch.tensor([2.0])}, weight=1.0)
    assert set(sums.mean()) == {"new"}


def test_fedavg_keeps_unsent_tensor(global_state):
    update = SiteUpdate(site_id="a", num_examples=3, tensors={"layer.bias": torch.zeros(3)})
    result = FedAvg().aggregate(global_state, [update])
    assert torch.equal(result["layer.weight"], global_state["layer.weight"])
    assert torch.equal(result["layer.bias"], torch.zeros(3))
