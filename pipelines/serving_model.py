"""MLflow pyfunc wrapper of a federated tabular model, logged as code (no pickle).

MLflow logs this file itself as the model's code ("models from code"), and
the weights as a safetensors artifact beside a JSON model card. Loading the
model runs this file and reads those two artifacts; nothing is unpickled.
Input: a DataFrame with the contract's feature columns (missing values as
NaN). Output: the probability of the positive class per row.
"""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel, PythonModelContext
from safetensors.torch import load_file

from medfed.models import build_model
from medfed.sites.preprocessing import PreprocessingPlan, transform


class FederatedTabularClassifier(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        card = json.loads(open(context.artifacts["model_card"]).read())
        self.plan = PreprocessingPlan.model_validate(card["preprocessing"])
        self.model = build_model(card["model"]["name"], **card["model"]["kwargs"])
        self.model.load_state_dict(load_file(context.artifacts["weights"]), strict=True)
        self.model.eval()

    def predict(self, context: PythonModelContext, model_input: pd.DataFrame, params=None) -> pd.Series:
        frame = model_input.astype(float)
        with torch.no_grad():
            probabilities = torch.sigmoid(self.model(transform(frame, self.plan))).numpy()
        return pd.Series(probabilities, index=model_input.index, name="probability")


mlflow.models.set_model(FederatedTabularClassifier())
