"""Cyclic weight transfer: one site trains per round, and the model passes from site to site.

Chang et al., "Distributed deep learning networks among institutions for
medical imaging", JAMIA 2018. The sites take turns in cycles: each cycle
visits every site once, in the order given (`shuffle_each_cycle=False`) or in
a new random order per cycle drawn from `numpy.random.default_rng(seed)`, as
FLamby's Cyclic does. The next global model is the weights the visited site
returns; a visited site with no examples passes the model on unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from medfed.pipelines.strategies.base import SiteUpdate, Strategy, StrategyConfig
from medfed.pipelines.strategies.fedavg import WeightedSum, check_num_examples, merge_into_global


class CyclicConfig(StrategyConfig):
    name: Literal["cyclic"] = "cyclic"
    shuffle_each_cycle: bool = Field(default=True, description="Draw a new site order at the start of each cycle.")
    seed: int = Field(default=0, description="Seed of the site-order generator.")
    first_round: int = Field(default=1, ge=0, description="Round number of the first visit.")


class Cyclic(Strategy):
    name = "cyclic"
    config_class = CyclicConfig

    def __init__(self, config: CyclicConfig | None = None) -> None:
        super().__init__(config or CyclicConfig())
        self.config: CyclicConfig
        self._accumulator = WeightedSum()

    def site_order(self, cycle: int, site_ids: Sequence[str]) -> list[str]:
        """Return the visiting order of cycle number `cycle` (0-based)."""
        if not self.config.shuffle_each_cycle:
            return list(site_ids)
        # One generator drawn from cycle by cycle, so a cycle's order depends
        # only on the seed and the cycle number, and a resumed run repeats it.
        generator = np.random.default_rng(self.config.seed)
        permutation = np.arange(len(site_ids))
        for _ in range(cycle + 1):
            permutation = generator.permutation(len(site_ids))
        return [site_ids[int(index)] for index in permutation]

    def select_sites(self, round_number: int, site_ids: Sequence[str]) -> list[str]:
        if not site_ids:
            return []
        position = round_number - self.config.first_round
        if position < 0:
            raise ValueError(f"round {round_number} comes before first_round={self.config.first_round}")
        cycle, index = divmod(position, len(site_ids))
        return [self.site_order(cycle, site_ids)[index]]

    def aggregate(
        self,
        global_state: dict[str, torch.Tensor],
        updates: Iterable[SiteUpdate],
    ) -> dict[str, torch.Tensor]:
        self._accumulator.reset()
        for update in updates:
            check_num_examples(update)
            self._accumulator.add(update.tensors, float(update.num_examples))
        if self._accumulator.total_weight <= 0:
            return dict(global_state)
        return merge_into_global(global_state, self._accumulator.mean())
