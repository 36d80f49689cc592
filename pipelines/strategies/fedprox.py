"""FedProx: FedAvg at the centre, a proximal term in each site's local training.

Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020.
Each site minimises loss(w) + mu/2 * ||w - w_global||^2 over the round, which
keeps its weights near the global model on heterogeneous data. The term is
applied by the site's training loop, which reads `proximal_mu` from
`site_hints`; the aggregation is FedAvg's weighted average.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from medfed.pipelines.strategies.base import SiteTrainingHints
from medfed.pipelines.strategies.fedavg import FedAvg, FedAvgConfig


class FedProxConfig(FedAvgConfig):
    name: Literal["fedprox"] = "fedprox"  # type: ignore[assignment]
    proximal_mu: float = Field(default=0.01, ge=0, description="Weight mu of the proximal term; 0 is FedAvg.")


class FedProx(FedAvg):
    name = "fedprox"
    config_class = FedProxConfig

    def __init__(self, config: FedProxConfig | None = None) -> None:
        super().__init__(config or FedProxConfig())
        self.config: FedProxConfig

    def site_hints(self) -> SiteTrainingHints:
        return SiteTrainingHints(proximal_mu=self.config.proximal_mu)
