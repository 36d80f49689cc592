"""FedAdam: FedOpt with Adam's second moment, v <- beta2 * v + (1 - beta2) * d^2."""

from __future__ import annotations

from typing import Literal

import torch

from medfed.pipelines.strategies.fedopt import FedOpt, FedOptConfig


class FedAdamConfig(FedOptConfig):
    name: Literal["fedadam"] = "fedadam"


class FedAdam(FedOpt):
    name = "fedadam"
    config_class = FedAdamConfig

    def __init__(self, config: FedAdamConfig | None = None) -> None:
        super().__init__(config or FedAdamConfig())

    def update_second_moment(self, second: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        beta2 = self.config.beta2
        return beta2 * second + (1 - beta2) * delta * delta
