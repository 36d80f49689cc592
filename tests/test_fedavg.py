"""FedAvg against a numpy reference, with integer buffers and empty sites."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfed.pipelines.strategies import AggregationError, SiteUpdate, build_strategy
from medfed.pipelines.strategies.fedavg import FedAvg


def _update(site: str, n: int, weight: np.ndarray, steps: int) -> SiteUpdate:
    return SiteUpdate(
        site_id=site,
        num_examples=n,
        tensors={
            "weight": torch.from_numpy(weight.astype(np.float32)),
            "num_batches_tracked": torch.tensor(steps, dtype=torch.int64),
        },
    )


def _global() -> dict[str, torch.Tensor]:
    return {"weight": torch.zeros(2, 3), "num_batches_tracked": torch.tensor(0, dtype=torch.int64)}


def test_fedavg_matches_numpy_weighted_average() -> None:
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(2, 3)) for _ in range(3)]
    counts = [10, 250, 37]
    updates = [_update(f"s{i}", n, w, 5) for i, (n, w) in enumerate(zip(counts, weights, strict=True))]
    result = FedAvg().aggregate(_global(), updates)
    expected = np.average(np.stack(weights), axis=0, weights=counts)
    np.testing.assert_allclose(result["weight"].numpy(), expected, rtol=1e-6, atol=1e-6)
    assert result["weight"].dtype == torch.float32


def test_fedavg_keeps_integer_buffer_dtype() -> None:
    updates = [_update("a", 1, np.zeros((2, 3)), 10), _update("b", 3, np.ones((2, 3)), 21)]
    result = FedAvg().aggregate(_global(), updates)
    assert result["num_batches_tracked"].dtype == torch.int64
    assert int(result["num_batches_tracked"]) == round((1 * 10 + 3 * 21) / 4)


def test_fedavg_site_with_zero_examples_weighs_nothing() -> None:
    updates = [_update("a", 4, np.ones((2, 3)), 1), _update("empty", 0, np.full((2, 3), 1e6), 1)]
    result = FedAvg().aggregate(_global(), updates)
    np.testing.assert_array_equal(result["weight"].numpy(), np.ones((2, 3), dtype=np.float32))


def test_fedavg_all_sites_empty_raises() -> None:
    with pytest.raises(AggregationError, match="no site contributed"):
        FedAvg().aggregate(_global(), [_update("a", 0, np.ones((2, 3)), 1)])


def test_fedavg_reuses_buffers_across_rounds() -> None:
    strategy = FedAvg()
    first = strategy.aggregate(_global(), [_update("a", 1, np.ones((2, 3)), 1)])
    second = strategy.aggregate(_global(), [_update("a", 1, np.full((2, 3), 3.0), 1)])
    assert float(first["weight"][0, 0]) == 1.0
    assert float(second["weight"][0, 0]) == 3.0


def test_unknown_strategy_name_lists_choices() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'fedsomething'.*fedavg"):
        build_strategy({"name": "fedsomething"})
