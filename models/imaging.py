"""Imaging networks from MONAI: a 2D DenseNet121 classifier and a UNet for segmentation.

This module imports MONAI (seconds); the registry imports it only when one
of these models is built.
"""

from __future__ import annotations

import torch
from monai.networks.nets import DenseNet121, UNet
from torch import nn


class DenseNetClassifier2D(nn.Module):
    """DenseNet121 on (batch, channels, height, width) images; returns one logit per image."""

    def __init__(self, in_channels: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=1, dropout_prob=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def densenet121_2d(in_channels: int = 1, dropout: float = 0.0) -> nn.Module:
    """Build the 2D DenseNet121 binary classifier."""
    return DenseNetClassifier2D(in_channels=in_channels, dropout=dropout)


def unet(
    spatial_dims: int = 2,
    in_channels: int = 1,
    out_channels: int = 1,
    channels: tuple[int, ...] = (16, 32, 64, 128),
    strides: tuple[int, ...] = (2, 2, 2),
    num_res_units: int = 2,
) -> nn.Module:
    """Build a MONAI UNet that returns one logit map per output channel (apply a sigmoid for p).

    Use instance normalisation, MONAI's default, so no running statistics
    (integer BatchNorm buffers) need aggregating across sites.
    """
    return UNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=channels,
        strides=strides,
        num_res_units=num_res_units,
    )
