"""Helpers shared by the robust aggregators (median, trimmed mean, Krum).

Robust statistics need every site's value of a coordinate at once, so these
aggregators hold all of the round's updates in memory: about
(number of sites + 1) times one model, unlike FedAvg's streaming sum.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from medfed.pipelines.strategies.base import AggregationError, SiteUpdate
from medfed.pipelines.strategies.fedavg import check_num_examples


def contributing_updates(updates: Iterable[SiteUpdate], strategy: str) -> list[SiteUpdate]:
    """Return the updates with num_examples > 0, sorted by site id so that ties break the same way."""
    kept = []
    for update in updates:
        check_num_examples(update)
        if update.num_examples > 0:
            kept.append(update)
    if not kept:
        raise AggregationError(
            f"{strategy}: no site contributed any examples this round, so there is nothing to aggregate"
        )
    return sorted(kept, key=lambda update: update.site_id)


def coordinatewise(
    global_state: dict[str, torch.Tensor],
    updates: list[SiteUpdate],
    reduce: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Apply `reduce` over the site axis of each tensor, in float64, and cast back.

    `reduce` receives a (sites, *shape) float64 tensor of the sites that sent
    the tensor. Integer tensors are rounded back to their dtype; tensors that
    no site sent keep their global value.
    """
    next_state: dict[str, torch.Tensor] = {}
    for name, current in global_state.items():
        values = [update.tensors[name] for update in updates if name in update.tensors]
        if not values:
            next_state[name] = current
            continue
        reduced = reduce(torch.stack([value.to(torch.float64) for value in values]))
        if not current.is_floating_point():
            reduced = torch.round(reduced)
        next_state[name] = reduced.to(current.dtype)
    return next_state
