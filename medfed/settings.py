"""Process-wide settings that must be in place before Prefect or MLflow import."""

from __future__ import annotations

import os
from pathlib import Path

# Environment defaults that keep Prefect and MLflow offline. Each one is set
# only when the user has not set it, so a deployment can still override it.
OFFLINE_ENV_DEFAULTS: dict[str, str] = {
    # Prefect server analytics and client-side telemetry.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # Honoured by MLflow (only the value "true") and by Prefect.
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # A cold start of Prefect's temporary server took 15 s on a busy 2-core
    # machine; the 20 s default leaves too little margin.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # Keep Prefect's own logs quiet in the terminal; medfed logs its lifecycle.
    "PREFECT_LOGGING_LEVEL": "WARNING",
    # No UI build or version check for the temporary server.
    "PREFECT_UI_ENABLED": "false",
    "PREFECT_SERVER_UI_ENABLED": "false",
    # MLflow 3 starts background job workers in `mlflow server` by default.
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    # Git lookups for run tags are slow and pointless inside a hospital.
    "GIT_PYTHON_REFRESH": "quiet",
    "MLFLOW_TRACKING_INSECURE_TLS": "false",
    "TOKENIZERS_PARALLELISM": "false",
}


def medfed_home() -> Path:
    """Return the folder for medfed's local state (Prefect home, caches, runs).

    `MEDFED_HOME` sets it; the default is `.medfed` in the working directory.
    """
    return Path(os.environ.get("MEDFED_HOME", Path.cwd() / ".medfed")).resolve()


def apply_offline_defaults() -> None:
    """Set the offline environment defaults and the state folders, once per process."""
    for key, value in OFFLINE_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    home = medfed_home()
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.environ.setdefault("MPLCONFIGDIR", str(home / "matplotlib"))
    for key in ("PREFECT_HOME", "MPLCONFIGDIR"):
        Path(os.environ[key]).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MPLBACKEND", "Agg")
