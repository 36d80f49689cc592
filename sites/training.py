"""Local training and evaluation at a site.

`train_local` runs a fixed number of optimiser steps (or epochs) from the
global model; `evaluate` scores a model on the site's test split. Both return
aggregates only.
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

from medfed.sites.datasets import SiteDataset

logger = logging.getLogger(__name__)


class LocalTrainingConfig(BaseModel):
    """How each site trains in one round."""

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

    @model_validator(mode="after")
    def _one_budget(self) -> LocalTrainingConfig:
        if self.steps is None and self.epochs is None:
            raise ValueError("set either training.steps or training.epochs")
        return self

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
) -> TrainResult:
    """Train `model` in place on the site's training split and return aggregates.

    With `proximal_mu > 0` the loss adds mu/2 * ||w - w_global||^2, where
    w_global is the model's state on entry (FedProx).
    """
    if data.num_train == 0:
        return TrainResult(num_examples=0, steps=0, mean_loss=float("nan"))
    loss_fn = nn.BCEWithLogitsLoss()
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
        if config.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
    return TrainResult(num_examples=data.num_train, steps=steps, mean_loss=total_loss / steps)


@torch.no_grad()
def predict_proba(model: nn.Module, data: SiteDataset, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Return the test split's predicted probabilities and labels."""
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


def evaluate(model: nn.Module, data: SiteDataset) -> dict[str, float]:
    """Score the model on the site's test split."""
    probabilities, labels = predict_proba(model, data)
    return classification_metrics(probabilities, labels)
