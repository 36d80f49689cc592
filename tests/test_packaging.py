"""The repository layout keeps `mlflow/` a folder of server set-up, never a package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_mlflow_import_from_repo_root_is_real_library() -> None:
    code = "import mlflow, sys; print(mlflow.__file__); print(mlflow.__version__); print(sys.path[0])"
    output = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    module_file, version, first_path = output
    assert first_path == ""  # the repo root (cwd) is searched first
    assert "site-packages" in module_file
    assert not Path(module_file).is_relative_to(REPO / "mlflow")
    assert version[0].isdigit()


def test_mlflow_folder_holds_no_python_package() -> None:
    folder = REPO / "mlflow"
    assert folder.is_dir()
    assert not (folder / "__init__.py").exists()
    assert not list(folder.rglob("*.py"))


def test_cli_entry_point_lists_commands() -> None:
    output = subprocess.run(
        [sys.executable, "-m", "medfed.cli", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    for command in ("run", "demo", "site"):
        assert command in output
