"""A real embedded federation end to end: Prefect flow, site files, exchange store, MLflow on SQLite."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load as load_safetensors

from medfed.data_contracts.tabular import load_contract, validate_file
from medfed.pipelines.config import ExperimentConfig
from medfed.pipelines.federation import FederationSummary, federation_flow
from medfed.sites.config import load_site_config
from tests_support import assert_no_pickle, write_site

SITES = ("cleveland", "hungarian", "va")
FEATURES = {
    "numeric": ["age", "trestbps", "chol", "thalach", "oldpeak"],
    "binary": ["sex", "fbs", "exang"],
    "categorical": {"cp": [1, 2, 3, 4], "restecg": [0, 1, 2]},
}


def make_config(tmp_path: Path, site_configs: list[Path], **overrides) -> ExperimentConfig:
    raw = {
        "study": "e2e-study",
        "sites": [str(p) for p in site_configs],
        "data": {"dataset": "heart_disease", "features": FEATURES},
        "model": {"name": "logistic_regression"},
        "rounds": 2,
        "training": {"steps": 20, "batch_size": 4, "lr": 0.05},
        "seed": 7,
        "min_sites": 2,
        "workdir": str(tmp_path / "work"),
        "tracking": {"uri": f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}"},
    }
    raw.update(overrides)
    return ExperimentConfig.model_validate(raw)


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> tuple[ExperimentConfig, FederationSummary, list[Path]]:
    tmp_path = tmp_path_factory.mktemp("federation")
    site_configs = [write_site(tmp_path / "sites", s) for s in SITES]
    config = make_config(tmp_path, site_configs)
    summary = federation_flow(config)
    return config, summary, site_configs


def test_run_is_finished_and_tagged(federation) -> None:
    config, summary, _ = federation
    run = MlflowClient(summary.tracking_uri).get_run(summary.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["medfed.kind"] == "federated"
    assert run.data.tags["medfed.federation_id"] == summary.federation_id
    experiment = MlflowClient(summary.tracking_uri).get_experiment(run.info.experiment_id)
    assert experiment.name == "e2e-study"


def test_params_hold_config_contract_and_fingerprints(federation) -> None:
    config, summary, site_configs = federation
    params = MlflowClient(summary.tracking_uri).get_run(summary.run_id).data.params
    assert params["study"] == "e2e-study"
    assert params["rounds"] == "2"
    assert params["seed"] == "7"
    assert params["strategy.name"] == "fedavg"
    assert params["model.name"] == "logistic_regression"
    assert params["model.kwargs.in_features"] == "15"
    assert params["training.steps"] == "20"
    assert params["training.lr"] == "0.05"
    assert json.loads(params["data.features.numeric"]) == FEATURES["numeric"]
    assert params["federation_id"] == summary.federation_id
    assert params["contract.name"] == "uci_heart_disease"
    assert params["contract.version"] == "1.0.0"
    contract = load_contract("uci_heart_disease")
    for path in site_configs:
        site = load_site_config(path)
        expected = validate_file(site.dataset_path("heart_disease"), contract).report.fingerprint
        assert params[f"site/{site.site_id}/data_fingerprint"] == expected
        assert params[f"site/{site.site_id}/contract"] == "uci_heart_disease 1.0.0"


@pytest.mark.parametrize("key", ["accuracy_mean", "auc_mean", "loss_weighted", "sites_aggregated"])
def test_global_metrics_logged_per_round(federation, key: str) -> None:
    _, summary, _ = federation
    history = MlflowClient(summary.tracking_uri).get_metric_history(summary.run_id, key)
    assert [m.step for m in history] == [1, 2]
    assert all(np.isfinite(m.value) for m in history)


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("metric", ["accuracy", "auc", "loss", "num_examples", "test_examples", "included", "train_loss"])
def test_site_metrics_logged_per_round(federation, site: str, metric: str) -> None:
    _, summary, _ = federation
    history = MlflowClient(summary.tracking_uri).get_metric_history(summary.run_id, f"site/{site}/{metric}")
    assert [m.step for m in history] == [1, 2]


def test_num_examples_is_site_training_split(federation) -> None:
    _, summary, _ = federation
    client = MlflowClient(summary.tracking_uri)
    rows = {"cleveland": 303, "hungarian": 294, "va": 200}
    for site, total in rows.items():
        train = client.get_metric_history(summary.run_id, f"site/{site}/num_examples")[-1].value
        test = client.get_metric_history(summary.run_id, f"site/{site}/test_examples")[-1].value
        assert train + test == total
        assert test == np.ceil(total * 0.34)  # scikit-learn rounds the test share up
    mean = client.get_metric_history(summary.run_id, "accuracy_mean")[-1].value
    accs = [client.get_metric_history(summary.run_id, f"site/{s}/accuracy")[-1].value for s in SITES]
    assert mean == pytest.approx(sum(accs) / len(accs))


def test_artifacts_per_round_and_site(federation) -> None:
    _, summary, _ = federation
    root = Path(mlflow.artifacts.download_artifacts(run_id=summary.run_id, tracking_uri=summary.tracking_uri))
    for round_number in (1, 2):
        folder = root / "models" / f"round_{round_number:04d}"
        manifest = json.loads((folder / "global.json").read_text())
        assert manifest["round"] == round_number
        assert manifest["kind"] == "global_model"
        tensors = load_safetensors((folder / "global.safetensors").read_bytes())
        assert set(tensors) == {"linear.weight", "linear.bias"}
        record = json.loads((root / "rounds" / f"round_{round_number:04d}.json").read_text())
        assert record["included"] == sorted(SITES)
        assert record["dropped"] == {}
    assert (root / "plots" / "accuracy_by_round.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plan = json.loads((root / "preprocessing" / "plan.json").read_text())
    assert plan["sites"] == sorted(SITES)
    for site in SITES:
        report = json.loads((root / "sites" / site / "contract_report.json").read_text())
        assert report["contract"] == "uci_heart_disease"
        assert report["rows_kept"] == report["rows_read"]


def test_final_model_registered_and_loads_without_pickle(federation) -> None:
    _, summary, _ = federation
    client = MlflowClient(summary.tracking_uri)
    version = client.get_model_version("e2e-study", summary.registered_version)
    assert version.run_id == summary.run_id
    mlflow.set_tracking_uri(summary.tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/e2e-study/{summary.registered_version}"))
    files = [p for p in local.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in {".pkl", ".pickle", ".pt", ".pth"}]
    mlmodel = (local / "MLmodel").read_text()
    assert "model_code_path" in mlmodel
    assert "signature" in mlmodel
    example = json.loads((local / "input_example.json").read_text())
    assert example["columns"][:5] == FEATURES["numeric"]
    model = mlflow.pyfunc.load_model(f"models:/e2e-study/{summary.registered_version}")
    import pandas as pd

    frame = pd.DataFrame(example["data"], columns=example["columns"])
    prediction = np.asarray(model.predict(frame))
    assert prediction.shape == (1,)
    assert 0.0 <= float(prediction[0]) <= 1.0
    weights = load_safetensors((local / "artifacts" / "weights.safetensors").read_bytes())
    root = Path(mlflow.artifacts.download_artifacts(run_id=summary.run_id, tracking_uri=summary.tracking_uri,
                                                    artifact_path="models/round_0002"))
    last_global = load_safetensors((root / "global.safetensors").read_bytes())
    for name, tensor in last_global.items():
        assert torch.equal(weights[name], tensor)


def test_round_global_is_weighted_average_of_updates(federation) -> None:
    config, summary, _ = federation
    exchange = Path(config.workdir) / "exchange" / summary.federation_id / "round_0001"
    updates, counts = [], []
    for site in SITES:
        manifest = json.loads((exchange / "updates" / f"{site}.json").read_text())
        updates.append(load_safetensors((exchange / "updates" / f"{site}.safetensors").read_bytes()))
        counts.append(manifest["num_examples"])
    result = load_safetensors((exchange / "global.safetensors").read_bytes())
    for name in result:
        expected = np.average(np.stack([u[name].numpy() for u in updates]), axis=0, weights=counts)
        np.testing.assert_allclose(result[name].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_exchanged_files_contain_no_pickle(federation) -> None:
    config, summary, _ = federation
    files = [p for p in (Path(config.workdir) / "exchange" / summary.federation_id).rglob("*") if p.is_file()]
    models = 2 * (1 + 2 * (1 + len(SITES)))  # round-0 global, then global + updates per round
    results = len(SITES) * (1 + 2 * 2)  # statistics, then train and evaluate per round
    assert len(files) == models + results
    for path in files:
        assert_no_pickle(path)


def test_every_site_egress_is_in_its_ledger(federation) -> None:
    """Embedded sites keep the same hash-chained ledger as deployed ones, and it covers every file sent."""
    from medfed.sites.ledger import EgressLedger

    config, summary, site_configs = federation
    exchange = Path(config.workdir) / "exchange"
    client = MlflowClient(summary.tracking_uri)
    for path in site_configs:
        site = load_site_config(path)
        ledger = EgressLedger.for_state_dir(site.state_dir, site.site_id)
        report = ledger.verify()
        assert report.valid, report.errors
        entries = [e for e in ledger.entries() if e.federation_id == summary.federation_id]
        recorded = {e.key: e.sha256 for e in entries}
        sent = [p for p in (exchange / summary.federation_id).rglob(f"{site.site_id}.*") if p.is_file()]
        assert sent
        for file in sent:
            key = file.relative_to(exchange).as_posix()
            assert key in recorded, key
            assert recorded[key] == hashlib.sha256(file.read_bytes()).hexdigest()
        tags = client.get_run(summary.run_id).data.tags
        # The head a site reports precedes the entry for the result that carries it.
        assert tags[f"site/{site.site_id}/ledger_head"] == entries[-2].entry_hash


def test_same_seed_gives_identical_models(federation, tmp_path: Path) -> None:
    config, summary, site_configs = federation
    raw = config.model_dump()
    raw.update(workdir=tmp_path / "again", tracking={"uri": f"sqlite:///{tmp_path / 'again.db'}"})
    again = federation_flow(ExperimentConfig.model_validate(raw))
    first = Path(config.workdir) / "exchange" / summary.federation_id / "round_0002" / "global.safetensors"
    second = tmp_path / "again" / "exchange" / again.federation_id / "round_0002" / "global.safetensors"
    assert again.federation_id != summary.federation_id
    first_state = load_safetensors(first.read_bytes())
    second_state = load_safetensors(second.read_bytes())
    assert first_state.keys() == second_state.keys()
    for name, tensor in first_state.items():
        assert torch.equal(tensor, second_state[name])


def test_broken_site_is_left_out_and_recorded(tmp_path: Path) -> None:
    good = [write_site(tmp_path / "sites", s) for s in ("cleveland", "hungarian")]
    rows = (Path(__file__).parent.parent / "data/heart_disease/va/processed.va.data").read_text().splitlines()
    rows[3] = rows[3].replace("55,1,4,142", "55,1,9,142")  # cp = 9 breaks allowed_values
    broken = write_site(tmp_path / "sites", "va", policy="refuse", text="\n".join(rows) + "\n")
    config = make_config(tmp_path, [*good, broken])
    summary = federation_flow(config)
    client = MlflowClient(summary.tracking_uri)
    included = client.get_metric_history(summary.run_id, "site/va/included")
    assert [m.value for m in included] == [0.0, 0.0]
    assert [m.value for m in client.get_metric_history(summary.run_id, "sites_aggregated")] == [2.0, 2.0]
    root = Path(mlflow.artifacts.download_artifacts(run_id=summary.run_id, tracking_uri=summary.tracking_uri,
                                                    artifact_path="rounds"))
    record = json.loads((root / "round_0001.json").read_text())
    assert record["included"] == ["cleveland", "hungarian"]
    assert "table.csv" in record["dropped"]["va"]
    assert "column cp: rule allowed_values" in record["dropped"]["va"]
    assert summary.registered_version is not None


def test_quorum_not_met_fails_run_but_keeps_record(tmp_path: Path) -> None:
    from medfed.pipelines.federation import QuorumNotMet

    good = write_site(tmp_path / "sites", "cleveland")
    broken = write_site(tmp_path / "sites", "va", text="1,2,3\n", policy="refuse")
    config = make_config(tmp_path, [good, broken])
    with pytest.raises(QuorumNotMet, match=r"statistics: 1 site\(s\).*min_sites=2.*va: "):
        federation_flow(config)
    client = MlflowClient(config.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("e2e-study").experiment_id])
    assert runs[0].info.status == "FAILED"
    assert "QuorumNotMet" in runs[0].data.tags["medfed.error"]


def test_site_missing_deadline_is_left_out(tmp_path: Path) -> None:
    from medfed.pipelines.federation import QuorumNotMet

    config = make_config(tmp_path, [write_site(tmp_path / "sites", "cleveland")], min_sites=1,
                         round_timeout_s=0.001)
    with pytest.raises(QuorumNotMet, match=r"cleveland: missed the 0.001 s deadline"):
        federation_flow(config)


def test_baselines_are_tagged_for_comparison(federation) -> None:
    from medfed.pipelines.baselines import BASELINE_NOTE, run_baselines
    from medfed.pipelines.tracking import local_artifact_root

    config, summary, _ = federation
    results = run_baselines(config, summary.federation_id, summary.tracking_uri,
                            local_artifact_root(summary.tracking_uri, Path(config.workdir)))
    assert set(results) == {"pooled", *(f"local:{s}" for s in SITES)}
    client = MlflowClient(summary.tracking_uri)
    runs = client.search_runs([summary.experiment_id],
                              filter_string=f"tags.`medfed.comparison` = '{summary.federation_id}'")
    kinds = sorted(r.data.tags["medfed.kind"] for r in runs)
    assert kinds == ["federated", "local", "local", "local", "pooled"]
    for run in runs:
        if run.data.tags["medfed.kind"] == "federated":
            continue
        assert run.data.tags["medfed.baseline_note"] == BASELINE_NOTE
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "accuracy_mean")
        assert [m.step for m in history] == [1, 2]
    pooled = next(r for r in runs if r.data.tags["medfed.kind"] == "pooled")
    assert pooled.data.params["baseline.steps_per_round"] == str(20 * len(SITES))
    assert pooled.data.tags["medfed.trained_on"] == ",".join(SITES)


def test_site_error_leaves_only_its_type(tmp_path: Path, caplog) -> None:
    """A library error that quotes file content is reported to the centre by type only."""
    good = [write_site(tmp_path / "sites", s) for s in ("cleveland", "hungarian")]
    broken = write_site(tmp_path / "sites", "va")
    # A site config whose contract file is itself unreadable YAML makes the YAML parser quote it.
    contract = tmp_path / "sites" / "va" / "contract.yaml"
    contract.write_text("name: [Planted-Secret-Name\n")
    config_text = broken.read_text().replace("contract: uci_heart_disease", f"contract: {contract}")
    broken.write_text(config_text)
    summary = federation_flow(make_config(tmp_path, [*good, broken]))
    root = Path(mlflow.artifacts.download_artifacts(run_id=summary.run_id, tracking_uri=summary.tracking_uri,
                                                    artifact_path="rounds"))
    reason = json.loads((root / "round_0001.json").read_text())["dropped"]["va"]
    assert "full error is in the site's own log" in reason
    assert "Planted-Secret-Name" not in reason
    db = (tmp_path / "work" / "mlflow.db").read_bytes()
    assert b"Planted-Secret-Name" not in db


def test_params_name_sites_by_id_not_path(federation) -> None:
    _, summary, site_configs = federation
    params = MlflowClient(summary.tracking_uri).get_run(summary.run_id).data.params
    assert json.loads(params["sites"]) == sorted(SITES)
    for value in params.values():
        assert str(site_configs[0].parent.parent) not in value
