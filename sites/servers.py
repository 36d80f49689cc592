"""Readiness checks of the servers a site agent connects to: the Prefect API and the MLflow server."""

from __future__ import annotations

import logging

import httpx

from medfed.sites.check import CheckItem
from medfed.sites.config import SiteConfig

logger = logging.getLogger(__name__)

# Seconds each health request may take before the server counts as unreachable.
HEALTH_TIMEOUT_S = 5.0


def check_servers(config: SiteConfig) -> list[CheckItem]:
    """Check that the configured Prefect API and MLflow server respond; unset URLs are fine for the embedded shape."""
    return [_check_prefect(config), _check_mlflow(config)]


def _get(url: str, **params: str) -> httpx.Response:
    return httpx.get(url, params=params or None, timeout=HEALTH_TIMEOUT_S)


def _check_prefect(config: SiteConfig) -> CheckItem:
    name = "Prefect API"
    if config.prefect_api_url is None:
        return CheckItem(name, True, "not set: the site works in the embedded shape only",
                         "set prefect_api_url to run `medfed site agent`")
    url = f"{config.prefect_api_url}/health"
    try:
        response = _get(url)
    except httpx.HTTPError as exc:
        return CheckItem(name, False, f"{url} did not respond: {type(exc).__name__}: {exc}",
                         "check the URL, that the Prefect server runs, and that the firewall lets this host "
                         "connect out to it")
    if response.status_code != 200:
        return CheckItem(name, False, f"{url} returned HTTP {response.status_code}",
                         "prefect_api_url must end in /api, such as http://prefect.example.org:4200/api")
    return CheckItem(name, True, f"{config.prefect_api_url} responds; work pool {config.pool_name}")


def _check_mlflow(config: SiteConfig) -> CheckItem:
    name = "MLflow server"
    uri = config.mlflow_tracking_uri
    if uri is None:
        return CheckItem(name, True, "not set: the site works in the embedded shape only",
                         "set mlflow_tracking_uri to run `medfed site agent`")
    try:
        health = _get(f"{uri}/health")
        artifacts = _get(f"{uri}/api/2.0/mlflow-artifacts/artifacts", path="")
    except httpx.HTTPError as exc:
        return CheckItem(name, False, f"{uri} did not respond: {type(exc).__name__}: {exc}",
                         "check the URL, that the MLflow server runs, and that the firewall lets this host "
                         "connect out to it")
    if health.status_code != 200:
        return CheckItem(name, False, f"{uri}/health returned HTTP {health.status_code}",
                         "mlflow_tracking_uri must be the tracking server's base URL")
    uses_proxy = config.exchange_uri is None or config.exchange_uri.startswith("mlflow-artifacts")
    if uses_proxy and artifacts.status_code != 200:
        return CheckItem(name, False, f"the artifact proxy at {uri} returned HTTP {artifacts.status_code}",
                         "start the MLflow server with --serve-artifacts (see mlflow/README.md), or set "
                         "exchange_uri to another store")
    detail = f"{uri} responds" + ("; artifact proxy on" if uses_proxy else f"; exchange store {config.exchange_uri}")
    return CheckItem(name, True, detail)
