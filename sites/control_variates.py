"""SCAFFOLD at the site: the gradient correction and the control-variate update.

Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020 (Algorithm 1, option II). The site keeps its control
variate c_i in its own state folder; the centre sends its control variate c.
Every local step uses the corrected gradient g + (c - c_i). After K steps of
plain SGD with learning rate lr, from the global weights x to the local
weights y, the site sets c_i(new) = c_i - c + (x - y) / (K * lr) and sends
the change c_i(new) - c_i to the centre. A missing tensor in c or c_i reads
as zeros, which is how both start.
"""

from __future__ import annotations

import torch
from torch import nn

ControlVariate = dict[str, torch.Tensor]


def gradient_correction(model: nn.Module, server: ControlVariate, site: ControlVariate) -> ControlVariate:
    """Return c - c_i for each trainable parameter of `model`."""
    correction: ControlVariate = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        value = torch.zeros_like(parameter, dtype=torch.float32)
        if name in server:
            value = value + server[name].to(value.dtype)
        if name in site:
            value = value - site[name].to(value.dtype)
        correction[name] = value.to(parameter.dtype)
    return correction


def apply_gradient_correction(model: nn.Module, correction: ControlVariate) -> None:
    """Add the correction to each parameter's gradient, in place, after `backward`."""
    for name, parameter in model.named_parameters():
        if parameter.grad is not None and name in correction:
            parameter.grad.add_(correction[name])


def next_control_variate(
    site: ControlVariate,
    server: ControlVariate,
    global_parameters: ControlVariate,
    local_parameters: ControlVariate,
    *,
    steps: int,
    learning_rate: float,
) -> tuple[ControlVariate, ControlVariate]:
    """Return the site's new control variate and its change, for every parameter trained.

    Raises ValueError when no step was taken, because (x - y) / (K * lr) is
    then undefined. A site without examples sends no control-variate change.
    """
    if steps <= 0 or learning_rate <= 0:
        raise ValueError(f"control-variate update needs steps > 0 and learning_rate > 0, got {steps} and {learning_rate}")
    scale = 1.0 / (steps * learning_rate)
    updated: ControlVariate = {}
    change: ControlVariate = {}
    for name, local in local_parameters.items():
        previous = site.get(name, torch.zeros_like(local))
        server_value = server.get(name, torch.zeros_like(local))
        updated[name] = previous - server_value + (global_parameters[name] - local) * scale
        change[name] = updated[name] - previous
    return updated, change
