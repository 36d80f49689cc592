"""Prefect API writes retried quickly when a SQLite-backed Prefect server is busy.

A Prefect server on SQLite responds with 503 when two write transactions collide
("database is locked"), which happens whenever several site agents and the
centre write at the same moment. Prefect's client (`prefect.client.base`,
Prefect 3.9) then sleeps 2 s, 4 s, ... between attempts, and it sleeps 2 s
even after its last attempt when `PREFECT_CLIENT_MAX_RETRIES` is 0. One such
pause alone would exceed a round's overhead budget.

`retry_busy` and `retry_busy_sync` run one client call with the HTTP client's
retrying `send` replaced, for that call only, by a single plain httpx send.
A 503 then raises `ServerBusy` at once, and the call is repeated after 50 ms,
growing by half each time, for at most `MAX_ATTEMPTS` attempts (about 4 s
in all). Other status codes raise as Prefect's client raises them. A
PostgreSQL-backed Prefect server rarely responds with 503, and then this costs
nothing.

NOTE: the swap replaces an attribute of the shared HTTP client while the call
runs; other requests made through the same client during that time (such as a
worker heartbeat) also go out once, without Prefect's retries.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import anyio
import httpx
from prefect.client.base import PrefectResponse

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_ATTEMPTS = 12
FIRST_DELAY_S = 0.05
BACKOFF = 1.5
# Guards the swap of `send` when calls overlap on one client (threads of the centre, tasks of an agent).
_SWAP_LOCK = threading.Lock()


class ServerBusy(RuntimeError):
    """The Prefect server responded with 503 (a busy SQLite database), so the call may be repeated."""


def _checked(response: httpx.Response) -> httpx.Response:
    if response.status_code == 503:
        raise ServerBusy(f"Prefect server busy: HTTP 503 for {response.request.method} {response.request.url}")
    prefect_response = PrefectResponse.from_httpx_response(response)
    prefect_response.raise_for_status()
    return prefect_response


@contextlib.contextmanager
def _single_attempt(client: Any) -> Iterator[None]:
    """Make `client` (a PrefectClient or SyncPrefectClient) send each request once, without sleeping."""
    http = client._client
    with _SWAP_LOCK:
        depth = getattr(http, "_medfed_single_attempt_depth", 0)
        http._medfed_single_attempt_depth = depth + 1
        if depth == 0:
            http.send = _send_once(http)
    try:
        yield
    finally:
        with _SWAP_LOCK:
            http._medfed_single_attempt_depth -= 1
            if http._medfed_single_attempt_depth == 0:
                del http.send  # back to the class's retrying send


def _send_once(http: httpx.Client | httpx.AsyncClient) -> Callable[..., Any]:
    if isinstance(http, httpx.AsyncClient):
        async def send_once(request: httpx.Request, *args: Any, **kwargs: Any) -> httpx.Response:
            return _checked(await httpx.AsyncClient.send(http, request, *args, **kwargs))
    else:
        def send_once(request: httpx.Request, *args: Any, **kwargs: Any) -> httpx.Response:
            return _checked(httpx.Client.send(http, request, *args, **kwargs))
    return send_once


async def retry_busy(client: Any, call: Callable[[], Awaitable[T]], what: str) -> T:
    """Await `call()` (which uses `client`), repeating it quickly while the server responds with 503."""
    delay = FIRST_DELAY_S
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            with _single_attempt(client):
                return await call()
        except ServerBusy:
            if attempt == MAX_ATTEMPTS:
                raise
            logger.debug("%s: Prefect server busy (503), attempt %d of %d", what, attempt, MAX_ATTEMPTS)
        await anyio.sleep(delay)
        delay *= BACKOFF
    raise AssertionError("unreachable")


def retry_busy_sync(client: Any, call: Callable[[], T], what: str) -> T:
    """Call `call()` (which uses `client`), repeating it quickly while the server responds with 503."""
    delay = FIRST_DELAY_S
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            with _single_attempt(client):
                return call()
        except ServerBusy:
            if attempt == MAX_ATTEMPTS:
                raise
            logger.debug("%s: Prefect server busy (503), attempt %d of %d", what, attempt, MAX_ATTEMPTS)
        time.sleep(delay)
        delay *= BACKOFF
    raise AssertionError("unreachable")
