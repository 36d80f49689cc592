"""FedBN and local fine-tuning at the centre: FedAvg over what the sites send, plus their hints."""

from __future__ import annotations

import numpy as np
import torch

from medfed.pipelines.strategies import FedBN, LocalFineTuning, SiteUpdate, build_strategy

from .conftest import NUM_EXAMPLES, make_updates, numpy_weighted_mean


def test_fedbn_keeps_global_normalisation_tensors(global_state):
    updates, arrays = make_updates(seed=61)
    # Sites leave their normalisation layers out of the payload.
    shared_only = [
        SiteUpdate(update.site_id, update.num_examples, {k: v for k, v in update.tensors.items() if not k.startswith("norm.")})
        for update in updates
    ]
    result = build_strategy({"name": "fedbn"}).aggregate(global_state, shared_only)
    assert torch.equal(result["norm.num_batches_tracked"], global_state["norm.num_batches_tracked"])
    expected = numpy_weighted_mean(arrays, NUM_EXAMPLES, "layer.weight")
    np.testing.assert_allclose(result["layer.weight"].numpy(), expected, rtol=1e-6, atol=1e-6)


def test_fedbn_hints_name_local_layers():
    hints = FedBN(FedBN.config_class(extra_local_keys=["head.*"])).site_hints()
    assert hints.local_normalisation
    assert hints.local_key_patterns == ("head.*",)
    assert hints.keeps_local_layers


def test_fine_tuning_hints_and_fedavg_aggregation(global_state):
    strategy = build_strategy({"name": "fine_tuning", "fine_tune_steps": 7, "fine_tune_learning_rate": 0.01})
    assert isinstance(strategy, LocalFineTuning)
    hints = strategy.site_hints()
    assert hints.fine_tune_steps == 7
    assert hints.fine_tune_learning_rate == 0.01
    updates, arrays = make_updates(seed=62)
    result = strategy.aggregate(global_state, updates)
    expected = numpy_weighted_mean(arrays, NUM_EXAMPLES, "layer.bias")
    np.testing.assert_allclose(result["layer.bias"].numpy(), expected, rtol=1e-6, atol=1e-6)
