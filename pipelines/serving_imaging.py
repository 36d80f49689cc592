"""MLflow pyfunc wrapper of a federated 2D imaging model, logged as code (no pickle).

MLflow logs this file itself as the model's code ("models from code"), and
the weights as a safetensors artifact beside a JSON model card. Loading the
model runs this file and reads those two artifacts; nothing is unpickled.

Input: float32 images of shape (batch, channels, rows, columns), already
preprocessed as the sites preprocess them. The model card's `preprocessing`
records how: the modality values (HU for CT) windowed to [0, 1], resampled to
the target spacing, then padded or cropped to the image size. Output: per
image the probability of the positive class (classification), or per pixel
the probability of the foreground as (batch, channels, rows, columns)
(segmentation).
"""

from __future__ import annotations

import json
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel, PythonModelContext
from safetensors.torch import load_file

from medfed.models import build_model


class FederatedImagingModel(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        with open(context.artifacts["model_card"]) as handle:
            card = json.load(handle)
        self.model = build_model(card["model"]["name"], **card["model"]["kwargs"])
        self.model.load_state_dict(load_file(context.artifacts["weights"]), strict=True)
        self.model.eval()

    # model_input carries no type hint: MLflow 3 reads a hint on predict as an input schema and
    # accepts only list[...] there, while this model takes one (batch, channels, rows, columns) array.
    def predict(self, context: PythonModelContext, model_input, params: dict[str, Any] | None = None) -> np.ndarray:  # noqa: ANN001
        images = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        if images.ndim != 4:
            raise ValueError(
                f"model input has shape {tuple(images.shape)}; expected (batch, channels, rows, columns)"
            )
        with torch.no_grad():
            return torch.sigmoid(self.model(images)).numpy()


mlflow.models.set_model(FederatedImagingModel())
