"""FedAdagrad: FedOpt with Adagrad's second moment, v <- v + d^2 (beta2 is unused)."""

from __future__ import annotations

from typing import Literal

import torch

from medfed.pipelines.strategies.fedopt import FedOpt, FedOptConfig


class FedAdagradConfig(FedOptConfig):
    name: Literal["fedadagrad"] = "fedadagrad"


class FedAdagrad(FedOpt):
    name = "fedadagrad"
    config_class = FedAdagradConfig

    def __init__(self, config: FedAdagradConfig | None = None) -> None:
        super().__init__(config or FedAdagradConfig())

    def update_second_moment(self, second: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return second + delta * delta
