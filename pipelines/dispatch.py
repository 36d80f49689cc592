"""Dispatchers: the ways the central flow reaches the sites.

A dispatcher sends one request to each of several sites and returns each
site's result or the reason it has none, within a deadline. The embedded
dispatcher runs each site job as a Prefect task in this process; a deployed
dispatcher reaches site agents through the Prefect server.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait

from medfed.sites.config import load_site_config
from medfed.sites.exchange_store import ExchangeStore
from medfed.sites.agent import SiteAgent
from medfed.sites.job import RoundRequest, SiteResult, result_key
from medfed.sites.ledger import EgressLedger

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteFailure:
    """Reason a site has no result this round."""

    site_id: str
    reason: str


class SiteDispatcher(Protocol):
    @property
    def site_ids(self) -> list[str]: ...

    def dispatch(
        self, requests: dict[str, RoundRequest], timeout_s: float
    ) -> dict[str, SiteResult | SiteFailure]: ...


@task(name="site-job", cache_policy=NO_CACHE, persist_result=False)
def run_site_job(agent: SiteAgent, request: RoundRequest) -> SiteResult:
    """Run one site's job for one request (embedded shape) and read back the result it sent.

    The agent records every byte it writes to the exchange store in its
    site's egress ledger first, exactly as in the deployed shape.
    """
    agent.serve(request)
    return SiteResult.model_validate_json(agent.store.get(result_key(request, agent.config.site_id)))


class EmbeddedDispatcher:
    """Run every site in this process, each as a Prefect task reading only its own folder."""

    def __init__(self, site_config_paths: list[str], store: ExchangeStore) -> None:
        self.agents: dict[str, SiteAgent] = {}
        for path in site_config_paths:
            config = load_site_config(Path(path))
            if config.site_id in self.agents:
                raise ValueError(f"site id {config.site_id!r} appears twice in the experiment's sites")
            ledger = EgressLedger.for_state_dir(config.state_dir, config.site_id)
            self.agents[config.site_id] = SiteAgent(config, store, ledger)

    @property
    def site_ids(self) -> list[str]:
        return sorted(self.agents)

    def dispatch(
        self, requests: dict[str, RoundRequest], timeout_s: float
    ) -> dict[str, SiteResult | SiteFailure]:
        futures = {}
        for site_id, request in sorted(requests.items()):
            name = f"{request.phase}-{site_id}-round-{request.round}"
            futures[site_id] = run_site_job.with_options(task_run_name=name).submit(self.agents[site_id], request)
        finished = wait(list(futures.values()), timeout=timeout_s).done
        outcomes: dict[str, SiteResult | SiteFailure] = {}
        for site_id, future in futures.items():
            if future not in finished:
                outcomes[site_id] = SiteFailure(site_id, f"missed the {timeout_s:g} s deadline")
                continue
            try:
                outcomes[site_id] = future.result(raise_on_failure=True)
            except Exception as exc:  # the site's own error, reported by type and message
                outcomes[site_id] = SiteFailure(site_id, f"{type(exc).__name__}: {exc}")
        return outcomes

