"""Every strategy is reachable by name from an experiment's strategy block."""

from __future__ import annotations

import pytest

from medfed.pipelines.strategies import STRATEGIES, Strategy, build_strategy

EXPECTED = {
    "fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedadagrad", "scaffold",
    "median", "trimmed_mean", "krum", "cyclic", "fedbn", "fine_tuning",
}  # fmt: skip


def test_registry_lists_every_strategy():
    assert set(STRATEGIES) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_build_strategy_by_name(name):
    strategy = build_strategy({"name": name})
    assert isinstance(strategy, Strategy)
    assert strategy.config.name == name
    assert strategy.select_sites(1, ["a", "b"])  # every strategy trains at least one site
    assert strategy.config.model_dump()["name"] == name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_build_strategy_rejects_unknown_option(name):
    with pytest.raises(ValueError, match="not_an_option"):
        build_strategy({"name": name, "not_an_option": 1})


def test_build_strategy_unknown_name():
    with pytest.raises(ValueError, match="unknown strategy 'fedfoo'"):
        build_strategy({"name": "fedfoo"})
