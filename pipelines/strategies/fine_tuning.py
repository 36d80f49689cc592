"""Local fine-tuning: FedAvg during the federation, then each site fine-tunes the final model.

After the last round every site scores the final global model on its test
split, trains it for `fine_tune_steps` more optimiser steps on its own
training split, and scores it again. Both scores are reported per site as
`before_fine_tuning/<metric>` and `after_fine_tuning/<metric>`. The
fine-tuned weights stay at the site. FLamby calls this FedAvgFineTuning.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from medfed.pipelines.strategies.base import SiteTrainingHints
from medfed.pipelines.strategies.fedavg import FedAvg, FedAvgConfig


class FineTuningConfig(FedAvgConfig):
    name: Literal["fine_tuning"] = "fine_tuning"  # type: ignore[assignment]
    fine_tune_steps: int = Field(default=10, ge=1, description="Optimiser steps at each site after the last round.")
    fine_tune_learning_rate: float | None = Field(
        default=None, gt=0, description="Learning rate of those steps; None uses the site's training rate."
    )


class LocalFineTuning(FedAvg):
    name = "fine_tuning"
    config_class = FineTuningConfig

    def __init__(self, config: FineTuningConfig | None = None) -> None:
        super().__init__(config or FineTuningConfig())
        self.config: FineTuningConfig

    def site_hints(self) -> SiteTrainingHints:
        return SiteTrainingHints(
            fine_tune_steps=self.config.fine_tune_steps,
            fine_tune_learning_rate=self.config.fine_tune_learning_rate,
        )
