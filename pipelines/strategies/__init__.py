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
from medfed.pipelines.strategies.cyclic import Cyclic
from medfed.pipelines.strategies.fedadagrad import FedAdagrad
from medfed.pipelines.strategies.fedadam import FedAdam
from medfed.pipelines.strategies.fedavg import FedAvg
from medfed.pipelines.strategies.fedavgm import FedAvgM
from medfed.pipelines.strategies.fedbn import FedBN
from medfed.pipelines.strategies.fedprox import FedProx
from medfed.pipelines.strategies.fedyogi import FedYogi
from medfed.pipelines.strategies.fine_tuning import LocalFineTuning
from medfed.pipelines.strategies.krum import Krum
from medfed.pipelines.strategies.median import Median
from medfed.pipelines.strategies.scaffold import Scaffold
from medfed.pipelines.strategies.trimmed_mean import TrimmedMean

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        FedAvg,
        FedAvgM,
        FedProx,
        FedAdam,
        FedYogi,
        FedAdagrad,
        Scaffold,
        Median,
        TrimmedMean,
        Krum,
        Cyclic,
        FedBN,
        LocalFineTuning,
    )
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
    "Cyclic",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedBN",
    "FedProx",
    "FedYogi",
    "Krum",
    "LocalFineTuning",
    "Median",
    "Scaffold",
    "TrimmedMean",
    "SiteTrainingHints",
    "SiteUpdate",
    "Strategy",
    "StrategyConfig",
    "build_strategy",
]
