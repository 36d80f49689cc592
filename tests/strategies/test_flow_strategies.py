"""SCAFFOLD, cyclic, FedBN and fine-tuning through the real embedded federation flow."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from safetensors import safe_open

from medfed.pipelines.config import ExperimentConfig
from medfed.pipelines.federation import FederationSummary, federation_flow

REPO = Path(__file__).resolve().parents[2]
SITES = ("cleveland", "hungarian", "va")
FEATURES = {
    "numeric": ["age", "trestbps", "chol", "thalach", "oldpeak"],
    "binary": ["sex", "fbs", "exang"],
    "categorical": {"cp": [1, 2, 3, 4], "restecg": [0, 1, 2]},
}
LAYER_NORM_KEYS = {"net.1.weight", "net.1.bias"}

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def isolated_tracking_uri(monkeypatch):
    """Undo the MLFLOW_TRACKING_URI that `mlflow.set_tracking_uri` leaves in the environment.

    The final-model logging sets it, and later tests read it as the default
    tracking URI.
    """
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///unused-by-these-tests.db")


def write_site(folder: Path, site_id: str) -> Path:
    data_root = folder / site_id / "data"
    data_root.mkdir(parents=True)
    shutil.copyfile(REPO / "data" / "heart_disease" / site_id / f"processed.{site_id}.data", data_root / "table.csv")
    config = folder / site_id / "site.yaml"
    config.write_text(
        f"site_id: {site_id}\ndata_root: data\n"
        "datasets:\n  - {name: heart_disease, contract: uci_heart_disease, path: table.csv}\n"
        "policy: drop\nmin_count: 10\nwork_dir: state\n"
    )
    return config


def run(tmp_path: Path, strategy: dict, model: dict, min_sites: int = 1) -> tuple[ExperimentConfig, FederationSummary]:
    sites = [write_site(tmp_path / "sites", site) for site in SITES]
    config = ExperimentConfig.model_validate({
        "study": f"flow-{strategy['name']}",
        "sites": [str(path) for path in sites],
        "data": {"dataset": "heart_disease", "features": FEATURES},
        "model": model,
        "strategy": strategy,
        "rounds": 3,
        "training": {"steps": 10, "batch_size": 4, "lr": 0.05},
        "seed": 7,
        "min_sites": min_sites,
        "workdir": str(tmp_path / "work"),
        "tracking": {"uri": f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}", "log_round_models": False},
    })
    return config, federation_flow(config)


def test_flow_scaffold_exchanges_control_variates(tmp_path):
    config, summary = run(tmp_path, {"name": "scaffold"}, {"name": "logistic_regression"})
    exchange = config.workdir / "exchange" / summary.federation_id
    assert all(record.included == sorted(SITES) for record in summary.rounds)
    # Every round sends the centre's control variate (empty in round 1), and each site sends its change.
    sent = sorted(exchange.glob("round_*/control_variate.safetensors"))
    assert [path.parent.name for path in sent] == ["round_0001", "round_0002", "round_0003"]
    with safe_open(str(sent[0]), framework="pt") as handle:
        assert list(handle.keys()) == []
    with safe_open(str(sent[1]), framework="pt") as handle:
        assert set(handle.keys()) == {"linear.weight", "linear.bias"}
    assert len(list(exchange.glob("round_*/control_variates/*.json"))) == 3 * len(SITES)
    for site in SITES:
        assert (tmp_path / "sites" / site / "state" / "federations" / summary.federation_id / "control_variate.safetensors").is_file()


def test_flow_cyclic_trains_one_site_per_round(tmp_path):
    # min_sites counts every site, but a cyclic round asks only one, which is then enough.
    _, summary = run(tmp_path, {"name": "cyclic", "seed": 3}, {"name": "logistic_regression"}, min_sites=3)
    visited = [record.included for record in summary.rounds]
    assert all(len(sites) == 1 for sites in visited)
    assert sorted(sites[0] for sites in visited) == sorted(SITES)
    # MLflow params show every strategy option, defaults included.
    params = MlflowClient(summary.tracking_uri).get_run(summary.run_id).data.params
    assert params["strategy.name"] == "cyclic"
    assert params["strategy.seed"] == "3"
    assert params["strategy.shuffle_each_cycle"] == "true"


def test_flow_fedbn_keeps_norm_layers_at_sites(tmp_path):
    config, summary = run(tmp_path, {"name": "fedbn"}, {"name": "mlp", "kwargs": {"normalization": "layer"}})
    updates = sorted((config.workdir / "exchange" / summary.federation_id).rglob("updates/*.safetensors"))
    assert len(updates) == 3 * len(SITES)
    for path in updates:
        with safe_open(str(path), framework="pt") as handle:
            assert set(handle.keys()).isdisjoint(LAYER_NORM_KEYS), path
    for site in SITES:
        assert (tmp_path / "sites" / site / "state" / "federations" / summary.federation_id / "local_layers.safetensors").is_file()


def test_flow_fine_tuning_logs_before_and_after(tmp_path):
    _, summary = run(tmp_path, {"name": "fine_tuning", "fine_tune_steps": 5}, {"name": "logistic_regression"})
    metrics = MlflowClient(summary.tracking_uri).get_run(summary.run_id).data.metrics
    for site in SITES:
        assert f"site/{site}/before_fine_tuning/accuracy" in metrics
        assert f"site/{site}/after_fine_tuning/accuracy" in metrics
        assert summary.site_metrics[site]["before_fine_tuning/accuracy"] == pytest.approx(
            summary.site_metrics[site]["accuracy"]
        )


def test_flow_reports_why_aggregation_failed(tmp_path):
    from medfed.pipelines.federation import QuorumNotMet

    with pytest.raises(QuorumNotMet, match="krum could not aggregate.*at least 2 \\* 1 \\+ 3 = 5"):
        run(tmp_path, {"name": "krum", "num_byzantine": 1}, {"name": "logistic_regression"})
