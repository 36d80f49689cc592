"""Site flows installed with medfed: the only code a site agent runs for the centre.

A deployment on a site's work pool names one of these flows; the agent looks
the name up here and runs the function it finds, never code from the
deployment's storage. The flows run inside the agent process, where the
site's `SiteJob` keeps its data loaded between rounds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from prefect import Flow, flow
from pydantic import BaseModel

from medfed.sites.job import RoundRequest

logger = logging.getLogger(__name__)

SITE_ROUND_FLOW = "site-round"


class RequestServer(Protocol):
    """What a site flow needs from the agent that runs it."""

    def serve(self, request: RoundRequest) -> None: ...


_server: RequestServer | None = None


def bind_server(server: RequestServer | None) -> None:
    """Make `server` serve the site flows of this process (the agent calls this at start)."""
    global _server
    _server = server


@flow(name=SITE_ROUND_FLOW, persist_result=False, log_prints=False, validate_parameters=True)
def site_round(request: RoundRequest) -> None:
    """Serve one round request: statistics, local training or evaluation.

    The result goes to the exchange store as JSON (through the egress
    ledger); the flow returns nothing, so no result crosses through Prefect.
    """
    if _server is None:
        raise RuntimeError(
            f"flow {SITE_ROUND_FLOW!r} runs only inside a site agent (`medfed site agent SITE.yaml`)"
        )
    _server.serve(request)


@dataclass(frozen=True)
class InstalledFlow:
    """A site flow with its single parameter and the pydantic model that parameter must fit."""

    flow: Flow[..., None]
    parameter: str
    model: type[BaseModel]


# Flow name -> installed flow. The agent accepts a flow only when its name is
# both here and in the site config's `allowed_flows`.
INSTALLED_SITE_FLOWS: dict[str, InstalledFlow] = {
    SITE_ROUND_FLOW: InstalledFlow(site_round, "request", RoundRequest),
}
