"""Strategy additions to a site's round beyond plain local training.

The site job calls `StrategyHooks.prepare` after loading the global model and
`StrategyHooks.finish` after training. Between them they apply FedBN's local
layers (kept in the site's state folder, absent from every payload) and
SCAFFOLD's control variates (the centre's c read from the exchange store, the
site's c_i from the state folder). With no such hints in the training config
both calls change nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from medfed.sites.control_variates import ControlVariate, gradient_correction, next_control_variate
from medfed.sites.exchange import ExchangeError, Manifest
from medfed.sites.exchange_store import ExchangeStore, get_state
from medfed.sites.local_layers import SiteStateStore, local_layer_keys, split_state
from medfed.sites.training import LocalTrainingConfig, TrainResult

logger = logging.getLogger(__name__)

LOCAL_LAYERS_STATE = "local_layers"
CONTROL_VARIATE_STATE = "control_variate"


@dataclass
class RoundOutput:
    """The shared weights and SCAFFOLD's c_i change: the parts of a round that may leave the site."""

    shared_state: dict[str, torch.Tensor]
    control_variate_change: ControlVariate | None


class StrategyHooks:
    """Apply the strategy hints of one training or evaluation request at one site."""

    def __init__(
        self,
        *,
        site_id: str,
        state_dir: Path,
        federation_id: str,
        training: LocalTrainingConfig,
        store: ExchangeStore,
        server_control_variate: str | None = None,
    ) -> None:
        self.site_id = site_id
        self.federation_id = federation_id
        self.training = training
        self.store = store
        self.server_control_variate_key = server_control_variate
        self.state = SiteStateStore(state_dir, federation_id)
        self.local_keys: frozenset[str] = frozenset()
        self.gradient_correction: ControlVariate | None = None
        self._server_control_variate: ControlVariate = {}
        self._site_control_variate: ControlVariate = {}
        self._global_parameters: ControlVariate = {}

    def prepare(self, model: nn.Module) -> None:
        """Put the site's own local layers back into `model` and load SCAFFOLD's control variates."""
        self.restore_local_layers(model)
        if self.training.control_variates:
            self._server_control_variate = self._read_server_control_variate(model)
            self._site_control_variate = self.state.load(CONTROL_VARIATE_STATE) or {}
            self.gradient_correction = gradient_correction(
                model, self._server_control_variate, self._site_control_variate
            )
            self._global_parameters = {
                name: parameter.detach().clone() for name, parameter in model.named_parameters()
            }

    def finish(self, model: nn.Module, result: TrainResult) -> RoundOutput:
        """Save what stays at the site and return what may leave it."""
        state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
        shared, local = split_state(state, self.local_keys)
        if local:
            self.state.save(LOCAL_LAYERS_STATE, local)
        change = None
        if self.training.control_variates and result.steps > 0:
            local_parameters = {name: parameter.detach() for name, parameter in model.named_parameters()}
            updated, change = next_control_variate(
                self._site_control_variate,
                self._server_control_variate,
                self._global_parameters,
                local_parameters,
                steps=result.steps,
                learning_rate=self.training.lr,
            )
            # NOTE: c_i is saved before the centre accepts the update. If the centre
            # rejects it, c no longer equals the weighted mean of the sites' c_i.
            self.state.save(CONTROL_VARIATE_STATE, updated)
        return RoundOutput(shared_state=shared, control_variate_change=change)

    def restore_local_layers(self, model: nn.Module) -> None:
        """Overwrite the global model's local layers with the ones this site saved, if any."""
        if not self.training.keeps_local_layers:
            return
        self.local_keys = local_layer_keys(
            model,
            normalisation=self.training.local_normalisation,
            patterns=self.training.local_key_patterns,
        )
        saved = self.state.load(LOCAL_LAYERS_STATE)
        if saved is None:
            logger.info("site %s: no local layers saved yet, starting from the global ones", self.site_id)
            return
        unexpected = sorted(set(saved) - self.local_keys)
        if unexpected:
            raise ValueError(
                f"site {self.site_id}: saved local layers contain {unexpected[0]!r}, which the model does "
                f"not keep local; delete {self.state.folder} to start this federation's local layers afresh"
            )
        model.load_state_dict(saved, strict=False)

    def _read_server_control_variate(self, model: nn.Module) -> ControlVariate:
        if self.server_control_variate_key is None:
            return {}
        manifest, tensors = get_state(self.store, self.server_control_variate_key)
        check_control_variate(
            manifest, tensors, model=model, federation_id=self.federation_id, site_id=None
        )
        return tensors


def check_control_variate(
    manifest: Manifest,
    tensors: dict[str, torch.Tensor],
    *,
    model: nn.Module | None = None,
    reference: dict[str, torch.Tensor] | None = None,
    federation_id: str,
    site_id: str | None,
    round_number: int | None = None,
) -> None:
    """Reject a control-variate payload whose kind, federation, round, keys, shapes or values do not fit.

    The reference is the model's parameters (at a site) or the global state
    (at the centre). Raises ExchangeError naming the site and the key at fault.
    """
    if manifest.kind != "control_variate":
        raise ExchangeError(f"payload kind is {manifest.kind!r}, expected 'control_variate'", site_id=site_id)
    if manifest.federation_id != federation_id:
        raise ExchangeError(
            f"control variate is for federation {manifest.federation_id!r}, expected {federation_id!r}",
            site_id=site_id,
        )
    if round_number is not None and manifest.round != round_number:
        raise ExchangeError(
            f"control variate is for round {manifest.round}, expected round {round_number}", site_id=site_id
        )
    if reference is None:
        if model is None:
            raise ValueError("pass the model or a reference state to check a control variate against")
        reference = dict(model.named_parameters())
    for name, tensor in tensors.items():
        expected = reference.get(name)
        if expected is None or not expected.is_floating_point():
            raise ExchangeError("control variate has a tensor the model does not train", site_id=site_id, key=name)
        if tuple(tensor.shape) != tuple(expected.shape):
            raise ExchangeError(
                f"shape {list(tensor.shape)} does not match the model's {list(expected.shape)}",
                site_id=site_id,
                key=name,
            )
        if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            raise ExchangeError("control variate values must be finite floats", site_id=site_id, key=name)
