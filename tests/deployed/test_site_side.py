"""Site-side pieces of the deployed shape without servers: request checks, ledger, stores, min_count."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from medfed.models import build_model
from medfed.sites.agent import SiteAgent, find_path_like, validate_flow_run
from medfed.sites.config import load_site_config
from medfed.sites.datasets import DataSpec
from medfed.sites.exchange_store import LocalFolderStore, put_state
from medfed.sites.job import RequestRejected, RoundRequest, result_key
from medfed.sites.ledger import GENESIS_HASH, EgressLedger
from medfed.sites.preprocessing import SiteStatistics, merge_statistics
from medfed.sites.remote_store import FsspecStore, MlflowArtifactStore, check_key, open_store

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data" / "heart_disease"
FEATURES = {"numeric": ["age", "trestbps", "chol", "thalach", "oldpeak"], "binary": ["sex", "fbs", "exang"],
            "categorical": {"cp": [1, 2, 3, 4], "restecg": [0, 1, 2]}}


def _site(tmp_path: Path, site_id: str = "cleveland", min_count: int = 10) -> Path:
    folder = tmp_path / site_id
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "table.csv").write_bytes((DATA / site_id / f"processed.{site_id}.data").read_bytes())
    config = folder / "site.yaml"
    config.write_text(
        f"site_id: {site_id}\ndata_root: data\n"
        "datasets:\n  - {name: heart_disease, contract: uci_heart_disease, path: table.csv}\n"
        f"policy: drop\nmin_count: {min_count}\nwork_dir: state\n"
    )
    return config


def _request(**changes) -> dict:
    request = {
        "federation_id": "fed-1", "round": 0, "phase": "statistics",
        "model": {"name": "logistic_regression", "kwargs": {}},
        "data": {"dataset": "heart_disease", "kind": "tabular", "features": FEATURES},
    }
    request.update(changes)
    return request


GOOD_PARAMETERS = [
    {"request": _request()},
    {"request": _request(round=3, phase="evaluate", global_model="fed-1/round_0003/global.json")},
    {"request": _request(round=2, phase="train", global_model="fed-1/round_0001/global.json",
                         control_variate="fed-1/round_0001/control_variates/server.json")},
]

BAD_PARAMETERS = [
    ("site-round", {"request": _request(data={"dataset": "/srv/other/table.csv"})}, "looks like a file path"),
    ("site-round", {"request": _request(data={"dataset": "..\\x"})}, "looks like a file path"),
    ("site-round", {"request": _request(data={"dataset": "~/x"})}, "looks like a file path"),
    ("site-round", {"request": _request(data={"dataset": "heart_disease", "options": {"root": "file:x"}})},
     "looks like a file path"),
    ("site-round", {"request": _request(model={"name": "resnet50"})}, "not in the allowed_models"),
    ("site-round", {"request": _request(data={"dataset": "icu_notes"})}, "offers no dataset 'icu_notes'"),
    ("site-round", {"request": _request(global_model="fed-2/round_0001/global.json")}, "is not a store key"),
    ("site-round", {"request": _request(global_model="fed-1/round_0001/../../x.json")}, "is not a store key"),
    ("site-round", {"request": _request(), "extra": 1}, "takes exactly one parameter"),
    ("site-round", {"request": {**_request(), "path": "x"}}, "does not fit the RoundRequest schema"),
    ("site-round", {"request": _request(round=-1)}, "invalid fields: round"),
    ("copy-all-data", {}, "is not in the allowed_flows"),
]


@pytest.mark.parametrize("parameters", GOOD_PARAMETERS)
def test_validate_flow_run_accepts(tmp_path: Path, parameters: dict) -> None:
    config = load_site_config(_site(tmp_path))
    _, request = validate_flow_run(config, "site-round", parameters)
    assert isinstance(request, RoundRequest)


@pytest.mark.parametrize(("flow", "parameters", "reason"), BAD_PARAMETERS)
def test_validate_flow_run_rejects(tmp_path: Path, flow: str, parameters: dict, reason: str) -> None:
    config = load_site_config(_site(tmp_path))
    with pytest.raises(RequestRejected) as rejected:
        validate_flow_run(config, flow, parameters)
    assert reason in str(rejected.value)


def test_validate_allowed_but_uninstalled_flow(tmp_path: Path) -> None:
    config = load_site_config(_site(tmp_path)).model_copy(update={"allowed_flows": ["site-round", "shadow"]})
    with pytest.raises(RequestRejected, match="not a site flow installed with medfed"):
        validate_flow_run(config, "shadow", {})


def test_find_path_like_locations() -> None:
    assert find_path_like({"a": {"b": ["ok", "c:/x"]}}) == "a.b.1"
    assert find_path_like({"a": {"x/y": 1}}) == "a.x/y"
    assert find_path_like({"request": {"global_model": "f/round_0001/global.json"}}) is None
    assert find_path_like({"name": "heart_disease", "n": 3}) is None


def test_ledger_chain_and_tampering(tmp_path: Path) -> None:
    ledger = EgressLedger(tmp_path / "ledger.jsonl", "cleveland")
    assert ledger.head() == GENESIS_HASH
    first = ledger.append(federation_id="f", round_number=1, destination="d", kind="payload", key="f/a", data=b"x")
    second = ledger.append(federation_id="f", round_number=1, destination="d", kind="manifest", key="f/b", data=b"y")
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.entry_hash
    assert first.sha256 == hashlib.sha256(b"x").hexdigest()
    assert ledger.head() == second.entry_hash
    report = ledger.verify()
    assert report.valid
    assert report.entries == 2
    assert report.head == second.entry_hash

    lines = ledger.path.read_text().splitlines()
    edited = json.loads(lines[0])
    edited["size"] = 99
    ledger.path.write_text(json.dumps(edited) + "\n" + lines[1] + "\n")
    report = ledger.verify()
    assert not report.valid
    assert "entry 0: entry_hash does not match its content" in report.errors[0]

    ledger.path.write_text(lines[1] + "\n")  # first entry removed
    report = ledger.verify()
    assert not report.valid
    assert any("seq is 1, expected 0" in e for e in report.errors)
    assert any("prev_hash does not match" in e for e in report.errors)


def _serve(agent: SiteAgent, store: LocalFolderStore, request: RoundRequest) -> dict:
    agent.serve(request)
    return json.loads(store.get(result_key(request, agent.config.site_id)))


def test_agent_withholds_metrics_under_min_count(tmp_path: Path) -> None:
    """switzerland's test split has 42 rows: with min_count 50 its metrics never leave the site."""
    config = load_site_config(_site(tmp_path, "switzerland", min_count=50))
    store = LocalFolderStore(tmp_path / "exchange")
    ledger = EgressLedger.for_state_dir(config.state_dir, config.site_id)
    agent = SiteAgent(config, store, ledger)

    statistics = _serve(agent, store, RoundRequest.model_validate(_request()))
    spec = DataSpec.model_validate(_request()["data"])
    plan = merge_statistics([SiteStatistics.model_validate(statistics["statistics"])], spec.features)
    model = build_model("logistic_regression", in_features=spec.features.num_inputs)
    key, _, _ = put_state(store, "fed-1/round_0001/global", model.state_dict(), kind="global_model",
                          federation_id="fed-1", round_number=1, model_name="logistic_regression")
    evaluate = RoundRequest.model_validate(_request(
        round=1, phase="evaluate", global_model=key, preprocessing=plan.model_dump(mode="json"),
        model={"name": "logistic_regression", "kwargs": {"in_features": spec.features.num_inputs}}))
    result = _serve(agent, store, evaluate)

    assert result["num_examples"] == 42
    assert result["metrics"] == {}
    assert "accuracy" in result["withheld_metrics"]
    metrics_entries = [e for e in ledger.entries() if e.kind == "metrics"]
    assert [e.sha256 for e in metrics_entries] == [hashlib.sha256(b"{}").hexdigest()]
    assert ledger.verify().valid
    # Every result that left is in the ledger, byte for byte.
    for entry in ledger.entries():
        if entry.kind == "result":
            assert hashlib.sha256(store.get(entry.key)).hexdigest() == entry.sha256


def test_agent_records_nothing_outside_a_request(tmp_path: Path) -> None:
    config = load_site_config(_site(tmp_path))
    agent = SiteAgent(config, LocalFolderStore(tmp_path / "exchange"),
                      EgressLedger.for_state_dir(config.state_dir, config.site_id))
    with pytest.raises(RuntimeError, match="outside a request"):
        agent._record_egress("payload", "f/x", b"1")


def test_fsspec_store_round_trip(tmp_path: Path) -> None:
    store = FsspecStore((tmp_path / "bucket").as_uri())
    store.put("fed/round_0001/updates/a.json", b"{}")
    assert store.get("fed/round_0001/updates/a.json") == b"{}"
    assert store.exists("fed/round_0001/updates/a.json")
    assert not store.exists("fed/round_0001/updates/b.json")
    with pytest.raises(FileNotFoundError):
        store.get("fed/none.json")
    with pytest.raises(ValueError):
        store.put("../escape.json", b"{}")


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a\\b"])
def test_store_key_rejected(key: str) -> None:
    with pytest.raises(ValueError):
        check_key(key)


def test_open_store_kinds(tmp_path: Path) -> None:
    assert isinstance(open_store(None, tracking_uri="http://127.0.0.1:5000"), MlflowArtifactStore)
    assert open_store("mlflow-artifacts:/other", tracking_uri="http://h:1").root == "other"
    assert isinstance(open_store((tmp_path / "b").as_uri()), FsspecStore)
    assert isinstance(open_store(str(tmp_path / "c")), LocalFolderStore)
    with pytest.raises(ValueError, match="needs an http"):
        MlflowArtifactStore("sqlite:///x.db")
    with pytest.raises(ValueError, match="needs mlflow_tracking_uri"):
        open_store(None)


def test_site_config_rejects_bad_deployed_fields(tmp_path: Path) -> None:
    path = _site(tmp_path)
    base = path.read_text()
    cases = {
        "prefect_api_url: prefect.example.org/api\n": "must start with http:// or https://",
        "mlflow_tracking_uri: ftp://mlflow\n": "must start with http:// or https://",
        "allowed_models: []\n": "must name at least one entry",
        "allowed_flows: []\n": "must name at least one entry",
        "poll_interval_s: 0\n": "greater than 0",
        "unknown_field: 1\n": "Extra inputs are not permitted",
    }
    for line, message in cases.items():
        path.write_text(base + line)
        with pytest.raises(ValueError, match=message):
            load_site_config(path)


def test_server_checks_report_unreachable(tmp_path: Path) -> None:
    from medfed.pipelines.loopback import free_port
    from medfed.sites.servers import check_servers

    path = _site(tmp_path)
    port = free_port()  # nothing listens there
    path.write_text(path.read_text() + f"prefect_api_url: http://127.0.0.1:{port}/api\n"
                    f"mlflow_tracking_uri: http://127.0.0.1:{port}\n")
    prefect, mlflow = check_servers(load_site_config(path))
    assert not prefect.ready
    assert "did not respond" in prefect.detail
    assert "firewall" in prefect.fix
    assert not mlflow.ready
    assert "did not respond" in mlflow.detail


def test_server_checks_skip_unset_urls(tmp_path: Path) -> None:
    from medfed.sites.servers import check_servers

    prefect, mlflow = check_servers(load_site_config(_site(tmp_path)))
    assert prefect.ready
    assert "embedded shape only" in prefect.detail
    assert mlflow.ready
