"""SCAFFOLD: control variates that correct each site's drift from the global direction.

Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020 (Algorithm 1, option II). The centre keeps a control
variate c and each site i keeps its own c_i. In a round, site i starts from
the global weights x, takes K optimiser steps of plain SGD with learning rate
lr on gradients corrected to g - c_i + c, ends at y_i, and updates
c_i <- c_i - c + (x - y_i) / (K * lr). It returns y_i and the change
delta_i = c_i(new) - c_i(old).

The centre then sets x <- x + server_lr * sum_i w_i (y_i - x) and
c <- c + (|S| / N) * sum_i w_i delta_i, where w_i are the num_examples
weights of the round's sites S and N is the number of sites in the
federation. The paper averages both uniformly; weighting by num_examples
keeps c equal to the weighted mean of the c_i that the weighted model average
implies, and with server_lr = 1 it gives the same algorithm as FLamby's
SCAFFOLD.

The centre sends c to the sites as a "control_variate" payload
(`server_payloads`); c starts empty, which sites read as zeros. The site side
lives in `medfed.sites.control_variates`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from pydantic import Field

from medfed.pipelines.strategies.base import (
    AggregationError,
    SiteTrainingHints,
    SiteUpdate,
    Strategy,
    StrategyConfig,
)
from medfed.pipelines.strategies.fedavg import WeightedSum, check_num_examples
from medfed.pipelines.strategies.server_update import apply_server_step

CONTROL_VARIATE_KIND = "control_variate"


class ScaffoldConfig(StrategyConfig):
    name: Literal["scaffold"] = "scaffold"
    server_learning_rate: float = Field(default=1.0, gt=0, description="Global step size on the averaged update.")
    total_sites: int | None = Field(
        default=None,
        ge=1,
        description="Sites in the federation (N). None means every round includes every site, so |S|/N = 1.",
    )


class Scaffold(Strategy):
    name = "scaffold"
    config_class = ScaffoldConfig

    def __init__(self, config: ScaffoldConfig | None = None) -> None:
        super().__init__(config or ScaffoldConfig())
        self.config: ScaffoldConfig
        self._weights = WeightedSum()
        self._deltas = WeightedSum()
        self.control_variate: dict[str, torch.Tensor] = {}

    def site_hints(self) -> SiteTrainingHints:
        return SiteTrainingHints(control_variates=True)

    def server_payloads(self) -> dict[str, dict[str, torch.Tensor]]:
        return {CONTROL_VARIATE_KIND: {name: tensor.clone() for name, tensor in self.control_variate.items()}}

    def aggregate(
        self,
        global_state: dict[str, torch.Tensor],
        updates: Iterable[SiteUpdate],
    ) -> dict[str, torch.Tensor]:
        self._weights.reset()
        self._deltas.reset()
        contributing = 0
        for update in updates:
            check_num_examples(update)
            if update.num_examples == 0:
                continue
            if update.control_variate_delta is None:
                raise AggregationError(
                    f"site {update.site_id!r} sent no control-variate change, which SCAFFOLD needs; "
                    "check that the site applies the strategy's control_variates hint"
                )
            weight = float(update.num_examples)
            self._weights.add(update.tensors, weight)
            self._deltas.add(update.control_variate_delta, weight)
            contributing += 1
        averaged = self._weights.mean()
        mean_delta = self._deltas.mean()

        rate = self.config.server_learning_rate
        next_state = apply_server_step(global_state, averaged, lambda _name, delta: rate * delta)
        share = 1.0 if self.config.total_sites is None else contributing / self.config.total_sites
        for name, delta in mean_delta.items():
            current = self.control_variate.get(name)
            self.control_variate[name] = (delta * share) if current is None else current + share * delta
        return next_state

    def server_state(self) -> dict[str, torch.Tensor]:
        return {f"c/{name}": tensor.clone() for name, tensor in self.control_variate.items()}

    def load_server_state(self, state: dict[str, torch.Tensor]) -> None:
        self.control_variate = {key.removeprefix("c/"): tensor.clone() for key, tensor in state.items()}
