"""Shared site updates for the strategy tests: unequal num_examples, an integer buffer, an empty site."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfed.pipelines.strategies import SiteUpdate

# Site "c" has no examples: it must contribute nothing and never cause a division by zero.
NUM_EXAMPLES = {"a": 10, "b": 30, "c": 0, "d": 5}


def make_state(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "layer.weight": rng.normal(size=(2, 3)).astype(np.float32),
        "layer.bias": rng.normal(size=(3,)).astype(np.float32),
        "norm.num_batches_tracked": np.array(rng.integers(0, 100), dtype=np.int64),
    }


def to_torch(state: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.array(value)) for name, value in state.items()}


def make_updates(seed: int, num_examples: dict[str, int] = NUM_EXAMPLES) -> tuple[list[SiteUpdate], dict[str, dict[str, np.ndarray]]]:
    """Return torch site updates and the same values as numpy arrays, keyed by site."""
    rng = np.random.default_rng(seed)
    arrays = {site: make_state(rng) for site in num_examples}
    updates = [
        SiteUpdate(site_id=site, num_examples=count, tensors=to_torch(arrays[site]))
        for site, count in num_examples.items()
    ]
    return updates, arrays


def numpy_weighted_mean(arrays: dict[str, dict[str, np.ndarray]], num_examples: dict[str, int], name: str) -> np.ndarray:
    weights = np.array([num_examples[site] for site in arrays], dtype=np.float64)
    values = np.stack([arrays[site][name].astype(np.float64) for site in arrays])
    return np.tensordot(weights / weights.sum(), values, axes=1)


@pytest.fixture
def global_state() -> dict[str, torch.Tensor]:
    return to_torch(make_state(np.random.default_rng(1234)))
