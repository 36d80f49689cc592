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


def _experiment(tmp_path: Path, sites: list[str], **overrides) -> Path:
    raw = {
        "study": "cli-preflight", "sites": sites,
        "data": {"dataset": "heart_disease", "features": {"numeric": ["age", "thalach"]}},
        "model": {"name": "logistic_regression"}, "rounds": 1, "min_sites": 1,
    }
    raw.update(overrides)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run_preflight(path: Path, *extra: str):
    return CliRunner().invoke(app, ["run", str(path), "--no-baselines", *extra], env={"COLUMNS": "200"})


def test_preflight_lists_every_problem(site_factory, tmp_path: Path) -> None:
    site = str(site_factory("cleveland"))
    path = _experiment(tmp_path, [site], model={"name": "resnet9000"}, strategy={"name": "fedmagic"},
                       min_sites=3)
    result = _run_preflight(path)
    assert result.exit_code == 2
    assert "cannot start" in result.output
    assert "unknown model 'resnet9000'" in result.output
    assert "unknown strategy 'fedmagic'" in result.output
    assert "min_sites: 3 is more than the 1 site(s) listed" in result.output
    assert "Federation" not in result.output  # nothing started


def test_preflight_names_both_files_of_duplicate_site(site_factory, tmp_path: Path) -> None:
    first = site_factory("cleveland")
    second = tmp_path / "copy.yaml"
    second.write_text(first.read_text().replace("data_root: data", f"data_root: {first.parent / 'data'}"))
    result = _run_preflight(_experiment(tmp_path, [str(first), str(second)]))
    assert result.exit_code == 2
    assert "site id 'cleveland' is used by both" in result.output
    assert str(second) in result.output.replace("\n", "")


def test_preflight_rejects_label_as_feature(site_factory, tmp_path: Path) -> None:
    path = _experiment(tmp_path, [str(site_factory("va"))],
                       data={"dataset": "heart_disease", "features": {"numeric": ["age", "num"]}})
    result = _run_preflight(path)
    assert result.exit_code == 2
    assert "['num'] is the label column" in result.output


def test_preflight_rejects_unreachable_tracking_server(site_factory, tmp_path: Path) -> None:
    result = _run_preflight(_experiment(tmp_path, [str(site_factory("va"))]),
                            "--tracking-uri", "http://127.0.0.1:9")
    assert result.exit_code == 2
    assert "MLflow server at http://127.0.0.1:9 is not reachable" in result.output


def test_invalid_yaml_reported_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "experiment.yaml"
    path.write_text("study: [unclosed\n")
    result = _run_preflight(path)
    assert result.exit_code == 2
    assert "is not valid YAML" in result.output
    assert "Traceback" not in result.output
