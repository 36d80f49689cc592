"""A deployed federation on loopback: real Prefect and MLflow servers, three site agents as processes.

Each site agent runs in its own folder with its own copy of its data file,
its own HOME and environment, and a config that names only its own folder.
All processes run as the same OS user: the separation is by configuration,
not enforced by the operating system.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from medfed.pipelines.loopback import wait_for_log
from medfed.sites.config import load_site_config
from medfed.sites.job import SiteResult
from medfed.sites.ledger import EgressLedger, LedgerEntry
from medfed.sites.remote_store import MlflowArtifactStore

from .conftest import SITES, DeployedStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _federation_id(output: str, study: str) -> str:
    match = re.search(rf"Federation ({re.escape(study)}-[0-9T]+-[0-9a-f]+)", output)
    assert match, output
    return match.group(1)


def _ledger(deployed: DeployedStack, site_id: str) -> EgressLedger:
    config = load_site_config(deployed.site_configs[site_id])
    return EgressLedger.for_state_dir(config.state_dir, site_id)


def _entries(deployed: DeployedStack, site_id: str, federation_id: str) -> list[LedgerEntry]:
    return [e for e in _ledger(deployed, site_id).entries() if e.federation_id == federation_id]


def _run_of(client: MlflowClient, study: str, federation_id: str):
    experiment = client.get_experiment_by_name(study)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], f"tags.`medfed.federation_id` = '{federation_id}'")
    assert len(runs) == 1
    return runs[0]


def _artifact_json(client: MlflowClient, run_id: str, path: str, tmp_path: Path) -> dict:
    local = client.download_artifacts(run_id, path, str(tmp_path))
    return json.loads(Path(local).read_text())


def test_two_rounds_tracked_and_ledgered(deployed: DeployedStack, tmp_path: Path) -> None:
    study = "deployed-two-rounds"
    started = time.monotonic()
    run = deployed.medfed("run", "--deployed", str(deployed.write_experiment(study)))
    assert run.returncode == 0, run.stdout + run.stderr
    print(f"two-round deployed federation took {time.monotonic() - started:.1f} s")
    federation_id = _federation_id(run.stdout, study)

    client = MlflowClient(tracking_uri=deployed.stack.mlflow_uri)
    mlflow_run = _run_of(client, study, federation_id)
    assert mlflow_run.info.status == "FINISHED"

    params = mlflow_run.data.params
    assert params["federation_id"] == federation_id
    assert params["rounds"] == "2"
    assert params["model.name"] == "logistic_regression"
    assert params["contract.name"] == "uci_heart_disease"
    for site in SITES:
        assert params[f"site/{site}/contract"].startswith("uci_heart_disease ")
        assert len(params[f"site/{site}/data_fingerprint"]) >= 16

    for key in ["sites_aggregated", "accuracy_mean", "auc_mean", "loss_mean"] + [
        f"site/{s}/{m}" for s in SITES for m in ("included", "num_examples", "train_loss", "accuracy", "auc")
    ]:
        history = client.get_metric_history(mlflow_run.info.run_id, key)
        assert [m.step for m in history] == [1, 2], key
    for step in (1, 2):
        values = {m.step: m.value for m in client.get_metric_history(mlflow_run.info.run_id, "sites_aggregated")}
        assert values[step] == 3.0
        for site in SITES:
            included = {m.step: m.value for m in client.get_metric_history(mlflow_run.info.run_id,
                                                                           f"site/{site}/included")}
            assert included[step] == 1.0
    accuracy = client.get_metric_history(mlflow_run.info.run_id, "accuracy_mean")[-1].value
    assert 0.5 < accuracy <= 1.0

    rounds = {n: _artifact_json(client, mlflow_run.info.run_id, f"rounds/round_{n:04d}.json", tmp_path)
              for n in (1, 2)}
    for number, record in rounds.items():
        assert record["included"] == sorted(SITES), number
        assert record["dropped"] == {}, number
        assert sorted(record["updates_sha256"]) == sorted(SITES), number
    versions = client.search_model_versions(f"name = '{study}'")
    assert len(versions) == 1

    store = MlflowArtifactStore(deployed.stack.mlflow_uri)
    for site in SITES:
        report = _ledger(deployed, site).verify()
        assert report.valid, report.errors
        entries = _entries(deployed, site, federation_id)
        kinds = [e.kind for e in entries]
        assert kinds.count("payload") == 2  # one update per round
        assert kinds.count("manifest") == 2
        assert kinds.count("result") == 5  # statistics, then train and evaluate in each round

        # Every payload, manifest and result the site wrote is what the exchange store holds.
        for entry in entries:
            if entry.kind in ("payload", "manifest", "result"):
                data = store.get(entry.key)
                assert hashlib.sha256(data).hexdigest() == entry.sha256, entry.key
                assert len(data) == entry.size, entry.key
        # Statistics and metrics leave inside the results; match them against what the centre read.
        results = [SiteResult.model_validate_json(store.get(e.key)) for e in entries if e.kind == "result"]
        embedded = {hashlib.sha256(r.statistics.model_dump_json().encode()).hexdigest()
                    for r in results if r.statistics is not None}
        embedded |= {hashlib.sha256(json.dumps(r.metrics, sort_keys=True).encode()).hexdigest()
                     for r in results if r.phase == "evaluate"}
        for entry in entries:
            if entry.kind in ("statistics", "metrics"):
                assert entry.sha256 in embedded, entry.key

        # The centre accepted exactly the updates the site recorded.
        payload_hashes = {e.round: e.sha256 for e in entries if e.kind == "payload"}
        for number, record in rounds.items():
            assert record["updates_sha256"][site] == payload_hashes[number]
        # Everything under the site's keys in the store is in its ledger.
        site_keys = {k for k in store.list(federation_id) if k.endswith(f"/{site}.json")
                     or k.endswith(f"/{site}.safetensors")}
        assert site_keys == {e.key for e in entries if e.kind in ("payload", "manifest", "result")}

        # The ledger hash the centre logged is the one before the site's last result entry.
        last_result = [e for e in entries if e.kind == "result"][-1]
        assert mlflow_run.data.tags[f"site/{site}/ledger_head"] == last_result.prev_hash
        assert rounds[2]["ledger_heads"][site] == last_result.prev_hash

    audit = deployed.medfed("site", "audit", str(deployed.site_configs["cleveland"]))
    assert audit.returncode == 0, audit.stdout
    assert "Chain valid" in audit.stdout


def test_site_check_reports_servers_ready(deployed: DeployedStack) -> None:
    check = deployed.medfed("site", "check", str(deployed.site_configs["hungarian"]))
    assert check.returncode == 0, check.stdout
    assert "Prefect API" in check.stdout
    assert "artifact proxy on" in check.stdout
    assert "Site is ready." in check.stdout


def test_prefect_deployment_run_starts_federation(deployed: DeployedStack) -> None:
    """The central deployment registered by `medfed deploy` runs on a process worker of the central pool."""
    stack = deployed.stack
    env = {**stack.researcher_env(), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    worker = stack.start_process("central-worker", [str(stack.bin_dir / "prefect"), "worker", "start", "--pool",
                                                    "medfed-central", "--type", "process"], env, stack.root)
    try:
        run = subprocess.run([str(stack.bin_dir / "prefect"), "deployment", "run",
                              "medfed-federation-deployed/deploy-check", "--watch", "--watch-timeout", "240"],
                             cwd=stack.root, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + worker.log_text()[-3000:]
        assert "Completed" in run.stdout
    finally:
        worker.stop(grace_s=3)  # `prefect worker start` ignores a single SIGTERM; its group is killed after 3 s

    client = MlflowClient(tracking_uri=stack.mlflow_uri)
    experiment = client.get_experiment_by_name("deploy-check")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    assert runs[0].info.status == "FINISHED"
    included = {m.step: m.value for m in client.get_metric_history(runs[0].info.run_id, "sites_aggregated")}
    assert included == {1: 3.0, 2: 3.0}


def test_killed_agent_dropped_and_recorded(deployed: DeployedStack, tmp_path: Path) -> None:
    study = "deployed-site-killed"
    victim = "switzerland"
    experiment = deployed.write_experiment(study, round_timeout_s=5.0, min_sites=2)
    researcher = deployed.stack.start_process("researcher-killed", [
        str(deployed.stack.bin_dir / "medfed"), "run", "--deployed", str(experiment)],
        deployed.stack.researcher_env(), deployed.stack.root)
    agent = deployed.agents[victim]
    try:
        # Kill the agent as soon as it has sent its statistics, before round 1's work reaches it.
        deadline = time.monotonic() + 120
        pattern = re.compile(rf"statistics for federation {re.escape(study)}-\S+ round 0 finished")
        while not pattern.search(agent.log_text()):
            assert time.monotonic() < deadline, agent.log_text()[-3000:]
            assert researcher.alive(), researcher.log_text()[-3000:]
            time.sleep(0.05)
        agent.signal(signal.SIGKILL)
        assert researcher.popen.wait(timeout=180) == 0, researcher.log_text()[-5000:]
    finally:
        researcher.stop()
        if agent.alive():
            agent.stop()
    output = researcher.log_text()
    federation_id = _federation_id(output, study)
    assert f"site {victim} left out" in output

    client = MlflowClient(tracking_uri=deployed.stack.mlflow_uri)
    mlflow_run = _run_of(client, study, federation_id)
    assert mlflow_run.info.status == "FINISHED"
    run_id = mlflow_run.info.run_id
    aggregated = {m.step: m.value for m in client.get_metric_history(run_id, "sites_aggregated")}
    assert aggregated == {1: 2.0, 2: 2.0}
    included = {m.step: m.value for m in client.get_metric_history(run_id, f"site/{victim}/included")}
    assert included == {1: 0.0, 2: 0.0}
    for number in (1, 2):
        record = _artifact_json(client, run_id, f"rounds/round_{number:04d}.json", tmp_path)
        assert record["included"] == sorted(set(SITES) - {victim})
        assert "missed the 5 s deadline" in record["dropped"][victim]
        assert "is the site agent running?" in record["dropped"][victim]

    # The dead site left nothing after its statistics; its ledger is still a valid chain.
    assert _ledger(deployed, victim).verify().valid
    assert {e.round for e in _entries(deployed, victim, federation_id)} == {0}
    deployed.restart_agent(victim)


def test_agent_stops_cleanly_on_sigterm(deployed: DeployedStack) -> None:
    agent = deployed.agents["hungarian"]
    agent.signal(signal.SIGTERM)
    assert agent.popen.wait(timeout=30) == 0
    log = agent.log_text()
    assert "SIGTERM received, no job running; agent stopping" in log
    assert "agent stopped (idle)" in log
    deployed.restart_agent("hungarian")


def _round_request(federation_id: str, **changes) -> dict:
    """Return a round request that fits the RoundRequest schema, with `changes` applied to it."""
    request = {
        "federation_id": federation_id, "round": 1, "phase": "evaluate",
        "model": {"name": "logistic_regression", "kwargs": {"in_features": 13}},
        "data": {"dataset": "heart_disease", "kind": "tabular"},
        "global_model": f"{federation_id}/round_0001/global.json",
    }
    for dotted, value in changes.items():
        target = request
        *parents, leaf = dotted.split(".")
        for name in parents:
            target = target[name]
        target[leaf] = value
    return request


def _wait_final(client, flow_run_id, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = client.read_flow_run(flow_run_id)
        if run.state is not None and run.state.is_final():
            return run
        time.sleep(0.2)
    raise TimeoutError(f"flow run {flow_run_id} not final within {timeout_s} s")


REJECTIONS = [
    ("path-in-dataset", {"data.dataset": "../hungarian/data/table.csv"}, "looks like a file path"),
    ("absolute-path-option", {"data.options": {"cache": "/etc/passwd"}}, "looks like a file path"),
    ("model-not-allowed", {"model.name": "resnet50"}, "model 'resnet50' is not in the allowed_models of site 'cleveland'"),
    ("global-model-elsewhere", {"global_model": "other-fed/round_0001/global.json"}, "is not a store key"),
]


def test_agent_rejects_bad_flow_runs(deployed: DeployedStack) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    site = "cleveland"
    agent = deployed.agents[site]
    ledger = _ledger(deployed, site)
    entries_before = sum(1 for _ in ledger.entries())
    with temporary_settings(updates={PREFECT_API_URL: deployed.stack.prefect_api_url}), \
            get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"site-round/{site}")
        for case, changes, reason in REJECTIONS:
            run = client.create_flow_run_from_deployment(
                deployment.id, parameters={"request": _round_request(f"reject-{case}", **changes)}, name=case)
            final = _wait_final(client, run.id)
            assert final.state.is_failed(), case
            assert reason in (final.state.message or ""), (case, final.state.message)
            assert f"flow run {run.id} (site-round) rejected, nothing run" in agent.log_text(), case

        # An extra field does not fit the RoundRequest schema: the agent rejects it before any work.
        run = client.create_flow_run_from_deployment(
            deployment.id, parameters={"request": {**_round_request("reject-extra"), "note": "x"}}, name="extra")
        final = _wait_final(client, run.id)
        assert final.state.is_failed()
        assert "does not fit the RoundRequest schema (invalid fields: note)" in (final.state.message or "")

        # A flow the site never installed, deployed on the site's own pool, is rejected by the agent.
        flow_id = client.create_flow_from_name("copy-all-data")
        unknown = client.create_deployment(flow_id, "on-cleveland", work_pool_name=f"medfed-{site}",
                                           entrypoint="evil.module:copy_all_data", pull_steps=[])
        run = client.create_flow_run_from_deployment(unknown, parameters={})
        final = _wait_final(client, run.id)
        assert final.state.is_failed()
        assert "flow 'copy-all-data' is not in the allowed_flows of site 'cleveland'" in (final.state.message or "")
        assert f"flow run {run.id} (copy-all-data) rejected, nothing run" in agent.log_text()

    # Nothing ran, so nothing left the site.
    assert sum(1 for _ in ledger.entries()) == entries_before
    assert agent.alive()




def test_sigterm_finishes_or_abandons_job(deployed: DeployedStack) -> None:
    """SIGTERM during a short job lets it finish; during a long one the job is abandoned and marked Crashed."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from medfed.models import build_model
    from medfed.sites.datasets import DataSpec
    from medfed.sites.exchange_store import put_state
    from medfed.sites.preprocessing import SiteStatistics, merge_statistics

    site = "cleveland"
    federation_id = "sigterm-check"
    store = MlflowArtifactStore(deployed.stack.mlflow_uri)
    base = _round_request(federation_id)
    base["data"] = {"dataset": "heart_disease", "kind": "tabular", "features": {
        "numeric": ["age", "trestbps", "chol", "thalach", "oldpeak"], "binary": ["sex", "fbs", "exang"],
        "categorical": {"cp": [1, 2, 3, 4], "restecg": [0, 1, 2]}}}
    spec = DataSpec.model_validate(base["data"])
    base["model"] = {"name": "logistic_regression", "kwargs": {"in_features": spec.features.num_inputs}}

    with temporary_settings(updates={PREFECT_API_URL: deployed.stack.prefect_api_url}), \
            get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"site-round/{site}")
        stats_request = {**base, "round": 0, "phase": "statistics", "global_model": None}
        run = client.create_flow_run_from_deployment(deployment.id, parameters={"request": stats_request})
        assert _wait_final(client, run.id).state.is_completed()
        statistics = SiteResult.model_validate_json(
            store.get(f"{federation_id}/round_0000/results/statistics/{site}.json")).statistics
        plan = merge_statistics([SiteStatistics.model_validate(statistics.model_dump())], spec.features)
        model = build_model("logistic_regression", in_features=spec.features.num_inputs)
        put_state(store, f"{federation_id}/round_0001/global", model.state_dict(), kind="global_model",
                  federation_id=federation_id, round_number=1, model_name="logistic_regression")

        outcomes = {}
        # Each case uses its own round, because a site serves a request only once.
        for case, steps, round_number in (("finished", 3000, 1), ("abandoned", 2_000_000, 2)):
            agent = deployed.agents[site]
            train = {**base, "round": round_number, "phase": "train", "preprocessing": plan.model_dump(mode="json"),
                     "training": {"steps": steps, "batch_size": 4, "optimizer": "sgd", "lr": 0.01},
                     "federation_id": federation_id}
            started = f"train for federation {federation_id} round {round_number} started"
            started_before = agent.log_text().count(started)
            run = client.create_flow_run_from_deployment(deployment.id, parameters={"request": train}, name=case)
            deadline = time.monotonic() + 60
            while agent.log_text().count(started) == started_before:
                assert time.monotonic() < deadline, agent.log_text()[-3000:]
                time.sleep(0.02)
            agent.signal(signal.SIGTERM)
            assert agent.popen.wait(timeout=60) == 0, agent.log_text()[-3000:]
            outcomes[case] = (_wait_final(client, run.id), agent.log_text())
            deployed.restart_agent(site)

    finished_run, finished_log = outcomes["finished"]
    assert "SIGTERM received during train of federation sigterm-check round 1" in finished_log
    assert "current job finished" in finished_log
    assert "agent stopped (finished)" in finished_log
    assert finished_run.state.is_completed()

    abandoned_run, abandoned_log = outcomes["abandoned"]
    assert "current job abandoned" in abandoned_log
    assert "agent stopped (abandoned)" in abandoned_log
    assert abandoned_run.state.is_crashed()
    assert "stopped by signal before the job finished" in (abandoned_run.state.message or "")
