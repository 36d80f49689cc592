"""Log the final global model to MLflow as a pyfunc from code, and register it.

Tabular models take a DataFrame of the contract's feature columns
(`serving_model.py`); 2D imaging models take preprocessed image arrays
(`serving_imaging.py`). Both store their weights as safetensors beside a JSON
model card, and both log an input example that is generated, never a
patient's row or image.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import infer_signature
from safetensors.torch import save_file

from medfed import __version__
from medfed.models import build_model, get_spec
from medfed.sites.datasets import DataSpec
from medfed.sites.job import ModelRequest
from medfed.sites.preprocessing import PreprocessingPlan

logger = logging.getLogger(__name__)

SERVING_CODE = Path(__file__).with_name("serving_model.py")
IMAGING_SERVING_CODE = Path(__file__).with_name("serving_imaging.py")


def example_input(plan: PreprocessingPlan) -> pd.DataFrame:
    """One synthetic input row built from the federated means, never from a patient."""
    features = plan.features
    row: dict[str, float] = {}
    for column in [*features.numeric, *features.binary]:
        row[column] = round(plan.means[column], 3)
    for column, levels in features.categorical.items():
        row[column] = float(levels[0])
    return pd.DataFrame([row], columns=features.columns)


@contextmanager
def tracking_uri_for_logging(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at `tracking_uri`, then restore the MLFLOW_TRACKING_URI variable.

    `mlflow.set_tracking_uri` also writes the environment variable (MLflow
    3.17), which a later federation in the same process would read as its
    default tracking URI.
    """
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


def log_final_model(
    tracking_uri: str,
    run_id: str,
    state: dict[str, torch.Tensor],
    model: ModelRequest,
    plan: PreprocessingPlan,
    registered_name: str | None,
    data: DataSpec | None = None,
) -> mlflow.models.model.ModelInfo:
    """Log `state` as the run's model `model`, with signature and input example, and register it.

    `data` is the experiment's data spec; imaging models need it for the
    image size and preprocessing recorded in the model card.
    """
    with tracking_uri_for_logging(tracking_uri):
        if get_spec(model.name).input_kind == "image2d":
            return log_imaging_model(run_id, state, model, data, registered_name)
        return log_tabular_model(run_id, state, model, plan, registered_name)


def _log_pyfunc_from_code(
    run_id: str,
    code: Path,
    weights: Path,
    card: Path,
    signature: mlflow.models.ModelSignature,
    example: object,
    registered_name: str | None,
    extra_requirements: list[str],
) -> mlflow.models.model.ModelInfo:
    """Log `code` as the run's pyfunc model with its safetensors weights and model card, and register it."""
    with mlflow.start_run(run_id=run_id, log_system_metrics=False):
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(code),
            artifacts={"weights": str(weights), "model_card": str(card)},
            signature=signature,
            input_example=example,
            registered_model_name=registered_name,
            pip_requirements=[f"medfed=={__version__}", "torch", "safetensors", *extra_requirements],
        )


def log_tabular_model(
    run_id: str,
    state: dict[str, torch.Tensor],
    model: ModelRequest,
    plan: PreprocessingPlan,
    registered_name: str | None,
) -> mlflow.models.model.ModelInfo:
    """Log a tabular model as a pyfunc from code with an input row built from the federated means."""
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
        from medfed.sites.preprocessing import transform

        network = build_model(model.name, **model.kwargs)
        network.load_state_dict(state)
        network.eval()
        with torch.no_grad():
            output = torch.sigmoid(network(transform(example, plan))).numpy()
        signature = infer_signature(example, pd.Series(output, name="probability"))
        info = _log_pyfunc_from_code(run_id, SERVING_CODE, weights, card, signature, example, registered_name,
                                     ["pandas"])
    logger.info("final model logged as %s (registered as %s)", info.model_uri, registered_name)
    return info


def synthetic_image_example(channels: int, size: int) -> np.ndarray:
    """Return one generated (1, channels, size, size) float32 image: a centred disc of 0.5 on 0."""
    centre = (size - 1) / 2
    rows, columns = np.meshgrid(np.arange(size) - centre, np.arange(size) - centre, indexing="ij")
    disc = np.where(rows**2 + columns**2 <= (size / 4) ** 2, 0.5, 0.0).astype(np.float32)
    return np.broadcast_to(disc, (1, channels, size, size)).copy()


def log_imaging_model(
    run_id: str,
    state: dict[str, torch.Tensor],
    model: ModelRequest,
    data: DataSpec | None,
    registered_name: str | None,
) -> mlflow.models.model.ModelInfo:
    """Log a 2D imaging model as a pyfunc from code with a generated input example, and register it."""
    if data is None:
        raise ValueError(f"model {model.name!r} takes images: pass the experiment's data spec to log it")
    if data.kind != "dicom":
        raise ValueError(f"imaging model {model.name!r} was trained on data kind {data.kind!r}; expected 'dicom'")
    from medfed.sites.dicom.dataset import DicomDataOptions  # imports MONAI, as the model itself does

    options = DicomDataOptions.model_validate(data.options).model_dump(mode="json")
    size = int(options["image_size"])
    channels = int(model.kwargs.get("in_channels", 1))
    task = get_spec(model.name).task
    example = synthetic_image_example(channels, size)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
        card = Path(tmp) / "model_card.json"
        card.write_text(json.dumps({
            "model": model.model_dump(),
            "task": task,
            "data_kind": data.kind,
            "preprocessing": options,
            "input": "float32 (batch, channels, rows, columns), preprocessed as in `preprocessing`",
            "output": ("probability of the positive class per image" if task == "binary_classification"
                       else "foreground probability per pixel"),
        }, indent=2, default=str))
        network = build_model(model.name, **model.kwargs)
        network.load_state_dict(state)
        network.eval()
        with torch.no_grad():
            output = torch.sigmoid(network(torch.from_numpy(example))).numpy()
        signature = infer_signature(example, output)
        info = _log_pyfunc_from_code(run_id, IMAGING_SERVING_CODE, weights, card, signature, example,
                                     registered_name, ["numpy", "monai"])
    logger.info("final imaging model logged as %s (registered as %s)", info.model_uri, registered_name)
    return info
