"""`medfed run` from a YAML file: progress, final table and the MLflow pointer."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from medfed.cli import app


def test_run_prints_table_and_registers_model(site_factory, tmp_path: Path) -> None:
    sites = [str(site_factory(s)) for s in ("cleveland", "hungarian")]
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(yaml.safe_dump({
        "study": "cli-study",
        "sites": sites,
        "data": {"dataset": "heart_disease", "features": {"numeric": ["age", "thalach"], "binary": ["sex"]}},
        "model": {"name": "logistic_regression"},
        "rounds": 2,
        "training": {"steps": 10},
        "min_sites": 2,
    }))
    result = CliRunner().invoke(app, ["run", str(experiment), "--workdir", str(tmp_path / "work")],
                                env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    output = result.output
    assert "Test accuracy of the final model" in output
    assert "Test AUC of the final model" in output
    for label in ("federated", "pooled", "local:cleveland", "local:hungarian"):
        assert label in output
    assert "Registered model 'cli-study' version 1" in output
    assert f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}" in output.replace("\n", "")
    assert (tmp_path / "work" / "mlflow.db").is_file()


def test_run_missing_file_exits_with_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_run_invalid_config_names_field(tmp_path: Path) -> None:
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text("study: bad\nsites: []\ndata: {dataset: x}\nmodel: {name: logistic_regression}\nrounds: 0\n")
    result = CliRunner().invoke(app, ["run", str(experiment)], env={"COLUMNS": "160"})
    assert result.exit_code == 2
    assert "Invalid experiment config" in result.output
    assert "rounds" in result.output


def test_run_without_quorum_exits_one(site_factory, tmp_path: Path) -> None:
    broken = site_factory("va", text="1,2,3\n", policy="refuse")
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(yaml.safe_dump({
        "study": "cli-quorum", "sites": [str(broken)],
        "data": {"dataset": "heart_disease", "features": {"numeric": ["age"]}},
        "model": {"name": "logistic_regression"}, "rounds": 1,
    }))
    result = CliRunner().invoke(app, ["run", str(experiment), "--workdir", str(tmp_path / "work")],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "Federation stopped" in result.output
    assert "va:" in result.output
    assert "column_present" in result.output
