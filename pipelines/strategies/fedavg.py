"""FedAvg: the average of the sites' weights, weighted by their number of examples.

McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch

from medfed.pipelines.strategies.base import (
    AggregationError,
    SiteUpdate,
    Strategy,
    StrategyConfig,
)


class FedAvgConfig(StrategyConfig):
    name: Literal["fedavg"] = "fedavg"


class WeightedSum:
    """Streaming weighted sum of state dicts that holds one accumulator per tensor.

    Updates are added one at a time, so peak memory is the accumulator plus
    the update being added, whatever the number of sites. Floating tensors
    accumulate in their own dtype; integer tensors accumulate in float64 and
    are rounded back to their dtype by `mean`. Each tensor is divided by the
    weight of the updates that contained it, so a tensor that some sites keep
    local is the average over the sites that sent it.
    """

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        self._weights: dict[str, float] = {}
        self.total_weight = 0.0
        self.count = 0

    def reset(self) -> None:
        """Forget the sums but keep the buffers, so the next round reuses their memory."""
        for acc in self._sums.values():
            acc.zero_()
        self._weights.clear()
        self.total_weight = 0.0
        self.count = 0

    def add(self, tensors: dict[str, torch.Tensor], weight: float) -> None:
        if weight <= 0:
            return
        for name, tensor in tensors.items():
            acc = self._sums.get(name)
            if acc is None or acc.shape != tensor.shape:
                acc_dtype = tensor.dtype if tensor.is_floating_point() else torch.float64
                acc = torch.zeros(tensor.shape, dtype=acc_dtype)
                self._sums[name] = acc
                self._dtypes[name] = tensor.dtype
            acc.add_(tensor.to(acc.dtype), alpha=weight)
            self._weights[name] = self._weights.get(name, 0.0) + weight
        self.total_weight += weight
        self.count += 1

    def mean(self, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Return sum / weight per tensor added since `reset`, integer tensors rounded to their dtype."""
        if self.total_weight <= 0:
            raise AggregationError(
                "no site contributed any examples this round, so there is nothing to average"
            )
        out: dict[str, torch.Tensor] = {}
        for name in names if names is not None else list(self._weights):
            acc = self._sums[name]
            averaged = acc / self._weights[name]
            dtype = self._dtypes[name]
            if not dtype.is_floating_point:
                averaged = torch.round(averaged)
            out[name] = averaged.to(dtype)
        return out


def check_num_examples(update: SiteUpdate) -> None:
    """Raise AggregationError when a site reports a negative number of examples."""
    if update.num_examples < 0:
        raise AggregationError(
            f"site {update.site_id!r} reported num_examples={update.num_examples}; it must be >= 0"
        )


def weighted_average(
    updates: Iterable[SiteUpdate], accumulator: WeightedSum | None = None
) -> dict[str, torch.Tensor]:
    """Average the updates' tensors weighted by `num_examples`; sites with zero weigh nothing."""
    acc = accumulator or WeightedSum()
    acc.reset()
    for update in updates:
        check_num_examples(update)
        acc.add(update.tensors, float(update.num_examples))
    return acc.mean()


def merge_into_global(
    global_state: dict[str, torch.Tensor], new_values: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Return the global state with `new_values` applied; tensors no site sent keep their value."""
    return {name: new_values.get(name, tensor) for name, tensor in global_state.items()}


class FedAvg(Strategy):
    name = "fedavg"
    config_class = FedAvgConfig

    def __init__(self, config: FedAvgConfig | None = None) -> None:
        super().__init__(config or FedAvgConfig())
        self._accumulator = WeightedSum()

    def aggregate(
        self,
        global_state: dict[str, torch.Tensor],
        updates: Iterable[SiteUpdate],
    ) -> dict[str, torch.Tensor]:
        averaged = weighted_average(updates, self._accumulator)
        # Tensors that no site sent (local layers) keep their global value.
        return merge_into_global(global_state, averaged)
