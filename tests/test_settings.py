"""Importing medfed switches Prefect and MLflow to offline defaults, and user settings win."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

KEYS = ("PREFECT_SERVER_ANALYTICS_ENABLED", "DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY", "PREFECT_HOME",
        "MPLCONFIGDIR")


def _environment_after_import(tmp_path: Path, extra: dict[str, str]) -> dict[str, str]:
    code = f"import json, os, medfed; print(json.dumps({{k: os.environ.get(k) for k in {KEYS!r}}}))"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MEDFED_HOME": str(tmp_path / "home"), **extra}
    output = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(output.stdout)


def test_import_turns_telemetry_off(tmp_path: Path) -> None:
    values = _environment_after_import(tmp_path, {})
    assert values["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert values["DO_NOT_TRACK"] == "true"
    assert values["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert values["PREFECT_HOME"] == str(tmp_path / "home" / "prefect")
    assert Path(values["PREFECT_HOME"]).is_dir()


def test_user_setting_is_kept(tmp_path: Path) -> None:
    values = _environment_after_import(tmp_path, {"PREFECT_HOME": str(tmp_path / "mine")})
    assert values["PREFECT_HOME"] == str(tmp_path / "mine")
    assert values["DO_NOT_TRACK"] == "true"
