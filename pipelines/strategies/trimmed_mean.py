"""Coordinate-wise trimmed mean of the site updates.

Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", ICML 2018. For each coordinate the centre sorts the
values of the n sites with num_examples > 0, drops the k = floor(trim_fraction
* n) smallest and k largest, and averages the rest, unweighted. This matches
`scipy.stats.trim_mean(values, trim_fraction)`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
from pydantic import Field

from medfed.pipelines.strategies.base import SiteUpdate, Strategy, StrategyConfig
from medfed.pipelines.strategies.robust import contributing_updates, coordinatewise


class TrimmedMeanConfig(StrategyConfig):
    name: Literal["trimmed_mean"] = "trimmed_mean"
    trim_fraction: float = Field(
        default=0.1, ge=0, lt=0.5, description="Share of sites dropped at each end, per coordinate."
    )


def trimmed_mean_over_sites(stacked: torch.Tensor, trim_fraction: float) -> torch.Tensor:
    """Return the mean along dimension 0 after dropping floor(trim_fraction * n) values at each end."""
    count = stacked.shape[0]
    cut = math.floor(trim_fraction * count)
    ordered = stacked.sort(dim=0).values
    return ordered[cut : count - cut].mean(dim=0)


class TrimmedMean(Strategy):
    name = "trimmed_mean"
    config_class = TrimmedMeanConfig

    def __init__(self, config: TrimmedMeanConfig | None = None) -> None:
        super().__init__(config or TrimmedMeanConfig())
        self.config: TrimmedMeanConfig

    def aggregate(
        self,
        global_state: dict[str, torch.Tensor],
        updates: Iterable[SiteUpdate],
    ) -> dict[str, torch.Tensor]:
        kept = contributing_updates(updates, self.name)
        fraction = self.config.trim_fraction
        return coordinatewise(global_state, kept, lambda stacked: trimmed_mean_over_sites(stacked, fraction))
