"""What every aggregation strategy provides.

A strategy is a small class with a typed pydantic config and a pure
`aggregate` step: it takes the current global state and the round's site
updates and returns the next global state. It does no I/O and no logging of
weights. Strategies that need memory across rounds (server momentum, optimiser
moments, control variates) keep it on the instance and expose it through
`server_state` and `load_server_state`, so that a federation can checkpoint
and resume it.

Three hooks let a strategy reach beyond aggregation, each with a default that
keeps FedAvg's behaviour:
- `select_sites` picks the sites that train in a round (all of them by default);
- `site_hints` returns what the sites add to local training (FedProx's
  proximal term, SCAFFOLD's correction, FedBN's local layers, fine-tuning);
- `server_payloads` returns tensors the centre sends beside the global model,
  by payload kind (SCAFFOLD's server control variate).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
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
    # SCAFFOLD: the change of the site's control variate in this round,
    # c_i(new) - c_i(old), sent as a "control_variate" payload.
    control_variate_delta: dict[str, torch.Tensor] | None = None


class StrategyConfig(BaseModel):
    """Options shared by every strategy; subclasses add their own."""

    model_config = ConfigDict(extra="forbid")

    name: str


@dataclass(frozen=True)
class SiteTrainingHints:
    """Settings a strategy requests the sites to apply in local training.

    The defaults change nothing, so a strategy that only aggregates returns
    `SiteTrainingHints()`. `site_options` turns the hints into the plain
    values that travel to a site in its round request, where they become
    fields of the site's `LocalTrainingConfig`. A key in `extra` must
    therefore name a field of that config, or the request is rejected.
    """

    # FedProx: weight mu of the proximal term mu/2 * ||w - w_global||^2; 0 disables it.
    proximal_mu: float = 0.0
    # SCAFFOLD: correct each gradient by (c - c_i) and return the change of c_i.
    control_variates: bool = False
    # FedBN: normalisation layers (BatchNorm, LayerNorm, GroupNorm, InstanceNorm)
    # stay at the site and never appear in a payload.
    local_normalisation: bool = False
    # More tensors that stay at the site, as fnmatch patterns on state-dict keys.
    local_key_patterns: tuple[str, ...] = ()
    # Local fine-tuning of the final global model: optimiser steps at each site,
    # and their learning rate (None: the site's training learning rate).
    fine_tune_steps: int = 0
    fine_tune_learning_rate: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def keeps_local_layers(self) -> bool:
        return self.local_normalisation or bool(self.local_key_patterns)

    def site_options(self) -> dict[str, Any]:
        """Return the hints as JSON-ready values, `extra` included."""
        return {
            "proximal_mu": self.proximal_mu,
            "control_variates": self.control_variates,
            "local_normalisation": self.local_normalisation,
            "local_key_patterns": list(self.local_key_patterns),
            "fine_tune_steps": self.fine_tune_steps,
            "fine_tune_learning_rate": self.fine_tune_learning_rate,
            **self.extra,
        }


class Strategy(ABC):
    """Turn the round's site updates into the next global model."""

    name: ClassVar[str]
    config_class: ClassVar[type[StrategyConfig]]

    def __init__(self, config: StrategyConfig) -> None:
        self.config = config

    def site_hints(self) -> SiteTrainingHints:
        """Return what the sites must add to their local training (none by default)."""
        return SiteTrainingHints()

    def select_sites(self, round_number: int, site_ids: Sequence[str]) -> list[str]:
        """Return the sites that train in `round_number` (every site by default)."""
        return list(site_ids)

    def server_payloads(self) -> dict[str, dict[str, torch.Tensor]]:
        """Return tensors to send to the round's sites beside the global model, by payload kind."""
        return {}

    def server_state(self) -> dict[str, torch.Tensor]:
        """Return the memory this strategy keeps across rounds, for a checkpoint (none by default)."""
        return {}

    def load_server_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the memory returned by `server_state`."""
        if state:
            raise ValueError(f"strategy {self.name!r} keeps no state across rounds, got {len(state)} tensor(s)")

    @abstractmethod
    def aggregate(
        self,
        global_state: dict[str, torch.Tensor],
        updates: Iterable[SiteUpdate],
    ) -> dict[str, torch.Tensor]:
        """Return the next global state from the current one and the round's updates."""
