"""Coordinate-wise median of the site updates.

Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", ICML 2018. Each coordinate of the next global model is
the median of the sites' values, unweighted, over sites with num_examples > 0.
With an even number of sites it is the mean of the two middle values, as in
`numpy.median`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch

from medfed.pipelines.strategies.base import SiteUpdate, Strategy, StrategyConfig
from medfed.pipelines.strategies.robust import contributing_updates, coordinatewise


class MedianConfig(StrategyConfig):
    name: Literal["median"] = "median"


def median_over_sites(stacked: torch.Tensor) -> torch.Tensor:
    """Return the median along dimension 0, averaging the two middle values for an even count."""
    ordered = stacked.sort(dim=0).values
    count = ordered.shape[0]
    middle = count // 2
    if count % 2 == 1:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


class Median(Strategy):
    name = "median"
    config_class = MedianConfig

    def __init__(self, config: MedianConfig | None = None) -> None:
        super().__init__(config or MedianConfig())

    def aggregate(
        self,
        global_state: dict[str, torch.Tensor],
        updates: Iterable[SiteUpdate],
    ) -> dict[str, torch.Tensor]:
        kept = contributing_updates(updates, self.name)
        return coordinatewise(global_state, kept, median_over_sites)
