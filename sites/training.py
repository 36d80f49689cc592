"""Local training and evaluation at a site.

`train_local` runs a fixed number of optimiser steps (or epochs) from the
global model; `evaluate` scores a model on the site's test split. Both return
aggregates only. The model's task (from its registry entry) chooses the loss
and the metrics: binary cross-entropy with accuracy and AUC for
classification, Dice plus binary cross-entropy with the Dice score for
segmentation.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sklearn.metrics import roc_auc_score
from torch import nn

from medfed.models.registry import TaskKind
from medfed.sites.control_variates import apply_gradient_correction
from medfed.sites.datasets import SiteDataset

logger = logging.getLogger(__name__)


class LocalTrainingConfig(BaseModel):
    """Local training settings of each site for one round."""

    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(default=100, ge=1, description="Optimiser steps per round (mini-batches).")
    epochs: int | None = Field(default=None, ge=1, description="Passes over the training split; overrides steps.")
    batch_size: int = Field(default=4, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(default=0.001, gt=0, description="Learning rate of the site optimiser.")
    momentum: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    proximal_mu: float = Field(default=0.0, ge=0, description="FedProx proximal weight; 0 disables it.")
    max_grad_norm: float | None = Field(default=None, gt=0, description="Clip gradients to this L2 norm.")
    # Set from the strategy's site hints by the centre, not by hand.
    control_variates: bool = Field(default=False, description="SCAFFOLD: correct gradients by c - c_i.")
    local_normalisation: bool = Field(default=False, description="FedBN: keep normalisation layers at the site.")
    local_key_patterns: list[str] = Field(
        default_factory=list, description="More state-dict keys (fnmatch patterns) kept at the site."
    )
    fine_tune_steps: int = Field(default=0, ge=0, description="Steps of local fine-tuning after the last round.")
    fine_tune_learning_rate: float | None = Field(
        default=None, gt=0, description="Learning rate of fine-tuning; default: lr."
    )

    @model_validator(mode="after")
    def _one_budget(self) -> LocalTrainingConfig:
        if self.steps is None and self.epochs is None:
            raise ValueError("set either training.steps or training.epochs")
        return self

    @model_validator(mode="after")
    def _control_variates_need_sgd(self) -> LocalTrainingConfig:
        # The control-variate update (x - y) / (K * lr) assumes K steps of plain SGD.
        if self.control_variates and (self.optimizer != "sgd" or self.momentum != 0 or self.weight_decay != 0):
            raise ValueError(
                "SCAFFOLD's control variates need plain SGD: set training.optimizer to 'sgd' with "
                f"momentum 0 and weight_decay 0 (got {self.optimizer!r}, momentum {self.momentum}, "
                f"weight_decay {self.weight_decay})"
            )
        return self

    @property
    def keeps_local_layers(self) -> bool:
        return self.local_normalisation or bool(self.local_key_patterns)

    def num_steps(self, num_train: int) -> int:
        if self.epochs is not None:
            return self.epochs * max(1, math.ceil(num_train / self.batch_size))
        assert self.steps is not None
        return self.steps


@dataclass(frozen=True)
class TrainResult:
    num_examples: int
    steps: int
    mean_loss: float


class DiceBCELoss(nn.Module):
    """Soft Dice loss plus binary cross-entropy on (batch, 1, height, width) logit maps and 0/1 masks.

    The Dice term is computed per image and averaged over the batch. The
    smoothing term makes an empty prediction of an empty mask score a loss of
    0 instead of 0/0, and the cross-entropy term keeps gradients on images
    without foreground.
    """

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        self.smooth = smooth
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probabilities = torch.sigmoid(logits).flatten(1)
        flat_target = target.flatten(1)
        overlap = (probabilities * flat_target).sum(dim=1)
        sizes = probabilities.sum(dim=1) + flat_target.sum(dim=1)
        dice = (2 * overlap + self.smooth) / (sizes + self.smooth)
        return (1 - dice).mean() + self.bce(logits, target)


def loss_for(task: TaskKind) -> nn.Module:
    """Return the training loss of a model's task."""
    if task == "segmentation":
        return DiceBCELoss()
    return nn.BCEWithLogitsLoss()


def make_optimizer(model: nn.Module, config: LocalTrainingConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def train_local(
    model: nn.Module,
    data: SiteDataset,
    config: LocalTrainingConfig,
    generator: torch.Generator,
    gradient_correction: dict[str, torch.Tensor] | None = None,
    task: TaskKind = "binary_classification",
) -> TrainResult:
    """Train `model` in place on the site's training split and return aggregates.

    With `proximal_mu > 0` the loss adds mu/2 * ||w - w_global||^2, where
    w_global is the model's state on entry (FedProx). `gradient_correction`
    is added to each named parameter's gradient before every step (SCAFFOLD's
    c - c_i, from `medfed.sites.control_variates`).
    """
    if data.num_train == 0:
        return TrainResult(num_examples=0, steps=0, mean_loss=float("nan"))
    loss_fn = loss_for(task)
    optimizer = make_optimizer(model, config)
    anchor = [p.detach().clone() for p in model.parameters()] if config.proximal_mu > 0 else None
    steps = config.num_steps(data.num_train)
    batches = data.train_batches(config.batch_size, generator)
    model.train()
    total_loss = 0.0
    for _ in range(steps):
        x, y = next(batches)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        total_loss += float(loss.detach())
        if anchor is not None:
            proximal = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True))
            loss = loss + 0.5 * config.proximal_mu * proximal
        loss.backward()
        if gradient_correction is not None:
            apply_gradient_correction(model, gradient_correction)
        if config.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
    return TrainResult(num_examples=data.num_train, steps=steps, mean_loss=total_loss / steps)


@torch.no_grad()
def predict_proba(model: nn.Module, data: SiteDataset, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Return the test split's predicted probabilities and targets (labels, or masks for segmentation)."""
    model.eval()
    probabilities: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for x, y in data.test_batches(batch_size):
        probabilities.append(torch.sigmoid(model(x)).numpy())
        labels.append(y.numpy())
    if not labels:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(probabilities), np.concatenate(labels)


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, AUC (when both classes are present) and log loss of binary predictions."""
    metrics: dict[str, float] = {"num_examples": float(len(labels))}
    if len(labels) == 0:
        return metrics
    predictions = (probabilities >= threshold).astype(float)
    metrics["accuracy"] = float((predictions == labels).mean())
    clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
    metrics["loss"] = float(-(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped)).mean())
    if 0 < labels.sum() < len(labels):
        metrics["auc"] = float(roc_auc_score(labels, probabilities))
    return metrics


def segmentation_metrics(probabilities: np.ndarray, masks: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Return the mean Dice score per image and the pixel log loss of (images, ...) probability maps.

    `masks` has the shape of `probabilities` and holds 0 or 1 per pixel.

    An image whose mask and thresholded prediction are both empty scores a
    Dice of 1, because the prediction is right.
    """
    metrics: dict[str, float] = {"num_examples": float(len(masks))}
    if len(masks) == 0:
        return metrics
    predicted = (probabilities >= threshold).reshape(len(masks), -1)
    truth = masks.reshape(len(masks), -1) > 0.5
    overlap = (predicted & truth).sum(axis=1)
    sizes = predicted.sum(axis=1) + truth.sum(axis=1)
    dice = np.where(sizes > 0, 2 * overlap / np.maximum(sizes, 1), 1.0)
    metrics["dice"] = float(dice.mean())
    clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
    metrics["loss"] = float(-(masks * np.log(clipped) + (1 - masks) * np.log(1 - clipped)).mean())
    return metrics


def evaluate(model: nn.Module, data: SiteDataset, task: TaskKind = "binary_classification") -> dict[str, float]:
    """Score the model on the site's test split with its task's metrics."""
    probabilities, labels = predict_proba(model, data)
    if task == "segmentation":
        return segmentation_metrics(probabilities, labels)
    return classification_metrics(probabilities, labels)


def fine_tune_and_evaluate(
    model: nn.Module,
    data: SiteDataset,
    config: LocalTrainingConfig,
    generator: torch.Generator,
    task: TaskKind = "binary_classification",
) -> dict[str, float]:
    """Score the model, fine-tune it in place for `fine_tune_steps`, and score it again.

    Returns the test metrics prefixed `before_fine_tuning/` and
    `after_fine_tuning/`. Fine-tuning uses plain local training: no proximal
    term and no control variates.
    """
    before = evaluate(model, data, task)
    if config.fine_tune_steps > 0 and data.num_train > 0:
        tuning = config.model_copy(update={
            "steps": config.fine_tune_steps,
            "epochs": None,
            "lr": config.fine_tune_learning_rate or config.lr,
            "proximal_mu": 0.0,
            "control_variates": False,
        })
        train_local(model, data, tuning, generator, task=task)
    after = evaluate(model, data, task)
    metrics = {f"before_fine_tuning/{name}": value for name, value in before.items()}
    metrics.update({f"after_fine_tuning/{name}": value for name, value in after.items()})
    return metrics
