"""Networks for tabular features. Both return one logit per row (apply a sigmoid for p)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


class LogisticRegression(nn.Module):
    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)


class MLP(nn.Module):
    """Linear, optional normalisation, ReLU, dropout, linear.

    `normalization` adds BatchNorm1d ("batch") or LayerNorm ("layer") after
    the first layer; FedBN keeps that layer at each site.

    NOTE: BatchNorm1d raises on a training batch of one row, which the last
    batch of a pass is when num_train % batch_size == 1; "layer" has no
    such limit.
    """

    def __init__(
        self,
        in_features: int,
        hidden: int = 32,
        dropout: float = 0.1,
        normalization: Literal["batch", "layer"] | None = None,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_features, hidden)]
        if normalization == "batch":
            layers.append(nn.BatchNorm1d(hidden))
        elif normalization == "layer":
            layers.append(nn.LayerNorm(hidden))
        elif normalization is not None:
            raise ValueError(f"normalization must be 'batch', 'layer' or None, got {normalization!r}")
        layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)
