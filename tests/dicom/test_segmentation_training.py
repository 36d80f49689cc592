"""Segmentation at the site: Dice plus BCE loss, the Dice metric, and the task chosen from the model registry."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from medfed.models import build_model, get_spec
from medfed.sites.training import (
    DiceBCELoss,
    LocalTrainingConfig,
    evaluate,
    loss_for,
    segmentation_metrics,
    train_local,
)


class SquareMasks:
    """Eight 16 x 16 images with a bright square whose pixels are the mask; the same split for test."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.masks = torch.zeros(8, 1, 16, 16)
        for k in range(8):
            row, column = (int(v) for v in torch.randint(2, 10, (2,), generator=generator))
            self.masks[k, 0, row : row + 4, column : column + 4] = 1.0
        self.images = 0.2 + 0.6 * self.masks + 0.05 * torch.randn(8, 1, 16, 16, generator=generator)
        self.num_train = self.num_test = 8

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            order = torch.randperm(8, generator=generator)
            for start in range(0, 8, batch_size):
                yield self.images[order[start : start + batch_size]], self.masks[order[start : start + batch_size]]

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield self.images, self.masks


def test_dice_metric_exact_values() -> None:
    masks = np.array([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    probabilities = np.array([[[0.9, 0.2], [0.1, 0.1]], [[0.1, 0.1], [0.1, 0.1]]])

    metrics = segmentation_metrics(probabilities, masks)

    # Image 1: one of two mask pixels found, no false positive: 2 * 1 / (1 + 2). Image 2: both empty: 1.
    assert metrics["dice"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert metrics["num_examples"] == 2.0
    assert "auc" not in metrics


def test_dice_loss_near_zero_when_perfect() -> None:
    target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    perfect = (target * 2 - 1) * 20  # logits of +20 on the mask, -20 elsewhere

    assert float(DiceBCELoss()(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    assert float(DiceBCELoss()(-perfect, target)) > 1.9  # Dice term near 1 plus a large BCE


def test_loss_follows_registered_task() -> None:
    assert isinstance(loss_for(get_spec("unet").task), DiceBCELoss)
    assert isinstance(loss_for(get_spec("densenet121_2d").task), nn.BCEWithLogitsLoss)


def test_unet_learns_square_masks() -> None:
    pytest.importorskip("monai")
    torch.manual_seed(0)
    model = build_model("unet", channels=(4, 8), strides=(2,), num_res_units=0)
    data = SquareMasks()
    config = LocalTrainingConfig(steps=60, batch_size=4, optimizer="adam", lr=0.01)

    before = evaluate(model, data, "segmentation")
    result = train_local(model, data, config, torch.Generator().manual_seed(1), task="segmentation")
    after = evaluate(model, data, "segmentation")

    assert result.steps == 60
    assert set(after) == {"num_examples", "dice", "loss"}
    assert after["dice"] > 0.8
    assert after["dice"] > before["dice"]
