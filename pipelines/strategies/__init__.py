"""Aggregation strategies, looked up by the `name` in an experiment's `strategy` block."""

from __future__ import annotations

from typing import Any

from medfed.pipelines.strategies.base import (
    AggregationError,
    SiteTrainingHints,
    SiteUpdate,
    Strategy,
    StrategyConfig,
)
from medfed.pipelines.strategies.fedavg import FedAvg

STRATEGIES: dict[str, type[Strategy]] = {
    FedAvg.name: FedAvg,
}


def build_strategy(options: dict[str, Any]) -> Strategy:
    """Build a strategy from its config block, for example `{"name": "fedavg"}`."""
    name = options.get("name", "fedavg")
    if name not in STRATEGIES:
        raise ValueError(
            f"unknown strategy {name!r}; choose one of: {', '.join(sorted(STRATEGIES))}"
        )
    cls = STRATEGIES[name]
    return cls(cls.config_class.model_validate({**options, "name": name}))


__all__ = [
    "STRATEGIES",
    "AggregationError",
    "SiteTrainingHints",
    "SiteUpdate",
    "Strategy",
    "StrategyConfig",
    "build_strategy",
]
