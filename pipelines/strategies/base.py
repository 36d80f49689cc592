"""What every aggregation strategy provides.

A strategy is a small class with a typed pydantic config and a pure
`aggregate` step: it takes the current global state and the round's site
updates and returns the next global state. It does no I/O and no logging of
weights. Strategies that need memory across rounds (server momentum, optimiser
moments) keep it on the instance.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict


class AggregationError(ValueError):
    """Aggregation cannot produce a model from the updates it was given."""


@dataclass(frozen=True)
class SiteUpdate:
    """One validated site update, as the strategy sees it."""

    site_id: str
    num_examples: int
    tensors: dict[str, torch.Tensor]
    metrics: dict[str, float] = field(default_factory=dict)


class StrategyConfig(BaseModel):
    """Options shared by every strategy; subclasses add their own."""

    model_config = ConfigDict(extra="forbid")

    name: str


@dataclass(frozen=True)
class SiteTrainingHints:
    """Settings a strategy asks the sites to apply in local training."""

    proximal_mu: float = 0.0  # FedProx: weight of the proximal term, 0 disables it
    extra: dict[str, Any] = field(default_factory=dict)


class Strategy(ABC):
    """Turn the round's site updates into the next global model."""

    name: ClassVar[str]
    config_class: ClassVar[type[StrategyConfig]]

    def __init__(self, config: StrategyConfig) -> None:
        self.config = config

    def site_hints(self) -> SiteTrainingHints:
        """Return what the sites must add to their local training (none by default)."""
        return SiteTrainingHints()

    @abstractmethod
    def aggregate(
        self,
        global_state: dict[str, torch.Tensor],
        updates: Iterable[SiteUpdate],
    ) -> dict[str, torch.Tensor]:
        """Return the next global state from the current one and the round's updates."""
