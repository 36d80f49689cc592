"""A whole deployed federation on one machine, over loopback: for tests, benchmarks and demos.

`LoopbackStack` starts a Prefect server, an MLflow tracking server (SQLite,
artifact proxy on) and site agents as separate processes, each in its own
session (process group) and with its own environment, and stops every one
of them on `stop_all`, also after a failure. Each site gets its own folder
with its own copy of its data, and its config names only that folder; the
processes all run as the same OS user, so the separation is by configuration,
not enforced by the operating system.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

logger = logging.getLogger(__name__)

# Seconds a server may take to pass its health check after start. A cold
# Prefect or MLflow server took about 10 s each on a 2-core machine with both
# starting at once; the margin covers slower CI machines.
SERVER_START_TIMEOUT_S = 90.0
# Seconds a process gets to stop after SIGTERM before its group is killed.
STOP_GRACE_S = 10.0

OFFLINE_ENV = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_UI_ENABLED": "false",
    "PREFECT_SERVER_UI_ENABLED": "false",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class ManagedProcess:
    """A process started in its own session, with its output in a log file."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        """Send `signum` to the process only (not its group)."""
        if self.alive():
            os.kill(self.pid, signum)

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM the process group, wait up to `grace_s`, then SIGKILL it; return the exit code."""
        if self.alive():
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                logger.warning("%s (pid %d) ignored SIGTERM for %g s; killing its process group",
                               self.name, self.pid, grace_s)
        # Children (such as uvicorn workers) may outlive the leader; kill what is left of the group.
        _signal_group(self.pid, signal.SIGKILL)
        try:
            return self.popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            logger.error("%s (pid %d) did not exit after SIGKILL", self.name, self.pid)
            return None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)  # the process is its session's leader, so its pid is the group id
    except ProcessLookupError:
        pass


class LoopbackStack:
    """Servers and site agents on 127.0.0.1, each a separate process that `stop_all` ends."""

    def __init__(self, root: Path, bin_dir: Path | None = None) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.bin_dir = bin_dir or Path(sys.executable).parent
        self.processes: list[ManagedProcess] = []
        self.prefect_api_url: str | None = None
        self.mlflow_uri: str | None = None

    def start_process(self, name: str, command: list[str], env: dict[str, str], cwd: Path) -> ManagedProcess:
        log_path = self.root / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        process = ManagedProcess(name, popen, log_path)
        self.processes.append(process)
        logger.info("started %s (pid %d): %s", name, popen.pid, " ".join(command))
        return process

    def _base_env(self, home: Path) -> dict[str, str]:
        keep = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "SYSTEMROOT")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env.update(OFFLINE_ENV)
        env["HOME"] = str(home)
        env["MEDFED_HOME"] = str(home / ".medfed")
        env["PREFECT_HOME"] = str(home / ".prefect")
        env["MPLCONFIGDIR"] = str(home / ".matplotlib")
        home.mkdir(parents=True, exist_ok=True)
        return env

    def start_servers(self, prefect_settings: dict[str, str] | None = None) -> tuple[str, str]:
        """Start the Prefect and MLflow servers at once and wait until both pass their health checks; return their URLs.

        `prefect_settings` adds PREFECT_* environment settings for the Prefect server.
        """
        prefect_port, mlflow_port = free_port(), free_port()
        prefect_home = self.root / "prefect-server"
        prefect_env = self._base_env(prefect_home)
        prefect_env["PREFECT_SERVER_API_HOST"] = "127.0.0.1"
        prefect_env.update(prefect_settings or {})
        prefect = self.start_process("prefect-server", [str(self.bin_dir / "prefect"), "server", "start", "--host",
                                                 "127.0.0.1", "--port", str(prefect_port), "--no-ui"],
                              prefect_env, prefect_home)
        mlflow_home = self.root / "mlflow-server"
        mlflow = self.start_process("mlflow-server", [
            str(self.bin_dir / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
            "--backend-store-uri", f"sqlite:///{mlflow_home / 'mlflow.db'}",
            "--artifacts-destination", str(mlflow_home / "artifacts"), "--serve-artifacts", "--workers", "1",
        ], self._base_env(mlflow_home), mlflow_home)
        self.prefect_api_url = f"http://127.0.0.1:{prefect_port}/api"
        self.mlflow_uri = f"http://127.0.0.1:{mlflow_port}"
        wait_until_healthy(prefect, f"{self.prefect_api_url}/health")
        wait_until_healthy(mlflow, f"{self.mlflow_uri}/health")
        return self.prefect_api_url, self.mlflow_uri

    def write_site(self, site_id: str, data_file: Path, *, poll_interval_s: float = 10.0,
                   extra: str = "") -> Path:
        """Give a site its own folder with a copy of its data file and a config naming only that folder."""
        if self.prefect_api_url is None or self.mlflow_uri is None:
            raise RuntimeError("start the servers before writing site configs")
        folder = self.root / "sites" / site_id
        (folder / "data").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_file, folder / "data" / "table.csv")
        config = folder / "site.yaml"
        config.write_text(
            f"site_id: {site_id}\n"
            "data_root: data\n"
            "datasets:\n  - {name: heart_disease, contract: uci_heart_disease, path: table.csv}\n"
            "policy: drop\nmin_count: 10\nwork_dir: state\n"
            f"prefect_api_url: {self.prefect_api_url}\n"
            f"mlflow_tracking_uri: {self.mlflow_uri}\n"
            f"poll_interval_s: {poll_interval_s}\n"
            "shutdown_grace_s: 10\n"
            f"{extra}"
        )
        return config

    def start_agent(self, site_config: Path) -> ManagedProcess:
        """Start `medfed site agent` for one site, with its folder as working directory and home."""
        folder = site_config.parent
        env = self._base_env(folder / "home")
        return self.start_process(f"agent-{folder.name}", [str(self.bin_dir / "medfed"), "site", "agent", str(site_config)],
                           env, folder)

    def researcher_env(self) -> dict[str, str]:
        """Environment of a researcher's shell pointed at this stack."""
        env = self._base_env(self.root / "researcher")
        env["PREFECT_API_URL"] = self.prefect_api_url or ""
        env["MLFLOW_TRACKING_URI"] = self.mlflow_uri or ""
        env["COLUMNS"] = "200"  # rich wraps tables and messages at the terminal width, 80 without a terminal
        return env

    def stop_all(self) -> None:
        """Stop every process this stack started: SIGTERM to all at once, then wait for each in turn."""
        for process in reversed(self.processes):
            if process.alive():
                _signal_group(process.pid, signal.SIGTERM)
        for process in reversed(self.processes):
            process.stop()


def wait_until_healthy(process: ManagedProcess, url: str, timeout_s: float = SERVER_START_TIMEOUT_S) -> None:
    """Wait until `url` returns HTTP 200; raise with the process log tail when it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"{process.name} exited with code {process.popen.returncode}:\n"
                               f"{process.log_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{process.name} did not return HTTP 200 at {url} within {timeout_s:g} s:\n{process.log_text()[-3000:]}")


def wait_for_log(process: ManagedProcess, text: str, timeout_s: float) -> None:
    """Wait until `text` appears in the process log; raise TimeoutError with the log tail otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in process.log_text():
            return
        if not process.alive():
            raise RuntimeError(f"{process.name} exited before logging {text!r}:\n{process.log_text()[-3000:]}")
        time.sleep(0.1)
    raise TimeoutError(f"{process.name} did not log {text!r} within {timeout_s:g} s:\n{process.log_text()[-3000:]}")
