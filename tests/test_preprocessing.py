"""Federated statistics equal pooled ones, and small counts never leave a site."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medfed.sites.preprocessing import TabularFeatures, merge_statistics, site_statistics, transform

FEATURES = TabularFeatures(numeric=["age", "chol"], binary=["sex"], categorical={"cp": [1, 2, 3, 4]})


def _frame(seed: int, rows: int, chol_missing: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "age": rng.integers(30, 80, rows).astype(float),
        "chol": rng.normal(240, 50, rows),
        "sex": rng.integers(0, 2, rows).astype(float),
        "cp": rng.integers(1, 5, rows).astype(float),
    })
    frame.loc[rng.random(rows) < chol_missing, "chol"] = np.nan
    return frame


def test_merged_statistics_equal_pooled_statistics() -> None:
    frames = [_frame(1, 120, 0.1), _frame(2, 60, 0.5), _frame(3, 200, 0.0)]
    stats = [site_statistics(f, FEATURES, site_id=f"s{i}", min_count=5) for i, f in enumerate(frames)]
    plan = merge_statistics(stats, FEATURES)
    pooled = pd.concat(frames)
    for column in ("age", "chol", "sex"):
        assert plan.means[column] == pytest.approx(pooled[column].mean())
        assert plan.stds[column] == pytest.approx(pooled[column].std(ddof=0))
    assert plan.num_rows == 380


def test_column_below_min_count_is_withheld() -> None:
    frame = _frame(4, 50, 0.0)
    frame.loc[3:, "chol"] = np.nan  # three values left
    stats = site_statistics(frame, FEATURES, site_id="small", min_count=10)
    assert stats.withheld == ["chol"]
    assert stats.columns["chol"].count == 0
    assert stats.columns["chol"].total == 0.0
    assert stats.columns["age"].count == 50


def test_column_with_no_values_anywhere_encodes_as_zero() -> None:
    frame = _frame(5, 40, 1.0)
    plan = merge_statistics([site_statistics(frame, FEATURES, site_id="s", min_count=1)], FEATURES)
    assert plan.empty_columns == ["chol"]
    encoded = transform(frame, plan)
    assert encoded.shape == (40, FEATURES.num_inputs)
    assert float(encoded[:, 1].abs().sum()) == 0.0


def test_transform_zscores_imputes_and_one_hot_encodes() -> None:
    frame = _frame(6, 30, 0.2)
    plan = merge_statistics([site_statistics(frame, FEATURES, site_id="s", min_count=1)], FEATURES)
    encoded = transform(frame, plan).numpy()
    age = (frame["age"] - frame["age"].mean()) / frame["age"].std(ddof=0)
    np.testing.assert_allclose(encoded[:, 0], age, rtol=1e-5)
    missing = frame["chol"].isna().to_numpy()
    assert (encoded[missing, 1] == 0).all()
    one_hot = encoded[:, 3:7]
    assert (one_hot.sum(axis=1) == 1).all()
    np.testing.assert_array_equal(one_hot.argmax(axis=1) + 1, frame["cp"].to_numpy())


def test_small_cells_stay_at_site() -> None:
    frame = _frame(7, 40, 0.0)
    frame["sex"] = 0.0
    frame.loc[:2, "sex"] = 1.0  # three ones: a small cell
    frame.loc[:3, "age"] = np.nan  # four missing values
    frame["cp"] = 4.0
    frame.loc[:1, "cp"] = 1.0  # two patients with cp = 1
    stats = site_statistics(frame, FEATURES, site_id="small", min_count=10)
    assert "sex" in stats.withheld
    assert stats.columns["sex"].count == 0
    assert stats.columns["sex"].total == 0.0
    assert stats.columns["age"].missing == 0
    assert stats.columns["age"].count == 36
    assert stats.columns["cp"].level_counts == {"1": 0, "2": 0, "3": 0, "4": 38}
