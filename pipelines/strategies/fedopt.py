"""FedOpt: a server optimiser applied to the sites' averaged update.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (Algorithm 2).
With d = average(site weights) - global, each round the centre updates
m <- beta1 * m + (1 - beta1) * d, updates the second moment v by the rule of
the subclass (Adam, Yogi or Adagrad), and sets
global <- global + server_lr * m / (sqrt(v) + tau). Moments start at zero
and have no bias correction, as in the paper and in FLamby.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from pydantic import Field

from medfed.pipelines.strategies.base import SiteUpdate, Strategy, StrategyConfig
from medfed.pipelines.strategies.fedavg import WeightedSum, weighted_average
from medfed.pipelines.strategies.server_update import apply_server_step


class FedOptConfig(StrategyConfig):
    server_learning_rate: float = Field(default=1e-2, gt=0, description="Server step size eta.")
    beta1: float = Field(default=0.9, ge=0, lt=1, description="First-moment decay.")
    beta2: float = Field(default=0.99, ge=0, lt=1, description="Second-moment decay (Adam and Yogi).")
    tau: float = Field(default=1e-3, gt=0, description="Adaptivity constant added to sqrt(v).")


class _AdaptiveStep:
    def __init__(self, strategy: FedOpt) -> None:
        self.strategy = strategy

    def __call__(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        config = self.strategy.config
        first = self.strategy.first_moment.get(name)
        second = self.strategy.second_moment.get(name)
        if first is None or first.shape != delta.shape:
            first = torch.zeros_like(delta)
            second = torch.zeros_like(delta)
            self.strategy.first_moment[name] = first
            self.strategy.second_moment[name] = second
        assert second is not None
        first.mul_(config.beta1).add_(delta, alpha=1 - config.beta1)
        second.copy_(self.strategy.update_second_moment(second, delta))
        return config.server_learning_rate * first / (second.sqrt() + config.tau)


class FedOpt(Strategy):
    """Shared aggregation of FedAdam, FedYogi and FedAdagrad; subclasses set the second-moment rule."""

    config_class = FedOptConfig

    def __init__(self, config: FedOptConfig) -> None:
        super().__init__(config)
        self.config: FedOptConfig
        self._accumulator = WeightedSum()
        self.first_moment: dict[str, torch.Tensor] = {}
        self.second_moment: dict[str, torch.Tensor] = {}

    def update_second_moment(self, second: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def aggregate(
        self,
        global_state: dict[str, torch.Tensor],
        updates: Iterable[SiteUpdate],
    ) -> dict[str, torch.Tensor]:
        averaged = weighted_average(updates, self._accumulator)
        return apply_server_step(global_state, averaged, _AdaptiveStep(self))

    def server_state(self) -> dict[str, torch.Tensor]:
        state = {f"m/{name}": tensor.clone() for name, tensor in self.first_moment.items()}
        state.update({f"v/{name}": tensor.clone() for name, tensor in self.second_moment.items()})
        return state

    def load_server_state(self, state: dict[str, torch.Tensor]) -> None:
        self.first_moment = {k.removeprefix("m/"): t.clone() for k, t in state.items() if k.startswith("m/")}
        self.second_moment = {k.removeprefix("v/"): t.clone() for k, t in state.items() if k.startswith("v/")}
