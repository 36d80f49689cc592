"""The deployed shape: a Prefect server, one site agent per hospital, an MLflow tracking server.

The central flow reaches a site only through a flow run of that site's
deployment (`site-round/<site_id>`) on the site's own work pool. The site
agent picks it up, works, and writes its result JSON to the exchange store;
the centre waits for the flow run to finish within the round's deadline and
then reads the result from the store. A site that fails, or does not finish
in time, becomes a `SiteFailure` with the reason and is asked again next round.

`deploy` registers the site deployments and the central deployment;
`deployed_federation_flow` is the central flow, the same `run_federation`
as the embedded shape with a different dispatcher and store.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from uuid import UUID

import httpx

from prefect import flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled
from prefect.utilities.callables import parameter_schema
from pydantic import ValidationError

from medfed.pipelines.config import ExperimentConfig
from medfed.pipelines.dispatch import SiteFailure
from medfed.pipelines.federation import FederationSummary, new_federation_id, run_federation
from medfed.sites.agent import WORKER_TYPE
from medfed.sites.exchange_store import ExchangeStore
from medfed.sites.flows import SITE_ROUND_FLOW, site_round
from medfed.sites.job import RoundRequest, SiteResult, result_key
from medfed.sites.prefect_retry import ServerBusy, retry_busy_sync
from medfed.sites.remote_store import open_store

logger = logging.getLogger(__name__)

CENTRAL_FLOW = "medfed-federation-deployed"
# Largest result JSON the centre reads from a site; a result carries counts,
# metrics and a contract report, never tensors, so this is generous.
MAX_RESULT_BYTES = 16 * 1024**2


def site_pool(config: ExperimentConfig, site_id: str) -> str:
    """Return the work pool of `site_id`: the experiment's override, else 'medfed-<site_id>'."""
    return config.deployed.pools.get(site_id, f"medfed-{site_id}")


@dataclass(frozen=True)
class DispatchTiming:
    """Wall time of one dispatch and the longest site compute inside it, for overhead measurements."""

    phase: str
    round: int
    wall_s: float
    max_compute_s: float


class DeployedDispatcher:
    """Send each round request as a flow run to the site's deployment and wait for it."""

    def __init__(self, site_ids: list[str], store: ExchangeStore, client: SyncPrefectClient,
                 *, poll_interval_s: float = 0.2) -> None:
        if len(set(site_ids)) != len(site_ids):
            raise ValueError(f"site ids {site_ids} contain a duplicate")
        self._site_ids = sorted(site_ids)
        self.store = store
        self.client = client
        self.poll_interval_s = poll_interval_s
        self._deployments: dict[str, UUID] = {}
        self.timings: list[DispatchTiming] = []

    @property
    def site_ids(self) -> list[str]:
        return self._site_ids

    def _deployment_id(self, site_id: str) -> UUID:
        if site_id not in self._deployments:
            name = f"{SITE_ROUND_FLOW}/{site_id}"
            try:
                self._deployments[site_id] = self.client.read_deployment_by_name(name).id
            except ObjectNotFound as exc:
                raise ValueError(
                    f"deployment {name!r} not found on the Prefect server; run `medfed deploy EXPERIMENT.yaml`"
                ) from exc
        return self._deployments[site_id]

    def dispatch(
        self, requests: dict[str, RoundRequest], timeout_s: float
    ) -> dict[str, SiteResult | SiteFailure]:
        started = time.monotonic()
        deadline = started + timeout_s
        outcomes: dict[str, SiteResult | SiteFailure] = {}
        runs: dict[UUID, tuple[str, RoundRequest]] = {}
        # One after the other: a SQLite-backed Prefect server rejects concurrent writes with 503,
        # and creating the runs in parallel threads measured slower than in sequence.
        for site_id, request in sorted(requests.items()):
            run_or_failure = self._create_run(site_id, request)
            if isinstance(run_or_failure, SiteFailure):
                outcomes[site_id] = run_or_failure
            else:
                runs[run_or_failure.id] = (site_id, request)

        created_s = time.monotonic() - started
        while runs and time.monotonic() < deadline:
            for run in self._read_runs(list(runs)):
                if run.state is None or not run.state.is_final():
                    continue
                site_id, request = runs.pop(run.id)
                outcomes[site_id] = self._outcome(site_id, request, run)
            if runs:
                time.sleep(self.poll_interval_s)

        for run_id, (site_id, request) in runs.items():
            try:
                run: FlowRun | None = self.client.read_flow_run(run_id)
            except (httpx.HTTPError, ServerBusy) as exc:
                logger.warning("reading flow run %s of site %s failed: %s", run_id, site_id, exc)
                run = None
            if run is not None and run.state is not None and run.state.is_final():  # finished since the last poll
                outcomes[site_id] = self._outcome(site_id, request, run)
                continue
            state = run.state.type.value if run is not None and run.state else "UNKNOWN"
            self._cancel(run_id)
            hint = " (is the site agent running?)" if state in ("SCHEDULED", "PENDING") else ""
            outcomes[site_id] = SiteFailure(
                site_id, f"missed the {timeout_s:g} s deadline; its flow run was {state}{hint}"
            )
        wall_s = time.monotonic() - started
        self._record_timing(requests, outcomes, wall_s)
        logger.debug("dispatch of %d request(s): flow runs created after %.3f s, all outcomes after %.3f s",
                     len(requests), created_s, wall_s)
        return outcomes

    def _create_run(self, site_id: str, request: RoundRequest) -> FlowRun | SiteFailure:
        try:
            deployment_id = self._deployment_id(site_id)
            return retry_busy_sync(self.client, lambda: self.client.create_flow_run_from_deployment(
                deployment_id,
                parameters={"request": request.model_dump(mode="json")},
                name=f"{request.phase}-{site_id}-round-{request.round}",
                tags=[f"federation:{request.federation_id}"],
            ), f"create flow run for site {site_id}")
        except (ValueError, ObjectNotFound, httpx.HTTPError, ServerBusy) as exc:
            return SiteFailure(site_id, f"flow run not created: {type(exc).__name__}: {exc}"[:2000])

    def _record_timing(self, requests: dict[str, RoundRequest], outcomes: dict, wall_s: float) -> None:
        if not requests:
            return
        request = next(iter(requests.values()))
        computes = [o.compute_seconds or 0.0 for o in outcomes.values() if isinstance(o, SiteResult)]
        self.timings.append(DispatchTiming(request.phase, request.round, wall_s, max(computes, default=0.0)))

    def _read_runs(self, ids: list[UUID]) -> list[FlowRun]:
        """Read the flow runs' states; a failed read returns none, and the next poll tries again."""
        try:
            return self.client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
        except (httpx.HTTPError, ServerBusy) as exc:
            logger.warning("reading the states of %d site flow run(s) failed, trying again: %s", len(ids), exc)
            return []

    def _outcome(self, site_id: str, request: RoundRequest, run: FlowRun) -> SiteResult | SiteFailure:
        state = run.state
        assert state is not None
        if not state.is_completed():
            return SiteFailure(site_id, f"flow run {run.name} ended {state.type.value}: {state.message or ''}".strip())
        key = result_key(request, site_id)
        try:
            data = self.store.get(key)
            if len(data) > MAX_RESULT_BYTES:
                raise ValueError(f"result of {len(data)} bytes exceeds {MAX_RESULT_BYTES}")
            result = SiteResult.model_validate_json(data)
        except (FileNotFoundError, OSError, ValueError, ValidationError) as exc:
            return SiteFailure(site_id, f"result {key!r} unusable: {type(exc).__name__}: {exc}"[:2000])
        expected = (site_id, request.federation_id, request.round, request.phase)
        got = (result.site_id, result.federation_id, result.round, result.phase)
        if got != expected:
            return SiteFailure(site_id, f"result {key!r} is for {got}, expected {expected}")
        return result

    def _cancel(self, run_id: UUID) -> None:
        """Cancel a flow run that missed the deadline, so that no agent picks it up late."""
        try:
            retry_busy_sync(self.client, lambda: self.client.set_flow_run_state(
                run_id, Cancelled(message="missed the round deadline"), force=True), "cancel late flow run")
        except (httpx.HTTPError, ServerBusy) as exc:  # the run stays as it is; the round goes on
            logger.warning("could not cancel late flow run %s: %s", run_id, exc)


@flow(name=CENTRAL_FLOW, persist_result=False, log_prints=False)
def deployed_federation_flow(config: ExperimentConfig, federation_id: str | None = None) -> FederationSummary:
    """Run a federation whose sites are site agents reached through the Prefect server."""
    federation_id = federation_id or new_federation_id(config.study)
    tracking_uri = config.tracking_uri()
    store = open_store(config.deployed.exchange_uri, tracking_uri=tracking_uri)
    with get_client(sync_client=True) as client:
        dispatcher = DeployedDispatcher(config.sites, store, client,
                                        poll_interval_s=config.deployed.poll_interval_s)
        return run_federation(config, dispatcher, store, federation_id=federation_id,
                              tracking_uri=tracking_uri, artifact_root=None)


def deploy(config: ExperimentConfig) -> dict[str, str]:
    """Register the site deployments and the central deployment; return deployment name -> work pool.

    Creates each site's work pool (type medfed-site) when its agent has not
    created it yet, and the central pool (type process) for
    `prefect deployment run`. Registering again updates the deployments.
    """
    from prefect.client.schemas.actions import WorkPoolCreate

    from medfed.sites.agent import SiteAgentWorker

    registered: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        site_flow_id = client.create_flow(site_round)
        schema = parameter_schema(site_round.fn).model_dump_for_openapi()
        for site_id in config.sites:
            pool = site_pool(config, site_id)
            _ensure_pool(client, WorkPoolCreate(
                name=pool, type=WORKER_TYPE, base_job_template=SiteAgentWorker.get_default_base_job_template(),
            ))
            client.create_deployment(
                site_flow_id, site_id, work_pool_name=pool, entrypoint=f"medfed.sites.flows:{site_round.fn.__name__}",
                # The agent validates every request against the same pydantic model before any work,
                # and it, not the server, is what a site relies on. The server's JSON-schema check of
                # this large schema measured about 0.6 s more overhead per round (docs/benchmarks.md).
                parameter_openapi_schema=schema, enforce_parameter_schema=False, pull_steps=[],
                description=f"Round requests for site {site_id}; served by its site agent only.",
            )
            registered[f"{SITE_ROUND_FLOW}/{site_id}"] = pool

        central_flow_id = client.create_flow(deployed_federation_flow)
        _ensure_pool(client, WorkPoolCreate(name=config.deployed.central_pool, type="process"))
        client.create_deployment(
            central_flow_id, config.study, work_pool_name=config.deployed.central_pool,
            entrypoint=f"medfed.pipelines.deployed:{deployed_federation_flow.fn.__name__}",
            parameters={"config": config.model_dump(mode="json")}, pull_steps=[],
            description=f"Federation of study {config.study} over sites {', '.join(config.sites)}.",
        )
        registered[f"{CENTRAL_FLOW}/{config.study}"] = config.deployed.central_pool
    for name, pool in registered.items():
        logger.info("deployment %s registered on work pool %s", name, pool)
    return registered


def _ensure_pool(client: SyncPrefectClient, pool: object) -> None:
    from prefect.exceptions import ObjectAlreadyExists

    try:
        client.create_work_pool(pool)  # type: ignore[arg-type]
    except ObjectAlreadyExists:
        pass
