"""Experiment and site config loading: path resolution, tracking URI choice, rejections."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from medfed.pipelines.config import load_experiment
from medfed.sites.config import load_site_config

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "heart_disease" / "experiment.yaml"


def test_example_sites_resolve_next_to_yaml() -> None:
    config = load_experiment(EXAMPLE)
    assert [Path(s).name for s in config.sites] == ["cleveland.yaml", "hungarian.yaml", "switzerland.yaml", "va.yaml"]
    assert all(Path(s).is_absolute() and Path(s).is_file() for s in config.sites)


def test_site_data_root_resolves_to_own_folder() -> None:
    site = load_site_config(REPO / "examples" / "heart_disease" / "sites" / "va.yaml")
    assert site.data_root == REPO / "data" / "heart_disease" / "va"
    assert site.dataset_path("heart_disease") == site.data_root / "processed.va.data"


def test_tracking_uri_defaults_to_sqlite_in_workdir(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = load_experiment(EXAMPLE, {"workdir": str(tmp_path)})
    assert config.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_tracking_uri_environment_overrides_default(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    config = load_experiment(EXAMPLE, {"workdir": str(tmp_path)})
    assert config.tracking_uri() == "http://127.0.0.1:5999"


def test_unknown_experiment_key_rejected(tmp_path: Path) -> None:
    path = tmp_path / "experiment.yaml"
    path.write_text(EXAMPLE.read_text() + "learning_rate: 0.1\n")
    with pytest.raises(ValidationError, match="learning_rate"):
        load_experiment(path)


def test_zero_rounds_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="rounds"):
        load_experiment(EXAMPLE, {"rounds": 0})


def test_invalid_study_name_rejected(tmp_path: Path) -> None:
    path = tmp_path / "experiment.yaml"
    path.write_text(EXAMPLE.read_text().replace("study: heart-disease", "study: heart disease/2"))
    with pytest.raises(ValidationError, match="study"):
        load_experiment(path)
