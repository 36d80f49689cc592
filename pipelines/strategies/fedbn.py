"""FedBN: FedAvg over every tensor except normalisation layers, which stay at each site.

Li et al., "FedBN: Federated Learning on Non-IID Features via Local Batch
Normalization", ICLR 2021. The sites leave their normalisation layers
(weights, biases and running statistics) out of every payload and keep them
in their own state folder, so each site normalises with its own statistics.
The centre averages what it receives; the global model keeps the initial
normalisation tensors, which only serve as each site's starting point.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from medfed.pipelines.strategies.base import SiteTrainingHints
from medfed.pipelines.strategies.fedavg import FedAvg, FedAvgConfig


class FedBNConfig(FedAvgConfig):
    name: Literal["fedbn"] = "fedbn"  # type: ignore[assignment]
    extra_local_keys: list[str] = Field(
        default_factory=list,
        description="More state-dict keys that stay at the sites, as fnmatch patterns such as 'head.*'.",
    )


class FedBN(FedAvg):
    name = "fedbn"
    config_class = FedBNConfig

    def __init__(self, config: FedBNConfig | None = None) -> None:
        super().__init__(config or FedBNConfig())
        self.config: FedBNConfig

    def site_hints(self) -> SiteTrainingHints:
        return SiteTrainingHints(local_normalisation=True, local_key_patterns=tuple(self.config.extra_local_keys))
