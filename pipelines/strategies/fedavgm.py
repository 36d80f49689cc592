"""FedAvgM: FedAvg with server momentum on the averaged update.

Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data Distribution
for Federated Visual Classification", arXiv:1909.06335, 2019. Each round the
centre treats d = average(site weights) - global as a step direction and
applies v <- beta * v + d, global <- global + server_lr * v. With beta = 0 and
server_lr = 1 this is FedAvg.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from pydantic import Field

from medfed.pipelines.strategies.base import SiteUpdate, Strategy, StrategyConfig
from medfed.pipelines.strategies.fedavg import WeightedSum, weighted_average
from medfed.pipelines.strategies.server_update import apply_server_step


class FedAvgMConfig(StrategyConfig):
    name: Literal["fedavgm"] = "fedavgm"
    server_learning_rate: float = Field(default=1.0, gt=0, description="Step size on the momentum vector.")
    server_momentum: float = Field(default=0.9, ge=0, lt=1, description="Momentum factor beta.")


class _MomentumStep:
    def __init__(self, config: FedAvgMConfig, velocity: dict[str, torch.Tensor]) -> None:
        self.config = config
        self.velocity = velocity

    def __call__(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        velocity = self.velocity.get(name)
        if velocity is None or velocity.shape != delta.shape:
            velocity = torch.zeros_like(delta)
            self.velocity[name] = velocity
        velocity.mul_(self.config.server_momentum).add_(delta)
        return self.config.server_learning_rate * velocity


class FedAvgM(Strategy):
    name = "fedavgm"
    config_class = FedAvgMConfig

    def __init__(self, config: FedAvgMConfig | None = None) -> None:
        super().__init__(config or FedAvgMConfig())
        self.config: FedAvgMConfig
        self._accumulator = WeightedSum()
        self._velocity: dict[str, torch.Tensor] = {}

    def aggregate(
        self,
        global_state: dict[str, torch.Tensor],
        updates: Iterable[SiteUpdate],
    ) -> dict[str, torch.Tensor]:
        averaged = weighted_average(updates, self._accumulator)
        return apply_server_step(global_state, averaged, _MomentumStep(self.config, self._velocity))

    def server_state(self) -> dict[str, torch.Tensor]:
        return {f"velocity/{name}": tensor.clone() for name, tensor in self._velocity.items()}

    def load_server_state(self, state: dict[str, torch.Tensor]) -> None:
        self._velocity = {key.removeprefix("velocity/"): tensor.clone() for key, tensor in state.items()}
