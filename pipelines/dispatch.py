"""How the central flow reaches the sites.

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
from medfed.sites.job import RoundRequest, SiteJob, SiteResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteFailure:
    """Why a site has no result this round."""

    site_id: str
    reason: str


class SiteDispatcher(Protocol):
    @property
    def site_ids(self) -> list[str]: ...

    def dispatch(
        self, requests: dict[str, RoundRequest], timeout_s: float
    ) -> dict[str, SiteResult | SiteFailure]: ...


@task(name="site-job", cache_policy=NO_CACHE, persist_result=False)
def run_site_job(job: SiteJob, request: RoundRequest) -> SiteResult:
    """Run one site's job for one request (embedded shape)."""
    return job.run(request)


class EmbeddedDispatcher:
    """Run every site in this process, each as a Prefect task reading only its own folder."""

    def __init__(self, site_config_paths: list[str], store: ExchangeStore) -> None:
        self.jobs: dict[str, SiteJob] = {}
        for path in site_config_paths:
            config = load_site_config(Path(path))
            if config.site_id in self.jobs:
                raise ValueError(f"site id {config.site_id!r} appears twice in the experiment's sites")
            self.jobs[config.site_id] = SiteJob(config, store)

    @property
    def site_ids(self) -> list[str]:
        return sorted(self.jobs)

    def dispatch(
        self, requests: dict[str, RoundRequest], timeout_s: float
    ) -> dict[str, SiteResult | SiteFailure]:
        futures = {}
        for site_id, request in sorted(requests.items()):
            name = f"{request.phase}-{site_id}-round-{request.round}"
            futures[site_id] = run_site_job.with_options(task_run_name=name).submit(self.jobs[site_id], request)
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

