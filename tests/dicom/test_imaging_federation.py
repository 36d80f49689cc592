"""A real embedded imaging federation: synthetic DICOM sites, DenseNet121, MLflow on SQLite."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
from imaging_sites import SITES, imaging_config, write_site_configs, write_synthetic_sites
from mlflow.tracking import MlflowClient
from rich.console import Console

from medfed.cli import results_table
from medfed.pipelines.config import ExperimentConfig
from medfed.pipelines.federation import FederationSummary, check_model_fits_data, federation_flow
from medfed.pipelines.model_logging import synthetic_image_example

pytest.importorskip("monai")

# site_c's data are declared real, so it must never send sample images.
SYNTHETIC = {"site_a": True, "site_b": True, "site_c": False}


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> tuple[ExperimentConfig, FederationSummary]:
    tmp_path = tmp_path_factory.mktemp("imaging")
    data = write_synthetic_sites(tmp_path / "data")
    site_configs = write_site_configs(data, tmp_path / "sites", synthetic=SYNTHETIC)
    config = imaging_config(tmp_path / "work", site_configs)
    return config, federation_flow(config)


def test_imaging_run_finishes(federation) -> None:
    _, summary = federation
    run = MlflowClient(summary.tracking_uri).get_run(summary.run_id)

    assert run.info.status == "FINISHED"
    assert run.data.params["data.kind"] == "dicom"
    assert run.data.params["contract.name"] == "synthetic_ct_lesion"
    assert [record.included for record in summary.rounds] == [list(SITES), list(SITES)]


def test_imaging_auc_per_round_and_site(federation) -> None:
    _, summary = federation
    client = MlflowClient(summary.tracking_uri)

    for key in ["auc_mean", "accuracy_mean", *(f"site/{s}/auc" for s in SITES)]:
        history = client.get_metric_history(summary.run_id, key)
        assert [m.step for m in history] == [1, 2], key
        assert all(0.0 <= m.value <= 1.0 for m in history), key


def test_sample_images_only_from_synthetic_sites(federation) -> None:
    _, summary = federation
    client = MlflowClient(summary.tracking_uri)
    logged = {site: [a.path for a in client.list_artifacts(summary.run_id, f"sites/{site}")] for site in SITES}

    assert "sites/site_a/sample_images.png" in logged["site_a"]
    assert "sites/site_b/sample_images.png" in logged["site_b"]
    assert logged["site_c"] == ["sites/site_c/contract_report.json"]
    png = Path(client.download_artifacts(summary.run_id, "sites/site_a/sample_images.png")).read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_imaging_model_logged_and_loads(federation, monkeypatch: pytest.MonkeyPatch) -> None:
    _, summary = federation
    assert summary.registered_version == "1"
    # set_tracking_uri also writes MLFLOW_TRACKING_URI; monkeypatch restores it after the test.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", summary.tracking_uri)
    mlflow.set_tracking_uri(summary.tracking_uri)
    model = mlflow.pyfunc.load_model(summary.model_uri)
    example = synthetic_image_example(1, 32)

    probabilities = model.predict(example)

    assert probabilities.shape == (1,)
    assert 0.0 <= float(probabilities[0]) <= 1.0
    assert model.metadata.get_input_schema().inputs[0].shape == (-1, 1, 32, 32)


def test_pooled_baseline_for_imaging(federation) -> None:
    from medfed.pipelines.baselines import run_baselines
    from medfed.pipelines.tracking import local_artifact_root

    config, summary = federation
    one_round = config.model_copy(update={"rounds": 1})  # the budget per round is what is checked
    results = run_baselines(one_round, summary.federation_id, summary.tracking_uri,
                            local_artifact_root(summary.tracking_uri, config.workdir))

    assert list(results) == ["pooled"]
    assert set(results["pooled"]) >= {"auc_mean", *(f"site/{s}/auc" for s in SITES)}
    runs = MlflowClient(summary.tracking_uri).search_runs(
        [MlflowClient(summary.tracking_uri).get_run(summary.run_id).info.experiment_id],
        filter_string="tags.`medfed.kind` = 'pooled'",
    )
    assert len(runs) == 1
    # The pooled run trains three sites' worth of steps per round, as the federation did.
    assert runs[0].data.params["baseline.steps_per_round"] == "6"


@pytest.mark.parametrize(
    ("model", "options", "message"),
    [
        ("logistic_regression", {}, "data.kind"),
        ("unet", {"task": "classification"}, "set data.options.task to 'segmentation'"),
        ("densenet121_2d", {"task": "segmentation"}, "set data.options.task to 'classification'"),
    ],
)
def test_model_must_fit_data(tmp_path: Path, model: str, options: dict, message: str) -> None:
    config = imaging_config(tmp_path, [], model={"name": model},
                            data={"dataset": "ct_lesion", "kind": "dicom", "options": options})

    with pytest.raises(ValueError, match=message):
        check_model_fits_data(config)


def test_model_fits_matching_data(tmp_path: Path) -> None:
    config = imaging_config(tmp_path, [], model={"name": "unet"},
                            data={"dataset": "ct_lesion", "kind": "dicom", "options": {"task": "segmentation"}})

    check_model_fits_data(config)


def test_synthetic_example_is_not_blank() -> None:
    example = synthetic_image_example(1, 32)

    assert example.shape == (1, 1, 32, 32)
    assert example.dtype == np.float32
    assert set(np.unique(example).tolist()) == {0.0, 0.5}


def test_results_table_shows_reported_metrics() -> None:
    rows = {"federated": {"site/site_a/dice": 0.8, "dice_mean": 0.8}, "pooled": {"dice_mean": 0.9}}
    console = Console(width=120, record=True)

    console.print(results_table(rows, ["site_a"]))
    text = console.export_text()

    assert "Test Dice score" in text
    assert "0.900" in text
    assert "Test accuracy" not in text
    assert "Test AUC" not in text
