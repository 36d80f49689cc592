"""The site job: one function that serves every request the centre makes of a site.

The same `SiteJob.run` serves the embedded shape (called from a Prefect task
in the researcher's process) and the deployed shape (called by the site
agent's flow). A request carries names and numbers only; the site maps the
dataset name to a file through its own config. What the job returns is JSON:
aggregates, counts and the store key of the update it wrote.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from medfed.data_contracts.report import ContractReport
from medfed.models import build_model, get_spec
from medfed.sites.config import SiteConfig
from medfed.sites.datasets import DataSpec, SiteDataset, open_dataset
from medfed.sites.errors import is_safe_to_send, to_site_error
from medfed.sites.exchange_store import ExchangeStore, get_state, put_state
from medfed.sites.preprocessing import PreprocessingPlan, SiteStatistics
from medfed.sites.strategy_hooks import StrategyHooks
from medfed.sites.training import LocalTrainingConfig, evaluate, fine_tune_and_evaluate, train_local

logger = logging.getLogger(__name__)

Phase = Literal["statistics", "train", "evaluate", "fine_tune"]


class ModelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


class RoundRequest(BaseModel):
    """Request from the centre to a site, validated before any work starts."""

    model_config = ConfigDict(extra="forbid")

    federation_id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")
    round: int = Field(ge=0)
    phase: Phase
    model: ModelRequest
    data: DataSpec
    training: LocalTrainingConfig = Field(default_factory=LocalTrainingConfig)
    seed: int = 0
    global_model: str | None = Field(default=None, description="Store key of the global model's manifest.")
    preprocessing: PreprocessingPlan | None = None
    control_variate: str | None = Field(
        default=None, description="Store key of the centre's SCAFFOLD control-variate manifest."
    )


class SiteResult(BaseModel):
    """Site result: aggregates and store keys, never rows or tensors."""

    site_id: str
    federation_id: str
    round: int
    phase: Phase
    num_examples: int = 0
    metrics: dict[str, float] = Field(default_factory=dict)
    withheld_metrics: list[str] = Field(default_factory=list)
    update: str | None = None
    update_sha256: str | None = None
    update_bytes: int | None = None
    control_variate: str | None = Field(
        default=None, description="Store key of the manifest of this site's SCAFFOLD control-variate change."
    )
    statistics: SiteStatistics | None = None
    contract_report: ContractReport | None = None
    sample_images: str | None = Field(
        default=None,
        description="Store key of a PNG grid of test images; only a site whose data is synthetic sends one.",
    )
    ledger_head: str | None = Field(
        default=None,
        description="Hash of the site's last egress ledger entry before this result (deployed shape).",
    )
    compute_seconds: float | None = Field(
        default=None, description="Wall time of the site's work on this request, in seconds (deployed shape)."
    )


class RequestRejected(PermissionError):
    """The site declines a request (model or flow not allowed, dataset not offered)."""


# Called with (kind, store key, payload bytes) before anything leaves the site.
EgressHook = Callable[[str, str, bytes], None]


class SiteJob:
    """Serve round requests for one site, keeping its data loaded between rounds."""

    def __init__(self, config: SiteConfig, store: ExchangeStore, on_egress: EgressHook | None = None) -> None:
        self.config = config
        self.store = store
        self.on_egress = on_egress
        self._datasets: dict[str, SiteDataset] = {}
        self._lock = threading.Lock()

    @property
    def site_id(self) -> str:
        return self.config.site_id

    def check_request(self, request: RoundRequest) -> None:
        """Reject a request for a model or dataset this site does not offer."""
        if request.model.name not in self.config.allowed_models:
            raise RequestRejected(
                f"site {self.site_id!r} does not allow model {request.model.name!r}; "
                f"allowed: {', '.join(self.config.allowed_models)}"
            )
        self.config.dataset(request.data.dataset)

    def dataset(self, spec: DataSpec) -> SiteDataset:
        key = spec.model_dump_json()
        with self._lock:
            if key not in self._datasets:
                self._datasets[key] = open_dataset(self.config, spec)
            return self._datasets[key]

    def run(self, request: RoundRequest) -> SiteResult:
        """Serve one request. An error whose message could quote data leaves only as its type."""
        try:
            return self._run(request)
        except Exception as exc:
            if is_safe_to_send(exc):
                raise
            raise to_site_error(exc, site_id=self.site_id, what=f"{request.phase} of round {request.round}") from None

    def _run(self, request: RoundRequest) -> SiteResult:
        self.check_request(request)
        data = self.dataset(request.data)
        if request.phase == "statistics":
            return self._statistics(request, data)
        if request.phase == "train":
            return self._train(request, data)
        if request.phase == "fine_tune":
            return self._fine_tune(request, data)
        return self._evaluate(request, data)

    def _statistics(self, request: RoundRequest, data: SiteDataset) -> SiteResult:
        stats = data.statistics(self.config.min_count)
        self._emit("statistics", f"{request.federation_id}/statistics/{self.site_id}.json",
                   stats.model_dump_json().encode() if stats else b"")
        logger.info("site %s: statistics computed over %d training rows", self.site_id, data.num_train)
        samples_key = None
        samples = data.sample_png()
        if samples is not None:
            samples_key = f"{request.federation_id}/statistics/samples/{self.site_id}.png"
            self._emit("sample_images", samples_key, samples)
            self.store.put(samples_key, samples)
        return SiteResult(
            site_id=self.site_id, federation_id=request.federation_id, round=request.round,
            phase="statistics", num_examples=data.num_train, statistics=stats,
            contract_report=data.report.for_export(), sample_images=samples_key,
        )

    def _load_global(self, request: RoundRequest) -> torch.nn.Module:
        if request.global_model is None:
            raise ValueError(f"round {request.round}: the request names no global model")
        manifest, state = get_state(self.store, request.global_model)
        if manifest.federation_id != request.federation_id or manifest.kind != "global_model":
            raise ValueError(
                f"global model {request.global_model!r} belongs to federation {manifest.federation_id!r} "
                f"(kind {manifest.kind}), not to {request.federation_id!r}"
            )
        model = build_model(request.model.name, **request.model.kwargs)
        model.load_state_dict(state, strict=True)
        return model

    def _train(self, request: RoundRequest, data: SiteDataset) -> SiteResult:
        data.prepare(request.preprocessing)
        model = self._load_global(request)
        hooks = self._strategy_hooks(request)
        hooks.prepare(model)
        generator = torch.Generator().manual_seed(site_seed(request.seed, self.site_id, request.round))
        task = get_spec(request.model.name).task
        result = train_local(model, data, request.training, generator, hooks.gradient_correction, task=task)
        metrics, withheld = self._releasable({"train_loss": result.mean_loss}, result.num_examples)
        key_stem = f"{request.federation_id}/round_{request.round:04d}/updates/{self.site_id}"
        # Local layers (FedBN) stay in the site's state folder, out of the payload.
        output = hooks.finish(model, result)
        state = output.shared_state
        control_variate_key = None
        if output.control_variate_change is not None:
            control_variate_key, _, _ = put_state(
                _EgressGuard(self), f"{request.federation_id}/round_{request.round:04d}/control_variates/"
                f"{self.site_id}", output.control_variate_change, kind="control_variate",
                federation_id=request.federation_id, round_number=request.round,
                model_name=request.model.name, site_id=self.site_id, num_examples=result.num_examples,
            )
        manifest_key, manifest, payload = put_state(
            _EgressGuard(self), key_stem, state, kind="site_update",
            federation_id=request.federation_id, round_number=request.round,
            model_name=request.model.name, site_id=self.site_id,
            num_examples=result.num_examples, metrics=metrics,
        )
        logger.info(
            "site %s round %d: trained %d steps on %d examples, update %s",
            self.site_id, request.round, result.steps, result.num_examples, manifest.payload_sha256[:12],
        )
        return SiteResult(
            site_id=self.site_id, federation_id=request.federation_id, round=request.round, phase="train",
            num_examples=result.num_examples, metrics=metrics, withheld_metrics=withheld,
            update=manifest_key, update_sha256=manifest.payload_sha256, update_bytes=len(payload),
            control_variate=control_variate_key,
        )

    def _strategy_hooks(self, request: RoundRequest) -> StrategyHooks:
        return StrategyHooks(
            site_id=self.site_id, state_dir=self.config.state_dir, federation_id=request.federation_id,
            training=request.training, store=self.store, server_control_variate=request.control_variate,
        )

    def _fine_tune(self, request: RoundRequest, data: SiteDataset) -> SiteResult:
        """Score the final global model, fine-tune it locally, score it again; the weights stay here."""
        data.prepare(request.preprocessing)
        model = self._load_global(request)
        self._strategy_hooks(request).restore_local_layers(model)
        generator = torch.Generator().manual_seed(site_seed(request.seed, self.site_id, request.round))
        task = get_spec(request.model.name).task
        raw = fine_tune_and_evaluate(model, data, request.training, generator, task=task)
        metrics, withheld = self._releasable(raw, data.num_test)
        self._emit("metrics", f"{request.federation_id}/round_{request.round:04d}/fine_tune/{self.site_id}.json",
                   json.dumps(metrics, sort_keys=True).encode())
        return SiteResult(
            site_id=self.site_id, federation_id=request.federation_id, round=request.round,
            phase="fine_tune", num_examples=data.num_test, metrics=metrics, withheld_metrics=withheld,
        )

    def _evaluate(self, request: RoundRequest, data: SiteDataset) -> SiteResult:
        data.prepare(request.preprocessing)
        model = self._load_global(request)
        self._strategy_hooks(request).restore_local_layers(model)
        raw = evaluate(model, data, get_spec(request.model.name).task)
        metrics, withheld = self._releasable(raw, data.num_test)
        self._emit("metrics", f"{request.federation_id}/round_{request.round:04d}/metrics/{self.site_id}.json",
                   json.dumps(metrics, sort_keys=True).encode())
        return SiteResult(
            site_id=self.site_id, federation_id=request.federation_id, round=request.round,
            phase="evaluate", num_examples=data.num_test, metrics=metrics, withheld_metrics=withheld,
        )

    def _releasable(self, metrics: dict[str, float], count: int) -> tuple[dict[str, float], list[str]]:
        """Keep metrics only when computed over at least min_count examples."""
        if count < self.config.min_count:
            logger.warning(
                "site %s: %d metric(s) withheld, computed over %d < min_count=%d examples",
                self.site_id, len(metrics), count, self.config.min_count,
            )
            return {}, sorted(metrics)
        return {k: v for k, v in metrics.items() if v == v}, sorted(k for k, v in metrics.items() if v != v)

    def _emit(self, kind: str, key: str, data: bytes) -> None:
        if self.on_egress is not None:
            self.on_egress(kind, key, data)


class _EgressGuard:
    """Store wrapper that reports every write to the site's egress hook before it happens."""

    def __init__(self, job: SiteJob) -> None:
        self._job = job

    def put(self, key: str, data: bytes) -> None:
        self._job._emit("payload" if key.endswith(".safetensors") else "manifest", key, data)
        self._job.store.put(key, data)

    def get(self, key: str) -> bytes:
        return self._job.store.get(key)

    def exists(self, key: str) -> bool:
        return self._job.store.exists(key)


def result_key(request: RoundRequest, site_id: str) -> str:
    """Store key of the SiteResult JSON a site agent writes for `request` (deployed shape)."""
    return f"{request.federation_id}/round_{request.round:04d}/results/{request.phase}/{site_id}.json"


def site_seed(seed: int, site_id: str, round_number: int) -> int:
    """Derive a per-site, per-round seed that does not depend on the order sites run in."""
    digest = hashlib.sha256(f"{seed}:{site_id}:{round_number}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
