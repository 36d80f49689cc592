"""Apply a server-side step to the sites' averaged update (FedAvgM, FedOpt, SCAFFOLD)."""

from __future__ import annotations

from collections.abc import Callable

import torch

# Maps (tensor name, averaged change d = average - global) to the step the centre adds.
ServerStep = Callable[[str, torch.Tensor], torch.Tensor]


def apply_server_step(
    global_state: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
    step: ServerStep,
) -> dict[str, torch.Tensor]:
    """Move each floating tensor that the sites sent by `step(name, target - current)`.

    Integer tensors (counters such as BatchNorm's `num_batches_tracked`) take
    the averaged value in their own dtype; tensors that no site sent keep
    their global value.
    """
    next_state: dict[str, torch.Tensor] = {}
    for name, current in global_state.items():
        if name not in target:
            next_state[name] = current
        elif not current.is_floating_point():
            next_state[name] = target[name]
        else:
            next_state[name] = current + step(name, target[name] - current)
    return next_state
