"""Site configuration: the one place where a hospital's local paths and limits live.

A site config is YAML written by hospital IT. Relative paths in it are
resolved against the folder of the YAML file. Flow parameters sent by the
centre never carry paths: they name a dataset, and the site maps the name to
a file here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from medfed.data_contracts.tabular import Policy

SITE_ID_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


class DatasetBinding(BaseModel):
    """A dataset the site offers: a name the centre may request, its file and its contract."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Name used in experiment configs, for example 'heart_disease'.")
    contract: str = Field(description="Contract name shipped with medfed, or a path to a YAML contract.")
    path: str = Field(description="File or folder relative to data_root.")
    synthetic: bool = Field(
        default=False,
        description=(
            "The data are generated, not taken from patients. Only then may sample images leave the "
            "site (DICOM kind), and never those of a series flagged for burned-in text."
        ),
    )


class SiteConfig(BaseModel):
    """Site declaration written by hospital IT."""

    model_config = ConfigDict(extra="forbid")

    site_id: str = Field(description="Short lowercase id, for example 'cleveland'.")
    display_name: str | None = None
    data_root: Path = Field(description="Folder holding this site's data; nothing outside it is read.")
    datasets: list[DatasetBinding]
    policy: Policy = Field(
        default=Policy.REFUSE,
        description="What to do with rows that break a contract rule: 'drop' them or 'refuse' to train.",
    )
    min_count: int = Field(
        default=10,
        ge=1,
        description="Metrics and statistics computed on fewer examples than this never leave the site.",
    )
    work_dir: Path | None = Field(
        default=None, description="Site-local state (ledger, local layers); default: <data_root>/../.medfed-site"
    )
    threads: int = Field(default=1, ge=1, description="torch CPU threads for local training.")
    device: Literal["cpu", "cuda"] = "cpu"
    # Deployed shape: where the site agent connects (outbound only).
    prefect_api_url: str | None = None
    mlflow_tracking_uri: str | None = None
    work_pool: str | None = Field(default=None, description="Prefect work pool; default 'medfed-<site_id>'.")
    allowed_models: list[str] = Field(
        default_factory=lambda: ["logistic_regression", "mlp"],
        description="Models this site agrees to train.",
    )
    allowed_flows: list[str] = Field(
        default_factory=lambda: ["site-round"], description="Site flows this site agrees to run."
    )
    exchange_uri: str | None = Field(
        default=None,
        description=(
            "Where payloads are exchanged with the centre: default (or 'mlflow-artifacts') the MLflow "
            "server's artifact proxy at mlflow_tracking_uri; or an fsspec URL such as s3://bucket/prefix."
        ),
    )
    poll_interval_s: float = Field(
        default=10.0, gt=0, le=300,
        description=(
            "Seconds between the agent's polls of its work pool. With wake_on_events the agent also "
            "polls at once when the server announces a flow run for the pool, so this is a fallback."
        ),
    )
    wake_on_events: bool = Field(
        default=True,
        description="Listen to the Prefect API's event stream and poll as soon as a flow run is scheduled.",
    )
    shutdown_grace_s: float = Field(
        default=60.0, ge=0,
        description="Seconds the agent waits, after SIGTERM, for a running job to finish before abandoning it.",
    )
    share_logs: bool = Field(
        default=False,
        description="Send the agent's flow-run log lines to the Prefect server (they hold counts and hashes).",
    )

    @field_validator("site_id")
    @classmethod
    def _check_site_id(cls, value: str) -> str:
        if not SITE_ID_PATTERN.match(value):
            raise ValueError(
                f"site_id {value!r} must start with a lowercase letter and contain only "
                "lowercase letters, digits, '-' and '_' (at most 63 characters)"
            )
        return value

    @field_validator("prefect_api_url", "mlflow_tracking_uri")
    @classmethod
    def _check_server_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"server URL {value!r} must start with http:// or https://")
        return value.rstrip("/") if value else value

    @field_validator("allowed_models", "allowed_flows")
    @classmethod
    def _check_allow_list(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("an allow-list must name at least one entry; a site that accepts nothing has no agent")
        return value

    @property
    def pool_name(self) -> str:
        return self.work_pool or f"medfed-{self.site_id}"

    @property
    def state_dir(self) -> Path:
        return (self.work_dir or self.data_root.parent / ".medfed-site" / self.site_id).resolve()

    def dataset(self, name: str) -> DatasetBinding:
        for binding in self.datasets:
            if binding.name == name:
                return binding
        offered = ", ".join(b.name for b in self.datasets) or "none"
        raise KeyError(f"site {self.site_id!r} offers no dataset {name!r} (offered: {offered})")

    def dataset_path(self, name: str) -> Path:
        """Resolve a dataset's path, rejecting one that leaves data_root."""
        root = self.data_root.resolve()
        path = (root / self.dataset(name).path).resolve()
        if not path.is_relative_to(root):
            raise ValueError(f"site {self.site_id!r}: dataset {name!r} path leaves data_root {root}")
        return path


def read_yaml_mapping(path: Path, what: str) -> dict:
    """Read a YAML file whose top level is a mapping; `what` names the file in errors."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{what} {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{what} {path} must be a YAML mapping")
    return raw


def load_site_config(path: str | Path) -> SiteConfig:
    """Read a site YAML file, resolving relative paths against its folder."""
    path = Path(path)
    raw = read_yaml_mapping(path, "site config")
    base = path.resolve().parent
    for key in ("data_root", "work_dir"):
        if raw.get(key) is not None:
            raw[key] = str((base / Path(raw[key]).expanduser()).resolve())
    return SiteConfig.model_validate(raw)
