"""Failure reasons a site may send to the centre.

A failure reason crosses the trust boundary like any other output. medfed's
own errors are built to name files, columns, rows, tags and rules, never
values, so their messages may leave. Any other exception (a library's
decode or parse error, for instance) can quote the data it choked on: only
its type leaves, and the full error stays in the site's own log.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class SiteJobError(RuntimeError):
    """A site job failed; the message is safe to send to the centre."""


def _safe_error_types() -> tuple[type[BaseException], ...]:
    # Imported here because these modules import the site job, which imports this module.
    from medfed.data_contracts.tabular import ContractViolation
    from medfed.sites.exchange import ExchangeError
    from medfed.sites.job import RequestRejected

    types: list[type[BaseException]] = [ContractViolation, ExchangeError, RequestRejected, SiteJobError]
    try:
        from medfed.data_contracts.dicom import DicomContractError
        from medfed.sites.dicom.index import SeriesNotFoundError
        from medfed.sites.dicom.labels import LabelManifestError
        from medfed.sites.dicom.pixels import IngestionError

        types += [DicomContractError, IngestionError, LabelManifestError, SeriesNotFoundError]
    except ImportError:  # pragma: no cover - DICOM support is part of medfed, but stay robust
        pass
    return tuple(types)


def is_safe_to_send(exc: BaseException) -> bool:
    """Return whether `exc` is one of medfed's own errors, whose messages carry no data values."""
    return isinstance(exc, _safe_error_types())


def describe_failure(exc: BaseException) -> str:
    """Return a reason for `exc` that is safe to send to the centre."""
    if is_safe_to_send(exc):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__} at the site; the full error is in the site's own log"


def to_site_error(exc: BaseException, *, site_id: str, what: str) -> SiteJobError:
    """Log `exc` in full at the site and return a SiteJobError whose message may leave it."""
    logger.error("site %s: %s failed", site_id, what, exc_info=exc)
    return SiteJobError(f"{what} failed: {describe_failure(exc)}")
