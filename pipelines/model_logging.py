"""Log the final global model to MLflow as a pyfunc from code, and register it."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
import torch
from mlflow.models import infer_signature
from safetensors.torch import save_file

from medfed.sites.job import ModelRequest
from medfed.sites.preprocessing import PreprocessingPlan

logger = logging.getLogger(__name__)

SERVING_CODE = Path(__file__).with_name("serving_model.py")


def example_input(plan: PreprocessingPlan) -> pd.DataFrame:
    """One synthetic input row built from the federated means, never from a patient."""
    features = plan.features
    row: dict[str, float] = {}
    for column in [*features.numeric, *features.binary]:
        row[column] = round(plan.means[column], 3)
    for column, levels in features.categorical.items():
        row[column] = float(levels[0])
    return pd.DataFrame([row], columns=features.columns)


def log_final_model(
    tracking_uri: str,
    run_id: str,
    state: dict[str, torch.Tensor],
    model: ModelRequest,
    plan: PreprocessingPlan,
    registered_name: str | None,
) -> mlflow.models.model.ModelInfo:
    """Log `state` as the run's model `model`, with signature and input example, and register it."""
    mlflow.set_tracking_uri(tracking_uri)
    example = example_input(plan)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
        card = Path(tmp) / "model_card.json"
        card.write_text(json.dumps({
            "model": model.model_dump(),
            "preprocessing": plan.model_dump(mode="json"),
            "output": "probability of the positive class",
        }, indent=2))
        from medfed.models import build_model
        from medfed.sites.preprocessing import transform

        network = build_model(model.name, **model.kwargs)
        network.load_state_dict(state)
        network.eval()
        with torch.no_grad():
            output = torch.sigmoid(network(transform(example, plan))).numpy()
        signature = infer_signature(example, pd.Series(output, name="probability"))
        with mlflow.start_run(run_id=run_id, log_system_metrics=False):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(SERVING_CODE),
                artifacts={"weights": str(weights), "model_card": str(card)},
                signature=signature,
                input_example=example,
                registered_model_name=registered_name,
                pip_requirements=["medfed", "torch", "safetensors", "pandas"],
            )
    logger.info("final model logged as %s (registered as %s)", info.model_uri, registered_name)
    return info
