"""Krum and Multi-Krum: keep the updates closest to their neighbours, then average them.

Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent", NeurIPS 2017. Among the n sites with num_examples > 0,
each site's score is the sum of squared Euclidean distances from its update
to its n - f - 2 nearest other updates, where f is the number of Byzantine
sites tolerated. Krum keeps the site with the lowest score (num_selected = 1);
Multi-Krum keeps the num_selected lowest and averages them weighted by
num_examples. Distances cover every floating tensor the update carries;
integer tensors take the weighted mean of the kept sites, rounded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from pydantic import Field

from medfed.pipelines.strategies.base import AggregationError, SiteUpdate, Strategy, StrategyConfig
from medfed.pipelines.strategies.fedavg import WeightedSum, merge_into_global
from medfed.pipelines.strategies.robust import contributing_updates


class KrumConfig(StrategyConfig):
    name: Literal["krum"] = "krum"
    num_byzantine: int = Field(default=0, ge=0, description="Number f of faulty sites to tolerate.")
    num_selected: int = Field(default=1, ge=1, description="Updates kept and averaged; 1 is Krum.")


def krum_scores(vectors: torch.Tensor, num_byzantine: int) -> torch.Tensor:
    """Return each row's sum of squared distances to its n - f - 2 nearest other rows."""
    count = vectors.shape[0]
    neighbours = count - num_byzantine - 2
    squared = torch.cdist(vectors, vectors).pow(2)
    squared.fill_diagonal_(float("inf"))
    return squared.sort(dim=1).values[:, :neighbours].sum(dim=1)


def flatten_floating(update: SiteUpdate, names: list[str]) -> torch.Tensor:
    return torch.cat([update.tensors[name].to(torch.float64).reshape(-1) for name in names])


class Krum(Strategy):
    name = "krum"
    config_class = KrumConfig

    def __init__(self, config: KrumConfig | None = None) -> None:
        super().__init__(config or KrumConfig())
        self.config: KrumConfig
        self._accumulator = WeightedSum()

    def select(self, updates: list[SiteUpdate], global_state: dict[str, torch.Tensor]) -> list[SiteUpdate]:
        """Return the num_selected updates with the lowest Krum scores, lowest first."""
        count = len(updates)
        faulty, selected = self.config.num_byzantine, self.config.num_selected
        if count < 2 * faulty + 3:
            raise AggregationError(
                f"krum: {count} site(s) contributed, but tolerating num_byzantine={faulty} "
                f"needs at least 2 * {faulty} + 3 = {2 * faulty + 3}; lower num_byzantine or wait for more sites"
            )
        if selected > count:
            raise AggregationError(
                f"krum: num_selected={selected} exceeds the {count} site(s) that contributed this round"
            )
        names = sorted(
            name for name, tensor in global_state.items()
            if tensor.is_floating_point() and all(name in update.tensors for update in updates)
        )  # fmt: skip
        if not names:
            raise AggregationError("krum: the updates share no floating tensor to measure distances on")
        vectors = torch.stack([flatten_floating(update, names) for update in updates])
        scores = krum_scores(vectors, faulty)
        order = torch.argsort(scores, stable=True)
        return [updates[int(index)] for index in order[:selected]]

    def aggregate(
        self,
        global_state: dict[str, torch.Tensor],
        updates: Iterable[SiteUpdate],
    ) -> dict[str, torch.Tensor]:
        kept = self.select(contributing_updates(updates, self.name), global_state)
        self._accumulator.reset()
        for update in kept:
            self._accumulator.add(update.tensors, float(update.num_examples))
        return merge_into_global(global_state, self._accumulator.mean())
