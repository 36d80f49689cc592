"""Checks of an experiment that run before Prefect or any site starts.

A mistake in the experiment (an unknown model, two site configs with one
site id, an unreachable tracking server) should cost seconds and one clear
message, not a started federation and a traceback.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from pathlib import Path

from pydantic import ValidationError

from medfed.data_contracts.tabular import load_contract
from medfed.models import get_spec
from medfed.pipelines.config import ExperimentConfig
from medfed.pipelines.strategies import build_strategy
from medfed.sites.config import load_site_config

logger = logging.getLogger(__name__)

# Seconds to wait for the MLflow server's /health endpoint.
TRACKING_TIMEOUT_S = 5.0


class ExperimentError(ValueError):
    """The experiment cannot start; the message lists every problem found."""


def check_experiment(config: ExperimentConfig, *, embedded: bool = True) -> None:
    """Raise ExperimentError listing every problem that would stop the federation."""
    problems: list[str] = []
    try:
        get_spec(config.model.name)
    except KeyError as exc:
        problems.append(f"model: {exc.args[0]}")
    try:
        build_strategy(config.strategy)
    except (ValueError, ValidationError) as exc:
        problems.append(f"strategy: {exc}")
    if config.min_sites > len(config.sites):
        problems.append(
            f"min_sites: {config.min_sites} is more than the {len(config.sites)} site(s) listed; "
            "lower min_sites or add sites"
        )
    if embedded:
        problems.extend(_check_site_configs(config))
    problems.extend(_check_tracking(config.tracking_uri()))
    if problems:
        raise ExperimentError("\n".join(f"- {p}" for p in problems))


def _check_site_configs(config: ExperimentConfig) -> list[str]:
    problems: list[str] = []
    seen: dict[str, str] = {}
    label_columns: set[str] = set()
    for path in config.sites:
        try:
            site = load_site_config(Path(path))
        except (ValidationError, ValueError, FileNotFoundError) as exc:
            problems.append(f"site config {path}: {exc}")
            continue
        if site.site_id in seen:
            problems.append(f"site id {site.site_id!r} is used by both {seen[site.site_id]} and {path}")
        seen[site.site_id] = path
        try:
            binding = site.dataset(config.data.dataset)
        except KeyError as exc:
            problems.append(f"site config {path}: {exc.args[0]}")
            continue
        if config.data.kind == "tabular":
            try:
                contract = load_contract(binding.contract)
            except (FileNotFoundError, ValueError) as exc:
                problems.append(f"site config {path}: {exc}")
                continue
            unknown = [c for c in config.data.features.columns if c not in contract.column_names]
            if unknown:
                problems.append(f"data.features: {unknown} are not columns of contract {contract.name!r}")
            if contract.label_column:
                label_columns.add(contract.label_column)
    leaked = sorted(set(config.data.features.columns) & label_columns)
    if leaked:
        problems.append(f"data.features: {leaked} is the label column; remove it from the features")
    return sorted(set(problems), key=problems.index)


def _check_tracking(uri: str) -> list[str]:
    if not uri.startswith(("http://", "https://")):
        return []
    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=TRACKING_TIMEOUT_S) as response:  # noqa: S310 - http(s) only
            if response.status == 200:
                return []
            return [f"tracking: MLflow server at {uri} answered /health with HTTP {response.status}"]
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        return [f"tracking: MLflow server at {uri} is not reachable ({reason}); start it or fix tracking.uri"]
