"""Registry of the networks a federation may train, by name."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

InputKind = Literal["tabular", "image2d", "image3d"]
TaskKind = Literal["binary_classification", "segmentation"]


@dataclass(frozen=True)
class ModelSpec:
    """A network's name, the factory that builds it and the input contract it expects."""

    name: str
    factory: str  # "module:function", imported only when the model is built
    input_kind: InputKind
    task: TaskKind
    description: str

    def load_factory(self) -> Callable[..., torch.nn.Module]:
        module_name, _, attribute = self.factory.partition(":")
        return getattr(importlib.import_module(module_name), attribute)


MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in MODELS:
        raise ValueError(f"model {spec.name!r} is already registered")
    MODELS[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(
            f"unknown model {name!r}; registered models: {', '.join(sorted(MODELS))}"
        ) from None


def build_model(name: str, **kwargs: Any) -> torch.nn.Module:
    """Build the registered model `name` with its keyword options."""
    return get_spec(name).load_factory()(**kwargs)


register_model(
    ModelSpec(
        name="logistic_regression",
        factory="medfed.models.tabular:LogisticRegression",
        input_kind="tabular",
        task="binary_classification",
        description="One linear layer with a sigmoid output; input: float features (in_features).",
    )
)
register_model(
    ModelSpec(
        name="mlp",
        factory="medfed.models.tabular:MLP",
        input_kind="tabular",
        task="binary_classification",
        description="Small multilayer perceptron; input: float features (in_features).",
    )
)
register_model(
    ModelSpec(
        name="densenet121_2d",
        factory="medfed.models.imaging:densenet121_2d",
        input_kind="image2d",
        task="binary_classification",
        description=(
            "MONAI DenseNet121, one logit per image; input: float32 (batch, in_channels, height, width), "
            "intensities scaled to about [0, 1]."
        ),
    )
)
register_model(
    ModelSpec(
        name="unet",
        factory="medfed.models.imaging:unet",
        input_kind="image2d",
        task="segmentation",
        description=(
            "MONAI UNet with instance normalisation, one logit map per class; input: float32 "
            "(batch, in_channels, height, width) with height and width divisible by 8 (three strides of 2); "
            "spatial_dims=3 takes volumes."
        ),
    )
)
