"""The central side of the strategy hooks: site hints, local layers and server payloads per round.

`federation.py` calls these helpers so that each strategy's extra exchange
(SCAFFOLD's control variates, FedBN's local layers, fine-tuning's settings)
stays out of the round loop itself.
"""

from __future__ import annotations

import logging

import torch

from medfed.models import build_model
from medfed.pipelines.strategies import SiteTrainingHints, Strategy
from medfed.pipelines.strategies.scaffold import CONTROL_VARIATE_KIND
from medfed.sites.exchange import ExchangeError
from medfed.sites.exchange_store import ExchangeStore, get_state, put_state
from medfed.sites.job import ModelRequest, SiteResult
from medfed.sites.local_layers import local_layer_keys
from medfed.sites.strategy_hooks import check_control_variate
from medfed.sites.training import LocalTrainingConfig

logger = logging.getLogger(__name__)


def site_training_config(training: LocalTrainingConfig, hints: SiteTrainingHints) -> LocalTrainingConfig:
    """Return the experiment's training settings with the strategy's hints applied, validated."""
    return LocalTrainingConfig.model_validate({**training.model_dump(), **hints.site_options()})


def local_keys_for(model: ModelRequest, hints: SiteTrainingHints) -> frozenset[str]:
    """Return the state-dict keys that the sites keep local, so the centre allows them to be missing."""
    if not hints.keeps_local_layers:
        return frozenset()
    with torch.random.fork_rng(devices=[]):
        network = build_model(model.name, **model.kwargs)
    return local_layer_keys(network, normalisation=hints.local_normalisation, patterns=hints.local_key_patterns)


def publish_server_payloads(
    store: ExchangeStore,
    strategy: Strategy,
    *,
    federation_id: str,
    round_number: int,
    model_name: str,
) -> str | None:
    """Write the strategy's control variate for this round and return its manifest key, if it has one."""
    payloads = strategy.server_payloads()
    unknown = sorted(set(payloads) - {CONTROL_VARIATE_KIND})
    if unknown:
        raise ValueError(f"strategy {strategy.name!r} returned payload kind(s) {unknown} that sites cannot read")
    if CONTROL_VARIATE_KIND not in payloads:
        return None
    key, _, _ = put_state(
        store, f"{federation_id}/round_{round_number:04d}/control_variate", payloads[CONTROL_VARIATE_KIND],
        kind="control_variate", federation_id=federation_id, round_number=round_number, model_name=model_name,
    )
    return key


def read_control_variate_change(
    store: ExchangeStore,
    result: SiteResult,
    *,
    global_state: dict[str, torch.Tensor],
    federation_id: str,
    round_number: int,
    hints: SiteTrainingHints,
) -> dict[str, torch.Tensor] | None:
    """Load and check a site's SCAFFOLD control-variate change; None when the strategy uses none.

    Raises ExchangeError when the strategy needs one and a site with examples sent none.
    """
    if not hints.control_variates:
        return None
    if result.control_variate is None:
        if result.num_examples > 0:
            raise ExchangeError("result names no control-variate change, which SCAFFOLD needs", site_id=result.site_id)
        return None
    manifest, tensors = get_state(store, result.control_variate, site_id=result.site_id)
    if manifest.site_id != result.site_id:
        raise ExchangeError(f"control variate names site {manifest.site_id!r}", site_id=result.site_id)
    check_control_variate(
        manifest, tensors, reference=global_state, federation_id=federation_id,
        site_id=result.site_id, round_number=round_number,
    )
    return tensors
