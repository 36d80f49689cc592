"""MLflow records of a federation: params, contracts, per-round metrics, models.

Every call goes through `MlflowClient` with an explicit run id, because the
fluent API's active run is per thread and Prefect runs tasks in threads. Only
aggregates reach MLflow: metrics, counts, hashes, contract reports (which hold
row numbers, not values) and model weights.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from medfed.data_contracts.report import ContractReport

logger = logging.getLogger(__name__)

# MLflow rejects param values longer than this (mlflow.utils.validation, MLflow 3.x).
MAX_PARAM_VALUE_LENGTH = 6000
# log_batch accepts at most this many params per call (MLflow REST API limit).
MAX_PARAMS_PER_BATCH = 100


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested config into dotted keys with string values."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            text = json.dumps(value, default=str) if not isinstance(value, str) else value
            flat[name] = text[:MAX_PARAM_VALUE_LENGTH]
    return flat


def ensure_experiment(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """Return the id of experiment `name`, creating it with a local artifact root if given."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = artifact_root.resolve().joinpath(name).as_uri() if artifact_root is not None else None
    return client.create_experiment(name, artifact_location=location)


def local_artifact_root(tracking_uri: str, workdir: Path) -> Path | None:
    """Artifacts of a local SQLite store go beside it; a tracking server decides for itself."""
    if tracking_uri.startswith("sqlite:"):
        return workdir / "mlartifacts"
    return None


class RunLogger:
    """Write to one MLflow run by id."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    @classmethod
    def start(
        cls,
        tracking_uri: str,
        experiment: str,
        *,
        run_name: str,
        tags: dict[str, str],
        artifact_root: Path | None,
    ) -> RunLogger:
        client = MlflowClient(tracking_uri=tracking_uri)
        experiment_id = ensure_experiment(client, experiment, artifact_root)
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        logger.info("MLflow run %s started in experiment %r (%s)", run.info.run_id, experiment, tracking_uri)
        return cls(client, run.info.run_id)

    def log_params(self, params: dict[str, str]) -> None:
        items = [Param(k, v) for k, v in sorted(params.items())]
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + MAX_PARAMS_PER_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not metrics:
            return
        timestamp = _now_ms()
        batch = [Metric(k, float(v), timestamp, step) for k, v in sorted(metrics.items())]
        self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in sorted(tags.items())])

    def log_json(self, obj: Any, artifact_path: str) -> None:
        """Write `obj` as JSON to `artifact_path` (folder/name.json) in the run."""
        folder, _, name = artifact_path.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
            self.client.log_artifact(self.run_id, str(path), folder or None)

    def log_bytes(self, data: bytes, artifact_path: str) -> None:
        folder, _, name = artifact_path.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            self.client.log_artifact(self.run_id, str(path), folder or None)

    def log_contract_report(self, site_id: str, report: ContractReport) -> None:
        self.log_json(report.model_dump(mode="json"), f"sites/{site_id}/contract_report.json")

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def set_tracking_uri(uri: str) -> None:
    """Point the fluent API (used only for model logging) at `uri`."""
    mlflow.set_tracking_uri(uri)
