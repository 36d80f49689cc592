"""Experiment configuration, as a researcher writes it in YAML."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from medfed.sites.config import read_yaml_mapping
from medfed.sites.datasets import DataSpec
from medfed.sites.job import ModelRequest
from medfed.sites.training import LocalTrainingConfig

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class TrackingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uri: str | None = Field(
        default=None,
        description="MLflow tracking URI; default: MLFLOW_TRACKING_URI, else sqlite:///<workdir>/mlflow.db",
    )
    registered_model: str | None = Field(default=None, description="Model registry name; default: the study.")
    log_round_models: bool = Field(default=True, description="Log each round's global model as an artifact.")


class DeployedConfig(BaseModel):
    """Settings of the deployed shape (Prefect server, site agents, MLflow server)."""

    model_config = ConfigDict(extra="forbid")

    exchange_uri: str | None = Field(
        default=None,
        description=(
            "Exchange store shared with the sites: default the MLflow server's artifact proxy; "
            "or an fsspec URL such as s3://bucket/prefix (the sites' exchange_uri must name the same store)."
        ),
    )
    poll_interval_s: float = Field(
        default=0.1, gt=0, le=60, description="Seconds between the centre's checks of the sites' flow runs."
    )
    pools: dict[str, str] = Field(
        default_factory=dict, description="Work pool per site id, where a site does not use 'medfed-<site_id>'."
    )
    central_pool: str = Field(
        default="medfed-central", description="Work pool of the central deployment (for `prefect deployment run`)."
    )


class BaselineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pooled: bool = True
    local: bool = True


class ExperimentConfig(BaseModel):
    """A federated study: sites, model, strategy, rounds and tracking."""

    model_config = ConfigDict(extra="forbid")

    study: str = Field(description="MLflow experiment name; one per study.")
    description: str = ""
    sites: list[str] = Field(description="Site config files (embedded shape) or site ids (deployed shape).")
    data: DataSpec
    model: ModelRequest
    strategy: dict[str, Any] = Field(default_factory=lambda: {"name": "fedavg"})
    rounds: int = Field(default=15, ge=1, le=10_000)
    training: LocalTrainingConfig = Field(default_factory=LocalTrainingConfig)
    seed: int = 42
    min_sites: int = Field(default=1, ge=1, description="Quorum: fewest site updates a round may aggregate.")
    round_timeout_s: float = Field(default=600.0, gt=0, description="Deadline for the sites' work in one round.")
    max_update_norm: float | None = Field(
        default=None, gt=0, description="Reject an update whose distance from the global model exceeds this."
    )
    workdir: Path = Field(default=Path(".medfed/runs"), description="Exchange store and local outputs.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    baselines: BaselineConfig = Field(default_factory=BaselineConfig)
    deployed: DeployedConfig = Field(default_factory=DeployedConfig)

    @field_validator("study")
    @classmethod
    def _check_study(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(f"study {value!r} may contain only letters, digits, '_', '.' and '-'")
        return value

    def tracking_uri(self) -> str:
        if self.tracking.uri:
            return self.tracking.uri
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        return f"sqlite:///{(self.workdir.resolve() / 'mlflow.db')}"


def load_experiment(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read an experiment YAML; relative site and workdir paths resolve against its folder."""
    path = Path(path)
    raw = read_yaml_mapping(path, "experiment config")
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    base = path.resolve().parent
    raw["sites"] = [
        str((base / s).resolve()) if str(s).endswith((".yaml", ".yml")) else s for s in raw.get("sites", [])
    ]
    if "workdir" in raw and not Path(raw["workdir"]).is_absolute():
        raw["workdir"] = str(Path.cwd() / raw["workdir"])
    return ExperimentConfig.model_validate(raw)
