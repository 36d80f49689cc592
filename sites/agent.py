"""The site agent: a Prefect worker that runs the site's flows inside its own process.

Hospital IT starts one agent per site (`medfed site agent SITE.yaml`). It
connects outbound only: to the Prefect API, to poll the site's own work pool,
and to the exchange store (by default the MLflow server's artifact proxy).

Why a worker type of its own: Prefect's process worker starts a Python
subprocess per flow run, which costs seconds before any work starts
(interpreter, imports, pull step) and reloads the site's data every time.
`SiteAgentWorker` is a regular Prefect worker (`BaseWorker`: work pool,
heartbeats, flow-run states, cancellation of pending runs), but its `run`
calls the installed site flow's function in a thread of the agent process.
The `SiteJob`, its validated data and torch stay loaded between rounds.
The agent also listens to the Prefect API's event stream and claims a flow
run for its pool as soon as the run is scheduled, so the slow regular poll
is only a fallback.

Before any work, `run` checks the flow run. The flow must be installed with
medfed (`medfed.sites.flows`) and on the site's `allowed_flows`. Its
parameters must fit the flow's pydantic schema, name no local path, and
request an allowed model and a dataset the site offers. A flow run that
fails a check is set to Failed with the reason and logged, and nothing else
happens.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import signal
import socket
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from uuid import UUID

import anyio
import anyio.abc
import httpx
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import WorkerFlowRunResponse
from prefect.exceptions import Abort, ObjectNotFound
from prefect.states import Completed, Crashed, Failed, Running
from prefect.utilities.engine import propose_state
from prefect.workers.base import BaseJobConfiguration, BaseVariables, BaseWorker, BaseWorkerResult
from pydantic import BaseModel, ValidationError

from medfed.sites.config import SiteConfig
from medfed.sites.errors import describe_failure
from medfed.sites.exchange_store import ExchangeStore
from medfed.sites.flows import INSTALLED_SITE_FLOWS, InstalledFlow, bind_server
from medfed.sites.job import RequestRejected, RoundRequest, SiteJob, result_key
from medfed.sites.ledger import EgressLedger
from medfed.sites.prefect_retry import ServerBusy, retry_busy
from medfed.sites.remote_store import open_store, store_uri

logger = logging.getLogger(__name__)

WORKER_TYPE = "medfed-site"
# Characters that make a string a local path: a separator, a home or drive
# prefix, a parent reference or a file URL.
_PATH_LIKE = re.compile(r"[/\\]|^~|^\.\.?$|^[A-Za-z]:|^file:", re.IGNORECASE)
# Parameter fields that contain exchange-store keys (with '/'). `_check_store_keys` checks them instead.
_STORE_KEY_FIELDS = {("request", "global_model"), ("request", "control_variate")}


def find_path_like(value: Any, location: tuple[str, ...] = ()) -> str | None:
    """Return the dotted location of the first string in `value` that looks like a local path."""
    if isinstance(value, str):
        if location not in _STORE_KEY_FIELDS and _PATH_LIKE.search(value):
            return ".".join(location) or "<value>"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and _PATH_LIKE.search(key):
                return ".".join((*location, key))
            found = find_path_like(item, (*location, str(key)))
            if found:
                return found
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = find_path_like(item, (*location, str(index)))
            if found:
                return found
    return None


def validate_flow_run(
    config: SiteConfig, flow_name: str, parameters: dict[str, Any]
) -> tuple[InstalledFlow, BaseModel]:
    """Check a flow run against the site's allow-lists and the flow's schema; raise RequestRejected."""
    if flow_name not in config.allowed_flows:
        raise RequestRejected(
            f"flow {flow_name!r} is not in the allowed_flows of site {config.site_id!r} "
            f"({', '.join(config.allowed_flows)}); add it to the site config to accept it"
        )
    installed = INSTALLED_SITE_FLOWS.get(flow_name)
    if installed is None:
        raise RequestRejected(
            f"flow {flow_name!r} is not a site flow installed with medfed "
            f"(installed: {', '.join(sorted(INSTALLED_SITE_FLOWS))})"
        )
    if set(parameters) != {installed.parameter}:
        raise RequestRejected(
            f"flow {flow_name!r} takes exactly one parameter, {installed.parameter!r}; "
            f"got {sorted(parameters)}"
        )
    location = find_path_like(parameters)
    if location is not None:
        raise RequestRejected(
            f"parameter {location} looks like a file path; the centre may send names only, "
            "and local paths come from the site config"
        )
    try:
        request = installed.model.model_validate(parameters[installed.parameter])
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in error["loc"]) or "<root>" for error in exc.errors())
        raise RequestRejected(
            f"parameter {installed.parameter!r} does not fit the {installed.model.__name__} schema "
            f"(invalid fields: {fields})"
        ) from exc
    if isinstance(request, RoundRequest):
        _check_round_request(config, request)
    return installed, request


def _check_round_request(config: SiteConfig, request: RoundRequest) -> None:
    if request.model.name not in config.allowed_models:
        raise RequestRejected(
            f"model {request.model.name!r} is not in the allowed_models of site {config.site_id!r} "
            f"({', '.join(config.allowed_models)}); add it to the site config to accept it"
        )
    try:
        config.dataset(request.data.dataset)
    except KeyError as exc:
        raise RequestRejected(exc.args[0]) from exc
    _check_store_keys(request)


def _check_store_keys(request: RoundRequest) -> None:
    """Accept a store key only inside the request's federation: '<federation>/round_NNNN/<name>.json'."""
    expected = re.compile(rf"^{re.escape(request.federation_id)}/round_\d{{4}}/[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*\.json$")
    for name in sorted(field for _, field in _STORE_KEY_FIELDS):
        key = getattr(request, name, None)
        if key is not None and not expected.match(key):
            raise RequestRejected(
                f"{name} {key!r} is not a store key of federation {request.federation_id!r} "
                "(expected '<federation>/round_NNNN/<name>.json')"
            )


class SiteAgent:
    """Serve round requests for one site, recording every egress in the ledger first."""

    def __init__(self, config: SiteConfig, store: ExchangeStore, ledger: EgressLedger) -> None:
        self.config = config
        self.store = store
        self.ledger = ledger
        self.destination = store_uri(store)
        self.job = SiteJob(config, store, on_egress=self._record_egress)
        self._request: contextvars.ContextVar[RoundRequest | None] = contextvars.ContextVar(
            "medfed_site_request", default=None
        )

    @classmethod
    def from_config(cls, config: SiteConfig) -> SiteAgent:
        store = open_store(config.exchange_uri, tracking_uri=config.mlflow_tracking_uri)
        return cls(config, store, EgressLedger.for_state_dir(config.state_dir, config.site_id))

    def _record_egress(self, kind: str, key: str, data: bytes) -> None:
        request = self._request.get()
        if request is None:
            raise RuntimeError(f"egress of {kind} {key!r} outside a request; nothing may leave the site")
        self.ledger.append(federation_id=request.federation_id, round_number=request.round,
                           destination=self.destination, kind=kind, key=key, data=data)

    def serve(self, request: RoundRequest) -> None:
        """Run the request and write its result JSON to the exchange store.

        A request this site has already served (the same federation, round
        and phase, found in the ledger) is rejected, so a replayed request
        cannot make the site train or send again.
        """
        key = result_key(request, self.config.site_id)
        if self.ledger.contains_key(key):
            raise RequestRejected(
                f"site {self.config.site_id!r} already served {request.phase} of round {request.round} "
                f"of federation {request.federation_id!r}; a request is served once"
            )
        token = self._request.set(request)
        try:
            logger.info("site %s: %s for federation %s round %d started", self.config.site_id,
                        request.phase, request.federation_id, request.round)
            started = time.perf_counter()
            result = self.job.run(request)
            result.compute_seconds = round(time.perf_counter() - started, 6)
            result.ledger_head = self.ledger.head()
            data = result.model_dump_json().encode()
            self._record_egress("result", key, data)
            self.store.put(key, data)
            logger.info("site %s: %s for federation %s round %d finished", self.config.site_id,
                        request.phase, request.federation_id, request.round)
        finally:
            self._request.reset(token)


class SiteAgentJobConfiguration(BaseJobConfiguration):
    """Job configuration of the site agent, which starts no infrastructure and so adds no fields."""

    @classmethod
    async def resolve_for_flow_run(cls, flow_run: FlowRun, **kwargs: Any) -> SiteAgentJobConfiguration:
        """Return an empty configuration without the base class's API reads: the agent uses none of it."""
        return cls()


class SiteAgentVariables(BaseVariables):
    """Job variables of the site agent (the base ones, which it ignores)."""


class SiteAgentResult(BaseWorkerResult):
    """Outcome of one flow run in the agent. A rejected run also has status_code 0, because it is already Failed."""


@dataclass
class RunningJob:
    flow_run: FlowRun
    label: str
    done: anyio.Event = field(default_factory=anyio.Event)
    final_state: str | None = None


class SiteAgentWorker(BaseWorker[SiteAgentJobConfiguration, SiteAgentVariables, SiteAgentResult]):
    """A Prefect worker that runs installed site flows in its own process."""

    type = WORKER_TYPE
    job_configuration = SiteAgentJobConfiguration
    job_configuration_variables = SiteAgentVariables
    _description = "Run medfed site flows inside the site agent process, with the site's data kept loaded."
    _display_name = "medfed site agent"

    def __init__(self, agent: SiteAgent, **kwargs: Any) -> None:
        super().__init__(work_pool_name=agent.config.pool_name, **kwargs)
        self.agent = agent
        self.stopping = False
        self.current: RunningJob | None = None
        self._flow_names: dict[UUID, str] = {}
        # Flow runs checked and claimed, waiting for `run`: flow run id -> (installed flow, parameter).
        self._accepted: dict[UUID, tuple[InstalledFlow, BaseModel]] = {}

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        if self.stopping:
            return []
        return await super().get_and_submit_flow_runs()

    async def wake_on_scheduled_runs(self) -> None:
        """Poll at once whenever the server announces a flow run scheduled on this pool.

        The subscription is a read-only websocket to the Prefect API's event
        stream, so the agent reacts within milliseconds while its regular
        poll (a database write on the server each time) can stay slow.
        """
        from prefect.events.clients import PrefectEventSubscriber
        from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

        while self._work_pool is None:
            await anyio.sleep(0.1)
        pool_resource = f"prefect.work-pool.{self._work_pool.id}"
        event_filter = EventFilter(
            event=EventNameFilter(name=["prefect.flow-run.Scheduled"]),
            related=EventRelatedFilter(resources_in_roles=[(pool_resource, "work-pool")]),
        )
        while not self.stopping:
            try:
                async with PrefectEventSubscriber(filter=event_filter, reconnect_on_clean_close=True) as events:
                    logger.info("site %s: listening for flow runs scheduled on pool %s", self.agent.config.site_id,
                                self.agent.config.pool_name)
                    async for event in events:
                        if not self.stopping:
                            await self._submit_announced(event.resource.id)
            except Exception as exc:  # the regular poll still works; retry the stream later
                logger.warning("site %s: event stream lost (%s: %s); polling every %g s until it is back",
                               self.agent.config.site_id, type(exc).__name__, exc, self.agent.config.poll_interval_s)
                await anyio.sleep(max(5.0, self.agent.config.poll_interval_s))

    async def _submit_announced(self, resource_id: str) -> None:
        """Submit the flow run an event names, read by id: unlike a pool poll, a read is no server write."""
        try:
            flow_run = await self.client.read_flow_run(UUID(resource_id.removeprefix("prefect.flow-run.")))
        except (ValueError, ObjectNotFound):
            return
        pool = self._work_pool
        if (pool is None or flow_run.work_pool_name != pool.name or flow_run.work_queue_id is None
                or flow_run.state is None or not flow_run.state.is_scheduled()):
            return
        await self._submit_scheduled_flow_runs([
            WorkerFlowRunResponse(work_pool_id=pool.id, work_queue_id=flow_run.work_queue_id, flow_run=flow_run)
        ])

    async def _propose_pending_state(self, flow_run: FlowRun) -> bool:
        """Check the flow run, then claim it by moving it straight from Scheduled to Running.

        A rejected flow run goes from Scheduled to Failed and never runs. The
        base worker's Pending state is skipped: each state is one API write,
        and on a SQLite-backed Prefect server every write can collide with a
        write of the centre or of another site and wait for a retry.
        """
        site = self.agent.config.site_id
        flow_name = await self._flow_name(flow_run.flow_id)
        try:
            self._accepted[flow_run.id] = validate_flow_run(self.agent.config, flow_name, dict(flow_run.parameters))
        except RequestRejected as exc:
            logger.error("site %s: flow run %s (%s) rejected, nothing run: %s", site, flow_run.id, flow_name, exc)
            await self._set_state(flow_run, Failed(message=f"rejected by site {site}: {exc}"))
            return False
        try:
            state = await retry_busy(
                self.client, lambda: propose_state(self.client, Running(), flow_run_id=flow_run.id), "claim flow run"
            )
        except Abort as exc:
            logger.info("site %s: flow run %s not claimed, the server rejected the Running state: %s",
                        site, flow_run.id, exc)
            state = None
        except (httpx.HTTPError, ServerBusy) as exc:
            logger.warning("site %s: could not claim flow run %s: %s", site, flow_run.id, exc)
            state = None
        if state is None or not state.is_running():
            self._accepted.pop(flow_run.id, None)
            return False
        return True

    async def run(
        self,
        flow_run: FlowRun,
        configuration: SiteAgentJobConfiguration,
        task_status: anyio.abc.TaskStatus[str] | None = None,
    ) -> SiteAgentResult:
        if task_status is not None:
            # No infrastructure id: the job runs inside the agent, and recording one is an API write.
            task_status.started(None)
        accepted = self._accepted.pop(flow_run.id, None)
        if accepted is None:  # only runs claimed by `_propose_pending_state` reach here
            raise RuntimeError(f"flow run {flow_run.id} reached the agent without being checked and claimed")
        installed, request = accepted
        label = installed.flow.name
        if isinstance(request, RoundRequest):
            label = f"{request.phase} of federation {request.federation_id} round {request.round}"
        job = RunningJob(flow_run, label)
        self.current = job
        try:
            job.final_state = await self._execute(flow_run, installed, request, label)
        finally:
            job.done.set()
            self.current = None
        return SiteAgentResult(identifier=str(flow_run.id), status_code=0)

    async def _execute(self, flow_run: FlowRun, installed: InstalledFlow, request: BaseModel, label: str) -> str:
        """Run the installed flow's function in a thread and set the flow run Completed or Failed.

        The agent sets the states itself instead of going through Prefect's
        flow engine, because the engine adds several API writes per flow run.
        """
        site = self.agent.config.site_id
        try:
            await anyio.to_thread.run_sync(partial(installed.flow.fn, request), abandon_on_cancel=True)
        except Exception as exc:  # logged in full here; the centre gets a reason that quotes no data
            logger.error("site %s: flow run %s (%s) failed", site, flow_run.id, label, exc_info=exc)
            await self._set_state(flow_run, Failed(message=f"site {site}: {describe_failure(exc)}"[:2000]))
            return "FAILED"
        await self._set_state(flow_run, Completed())
        return "COMPLETED"

    async def _propose_submitting_state(self, flow_run: FlowRun) -> None:
        """Skip the Submitting state: the agent starts no infrastructure, and each state is an API write."""

    async def _give_worker_labels_to_flow_run(self, flow_run_id: Any) -> None:
        """Skip copying worker labels to the flow run, one API write per run that the agent does not need."""

    async def _flow_name(self, flow_id: UUID) -> str:
        if flow_id not in self._flow_names:
            self._flow_names[flow_id] = (await self.client.read_flow(flow_id)).name
        return self._flow_names[flow_id]

    async def _set_state(self, flow_run: FlowRun, state: Any) -> None:
        try:
            await retry_busy(self.client, lambda: propose_state(self.client, state, flow_run_id=flow_run.id),
                             f"set flow run {state.type.value}")
        except Abort as exc:
            logger.warning("site %s: server rejected state %s for flow run %s: %s",
                           self.agent.config.site_id, state.type.value, flow_run.id, exc)
        except (httpx.HTTPError, ServerBusy) as exc:
            logger.error("site %s: could not set flow run %s to %s: %s",
                         self.agent.config.site_id, flow_run.id, state.type.value, exc)

    async def abandon_current(self, reason: str) -> None:
        """Mark the running flow run Crashed, so that the centre stops waiting for it."""
        job = self.current
        if job is None:
            return
        await self._set_state(job.flow_run, Crashed(message=f"site agent {self.agent.config.site_id}: {reason}"))


async def ensure_work_pool(client: PrefectClient, config: SiteConfig) -> None:
    """Create the site's work pool of the agent's type, or check that the existing one has that type."""
    name = config.pool_name
    try:
        pool = await client.read_work_pool(name)
    except ObjectNotFound:
        await client.create_work_pool(WorkPoolCreate(
            name=name, type=WORKER_TYPE, base_job_template=SiteAgentWorker.get_default_base_job_template(),
            description=f"medfed site {config.site_id}: polled only by its site agent",
        ))
        logger.info("site %s: work pool %s created", config.site_id, name)
        return
    if pool.type != WORKER_TYPE:
        raise RuntimeError(
            f"work pool {name!r} has type {pool.type!r}, but a site agent needs type {WORKER_TYPE!r}; "
            "delete the pool (prefect work-pool delete) or set work_pool in the site config to a new name"
        )


def run_agent(config: SiteConfig) -> str:
    """Run the site agent until SIGTERM or SIGINT; return how the last job ended: idle, finished or abandoned."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_LOGGING_TO_API_ENABLED,
        PREFECT_WORKER_QUERY_SECONDS,
        temporary_settings,
    )

    if config.prefect_api_url is None:
        raise ValueError(f"site {config.site_id!r}: set prefect_api_url in the site config to run the agent")
    updates = {
        PREFECT_API_URL: config.prefect_api_url,
        PREFECT_WORKER_QUERY_SECONDS: config.poll_interval_s,
        PREFECT_LOGGING_TO_API_ENABLED: config.share_logs,
    }
    import torch

    torch.set_num_threads(config.threads)
    with temporary_settings(updates=updates):
        agent = SiteAgent.from_config(config)
        bind_server(agent)
        try:
            return anyio.run(_serve, agent)
        finally:
            bind_server(None)


async def _serve(agent: SiteAgent) -> str:
    config = agent.config
    worker = SiteAgentWorker(agent, name=f"{config.site_id}@{socket.gethostname()}", limit=1,
                             create_pool_if_not_found=False)
    stop_requested = anyio.Event()
    signals_received: list[str] = []
    outcome = "idle"

    async def read_signals() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                signals_received.append(signal.Signals(signum).name)
                stop_requested.set()

    async def stop_on_signal(scope: anyio.CancelScope) -> None:
        nonlocal outcome
        await stop_requested.wait()
        worker.stopping = True
        job = worker.current
        if job is None:
            logger.info("site %s: %s received, no job running; agent stopping", config.site_id,
                        signals_received[0])
        else:
            logger.warning(
                "site %s: %s received during %s; waiting up to %g s for it to finish "
                "(send the signal again to abandon it now)",
                config.site_id, signals_received[0], job.label, config.shutdown_grace_s,
            )
            with anyio.move_on_after(config.shutdown_grace_s):
                while not job.done.is_set() and len(signals_received) < 2:
                    await anyio.sleep(0.05)
            if job.done.is_set():
                outcome = "finished"
                logger.info("site %s: current job finished (%s, flow run %s, state %s); agent stopping",
                            config.site_id, job.label, job.flow_run.id, job.final_state)
            else:
                outcome = "abandoned"
                await worker.abandon_current("stopped by signal before the job finished")
                logger.warning("site %s: current job abandoned (%s, flow run %s marked Crashed); agent stopping",
                               config.site_id, job.label, job.flow_run.id)
        scope.cancel()

    async with get_client() as client:
        await ensure_work_pool(client, config)
    async with anyio.create_task_group() as group:
        group.start_soon(read_signals)
        group.start_soon(stop_on_signal, group.cancel_scope)
        if config.wake_on_events:
            group.start_soon(worker.wake_on_scheduled_runs)
        logger.info("site %s: agent polling work pool %s every %g s at %s", config.site_id, config.pool_name,
                    config.poll_interval_s, config.prefect_api_url)
        await worker.start(printer=logger.info)
    logger.info("site %s: agent stopped (%s)", config.site_id, outcome)
    if outcome == "abandoned":
        # The abandoned job's thread cannot be interrupted; end the process without waiting for it.
        logging.shutdown()
        os._exit(0)
    return outcome
