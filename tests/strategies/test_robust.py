"""Median, trimmed mean and Krum against numpy and scipy on small arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from medfed.pipelines.strategies import AggregationError, Krum, Median, SiteUpdate, TrimmedMean, build_strategy

from .conftest import make_updates

KEYS = ("layer.weight", "layer.bias", "norm.num_batches_tracked")


def stacked(arrays, sites, key):
    return np.stack([arrays[site][key].astype(np.float64) for site in sites])


@pytest.mark.parametrize(
    "num_examples",
    [{"a": 10, "b": 30, "c": 0, "d": 5}, {"a": 10, "b": 30, "c": 0, "d": 5, "e": 1}],
    ids=["odd", "even"],
)
def test_median_matches_numpy(global_state, num_examples):
    updates, arrays = make_updates(seed=41, num_examples=num_examples)
    result = build_strategy({"name": "median"}).aggregate(global_state, updates)
    contributing = [site for site, count in num_examples.items() if count > 0]
    for key in KEYS:
        expected = np.median(stacked(arrays, contributing, key), axis=0)
        if key == "norm.num_batches_tracked":
            assert result[key].dtype == torch.int64
            expected = np.round(expected)
        np.testing.assert_allclose(result[key].numpy(), expected, rtol=1e-6, atol=1e-6)


def test_median_all_empty_raises(global_state):
    updates, _ = make_updates(seed=42, num_examples={"a": 0, "b": 0})
    with pytest.raises(AggregationError, match="median"):
        Median().aggregate(global_state, updates)


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.4])
def test_trimmed_mean_matches_scipy(global_state, fraction):
    num_examples = {"a": 3, "b": 30, "c": 0, "d": 5, "e": 8, "f": 1}
    updates, arrays = make_updates(seed=43, num_examples=num_examples)
    result = build_strategy({"name": "trimmed_mean", "trim_fraction": fraction}).aggregate(global_state, updates)
    contributing = [site for site, count in num_examples.items() if count > 0]
    for key in KEYS:
        expected = stats.trim_mean(stacked(arrays, contributing, key), fraction, axis=0)
        if key == "norm.num_batches_tracked":
            assert result[key].dtype == torch.int64
            expected = np.round(expected)
        np.testing.assert_allclose(result[key].numpy(), expected, rtol=1e-6, atol=1e-6)


def test_trimmed_mean_rejects_half():
    with pytest.raises(ValueError, match="trim_fraction"):
        TrimmedMean.config_class(trim_fraction=0.5)


def numpy_krum(arrays, num_examples, faulty, selected):
    """Brute-force Krum: score every site, keep the lowest, average them weighted by num_examples."""
    sites = sorted(site for site, count in num_examples.items() if count > 0)
    vectors = {
        site: np.concatenate([arrays[site][key].astype(np.float64).ravel() for key in ("layer.bias", "layer.weight")])
        for site in sites
    }
    scores = {}
    for site in sites:
        distances = sorted(np.sum((vectors[site] - vectors[other]) ** 2) for other in sites if other != site)
        scores[site] = sum(distances[: len(sites) - faulty - 2])
    kept = sorted(sites, key=lambda site: scores[site])[:selected]
    weights = np.array([num_examples[site] for site in kept], dtype=np.float64)
    weights /= weights.sum()
    return kept, {key: np.tensordot(weights, stacked(arrays, kept, key), axes=1) for key in KEYS}


@pytest.mark.parametrize(("faulty", "selected"), [(1, 1), (1, 3), (0, 2)])
def test_krum_matches_numpy(global_state, faulty, selected):
    num_examples = {"a": 10, "b": 30, "c": 0, "d": 5, "e": 8, "f": 2}
    updates, arrays = make_updates(seed=44, num_examples=num_examples)
    # Site "f" sends a far-off update, which Krum must leave out.
    for key in ("layer.weight", "layer.bias"):
        arrays["f"][key] = arrays["f"][key] + 100.0
        next(u for u in updates if u.site_id == "f").tensors[key].add_(100.0)
    strategy = build_strategy({"name": "krum", "num_byzantine": faulty, "num_selected": selected})
    result = strategy.aggregate(global_state, updates)
    kept, expected = numpy_krum(arrays, num_examples, faulty, selected)
    assert "f" not in kept
    for key in KEYS:
        if key == "norm.num_batches_tracked":
            assert result[key].dtype == torch.int64
            expected[key] = np.round(expected[key])
        np.testing.assert_allclose(result[key].numpy(), expected[key], rtol=1e-5, atol=1e-5)


def test_krum_too_few_sites_raises(global_state):
    updates, _ = make_updates(seed=45, num_examples={"a": 1, "b": 2, "c": 0, "d": 3})
    with pytest.raises(AggregationError, match="at least 2 \\* 1 \\+ 3 = 5"):
        Krum(Krum.config_class(num_byzantine=1)).aggregate(global_state, updates)


def test_krum_without_shared_floats_raises():
    counter = {"norm.num_batches_tracked": torch.tensor(3)}
    updates = [SiteUpdate(site, 1, dict(counter)) for site in "abc"]
    with pytest.raises(AggregationError, match="no floating tensor"):
        Krum().aggregate(counter, updates)
