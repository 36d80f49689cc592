"""A deployed federation on loopback, shared by the integration tests of this folder.

One Prefect server, one MLflow server (SQLite, artifact proxy) and three site
agents start once per module that uses the fixture (server start-up is the
dominant cost), and every process is stopped by the fixture's finalizer,
also when setup or a test fails.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from medfed.pipelines.loopback import LoopbackStack, ManagedProcess, wait_for_log

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data" / "heart_disease"
SITES = ("cleveland", "hungarian", "switzerland")
# Seconds an agent may take to start, pass its checks and connect to the event stream.
AGENT_READY_TIMEOUT_S = 90.0
READY_LINE = "listening for flow runs scheduled on pool"


@dataclass
class DeployedStack:
    stack: LoopbackStack
    site_configs: dict[str, Path]
    agents: dict[str, ManagedProcess]

    def restart_agent(self, site_id: str) -> ManagedProcess:
        """Start a fresh agent for a site whose agent was stopped, and wait until it listens."""
        agent = self.stack.start_agent(self.site_configs[site_id])
        wait_for_log(agent, READY_LINE, AGENT_READY_TIMEOUT_S)
        self.agents[site_id] = agent
        return agent

    def write_experiment(self, study: str, *, rounds: int = 2, round_timeout_s: float = 60.0,
                         min_sites: int = 2) -> Path:
        path = self.stack.root / f"{study}.yaml"
        path.write_text(
            f"study: {study}\n"
            f"sites: [{', '.join(SITES)}]\n"
            "data:\n  dataset: heart_disease\n  kind: tabular\n  features:\n"
            "    numeric: [age, trestbps, chol, thalach, oldpeak]\n    binary: [sex, fbs, exang]\n"
            "    categorical:\n      cp: [1, 2, 3, 4]\n      restecg: [0, 1, 2]\n"
            "  test_fraction: 0.34\n  split_seed: 43\n"
            "model:\n  name: logistic_regression\n"
            "strategy:\n  name: fedavg\n"
            f"rounds: {rounds}\n"
            "training:\n  steps: 100\n  batch_size: 4\n  optimizer: sgd\n  lr: 0.01\n"
            f"seed: 42\nmin_sites: {min_sites}\nround_timeout_s: {round_timeout_s}\n"
            f"tracking:\n  uri: {self.stack.mlflow_uri}\n"
        )
        return path

    def medfed(self, *args: str, timeout_s: float = 240.0) -> subprocess.CompletedProcess:
        """Run the medfed CLI as a researcher would, from the researcher's own folder and environment."""
        return subprocess.run([str(self.stack.bin_dir / "medfed"), *args], cwd=self.stack.root,
                              env=self.stack.researcher_env(), capture_output=True, text=True,
                              timeout=timeout_s)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeployedStack]:
    stack = LoopbackStack(tmp_path_factory.mktemp("loopback"))
    try:
        stack.start_servers()
        configs = {s: stack.write_site(s, DATA / s / f"processed.{s}.data") for s in SITES}
        agents = {s: stack.start_agent(path) for s, path in configs.items()}
        for agent in agents.values():
            wait_for_log(agent, READY_LINE, AGENT_READY_TIMEOUT_S)
        result = DeployedStack(stack, configs, agents)
        deploy = result.medfed("deploy", str(result.write_experiment("deploy-check")), timeout_s=120)
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        yield result
    finally:
        stack.stop_all()
