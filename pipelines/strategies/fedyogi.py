"""FedYogi: FedOpt with Yogi's second moment, v <- v - (1 - beta2) * d^2 * sign(v - d^2).

Yogi grows v additively, so a single large update cannot shrink the step size
as fast as Adam's exponential average does.
"""

from __future__ import annotations

from typing import Literal

import torch

from medfed.pipelines.strategies.fedopt import FedOpt, FedOptConfig


class FedYogiConfig(FedOptConfig):
    name: Literal["fedyogi"] = "fedyogi"


class FedYogi(FedOpt):
    name = "fedyogi"
    config_class = FedYogiConfig

    def __init__(self, config: FedYogiConfig | None = None) -> None:
        super().__init__(config or FedYogiConfig())

    def update_second_moment(self, second: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        squared = delta * delta
        return second - (1 - self.config.beta2) * squared * torch.sign(second - squared)
