"""The exchange format between a site and the centre: safetensors plus a JSON manifest.

Both directions use it: the centre writes each round's global model, each site
writes its update. Readers check the payload's size and sha256 against the
manifest before parsing it, and parse it only with `safetensors`, which cannot
run code. Nothing here uses pickle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from datetime import UTC, datetime
from typing import Literal

import torch
from pydantic import BaseModel, Field
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
# A payload larger than this is rejected before it is read into memory. It
# bounds what an untrusted peer can make the receiver allocate; raise it with
# `MAX_PAYLOAD_BYTES` in the caller for models above 2 GiB.
MAX_PAYLOAD_BYTES = 2 * 1024**3

PayloadKind = Literal["global_model", "site_update", "control_variate"]


class ExchangeError(ValueError):
    """A payload or manifest that must not be used, with the site and key at fault."""

    def __init__(self, message: str, *, site_id: str | None = None, key: str | None = None):
        prefix = f"site {site_id!r}: " if site_id else ""
        suffix = f" (key {key!r})" if key else ""
        super().__init__(f"{prefix}{message}{suffix}")
        self.site_id = site_id
        self.key = key


class TensorSpec(BaseModel):
    """Name, shape and dtype of one tensor in a model's state."""

    name: str
    shape: list[int]
    dtype: str


class Manifest(BaseModel):
    """JSON record sent beside every safetensors payload."""

    format_version: int = FORMAT_VERSION
    kind: PayloadKind
    federation_id: str
    round: int = Field(ge=0)
    site_id: str | None = None
    model_name: str
    model_schema_hash: str
    num_examples: int = Field(default=0, ge=0)
    payload_file: str
    payload_bytes: int = Field(ge=0)
    payload_sha256: str
    metrics: dict[str, float] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())


def tensor_specs(state: dict[str, torch.Tensor]) -> list[TensorSpec]:
    """List the name, shape and dtype of each tensor, sorted by name."""
    return [
        TensorSpec(name=name, shape=list(t.shape), dtype=str(t.dtype).removeprefix("torch."))
        for name, t in sorted(state.items())
    ]


def schema_hash(state: dict[str, torch.Tensor]) -> str:
    """Hash the model schema (names, shapes, dtypes), independent of the values."""
    text = json.dumps([s.model_dump() for s in tensor_specs(state)], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_payload(
    state: dict[str, torch.Tensor],
    *,
    kind: PayloadKind,
    federation_id: str,
    round_number: int,
    model_name: str,
    payload_file: str,
    site_id: str | None = None,
    num_examples: int = 0,
    metrics: dict[str, float] | None = None,
) -> tuple[Manifest, bytes]:
    """Serialise `state` as safetensors bytes and describe them in a manifest."""
    contiguous = {name: t.detach().cpu().contiguous() for name, t in state.items()}
    data = save_safetensors_bytes(contiguous, metadata={"federation_id": federation_id})
    manifest = Manifest(
        kind=kind,
        federation_id=federation_id,
        round=round_number,
        site_id=site_id,
        model_name=model_name,
        model_schema_hash=schema_hash(contiguous),
        num_examples=num_examples,
        payload_file=payload_file,
        payload_bytes=len(data),
        payload_sha256=sha256_bytes(data),
        metrics=metrics or {},
    )
    return manifest, data


def parse_manifest(data: bytes, *, site_id: str | None = None) -> Manifest:
    """Parse manifest JSON, naming the site when it is not valid JSON of the right shape."""
    try:
        return Manifest.model_validate_json(data)
    except ValueError as exc:
        raise ExchangeError(f"invalid manifest: {exc}", site_id=site_id) from exc


def decode_payload(
    manifest: Manifest,
    data: bytes,
    *,
    max_bytes: int = MAX_PAYLOAD_BYTES,
) -> dict[str, torch.Tensor]:
    """Check the payload's size and sha256 against the manifest, then parse the tensors."""
    site = manifest.site_id
    if len(data) > max_bytes:
        raise ExchangeError(f"payload of {len(data)} bytes exceeds the {max_bytes}-byte limit", site_id=site)
    if len(data) != manifest.payload_bytes:
        raise ExchangeError(
            f"payload has {len(data)} bytes but the manifest records {manifest.payload_bytes}", site_id=site
        )
    digest = sha256_bytes(data)
    if digest != manifest.payload_sha256:
        raise ExchangeError(
            f"payload sha256 {digest} does not match the manifest's {manifest.payload_sha256}",
            site_id=site,
        )
    try:
        return load_safetensors_bytes(data)
    except Exception as exc:  # safetensors raises its own SafetensorError for a bad header
        raise ExchangeError(f"payload is not valid safetensors: {exc}", site_id=site) from exc


def validate_update(
    manifest: Manifest,
    tensors: dict[str, torch.Tensor],
    *,
    reference: dict[str, torch.Tensor],
    federation_id: str,
    round_number: int,
    site_id: str,
    max_norm: float | None = None,
    allow_missing: frozenset[str] = frozenset(),
) -> None:
    """Reject an update that does not fit the round, the model schema or finite values.

    `reference` is the global model the site was sent; every key of it must be
    in the update with the same shape and dtype, except keys in
    `allow_missing` (layers that stay at the site, as in FedBN). Raises
    ExchangeError naming the site and the key at fault.
    """
    if manifest.site_id != site_id:
        raise ExchangeError(f"manifest names site {manifest.site_id!r}", site_id=site_id)
    if manifest.federation_id != federation_id:
        raise ExchangeError(
            f"update is for federation {manifest.federation_id!r}, expected {federation_id!r}",
            site_id=site_id,
        )
    if manifest.round != round_number:
        raise ExchangeError(
            f"update is for round {manifest.round}, expected round {round_number}", site_id=site_id
        )
    if manifest.kind != "site_update":
        raise ExchangeError(f"payload kind is {manifest.kind!r}, expected 'site_update'", site_id=site_id)

    extra = sorted(set(tensors) - set(reference))
    if extra:
        raise ExchangeError("update has a tensor the model does not have", site_id=site_id, key=extra[0])
    for name, expected in sorted(reference.items()):
        if name not in tensors:
            if name in allow_missing:
                continue
            raise ExchangeError("update is missing a tensor", site_id=site_id, key=name)
        got = tensors[name]
        if tuple(got.shape) != tuple(expected.shape):
            raise ExchangeError(
                f"shape {list(got.shape)} does not match the model's {list(expected.shape)}",
                site_id=site_id,
                key=name,
            )
        if got.dtype != expected.dtype:
            raise ExchangeError(
                f"dtype {got.dtype} does not match the model's {expected.dtype}",
                site_id=site_id,
                key=name,
            )
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            bad = int((~torch.isfinite(got)).sum())
            raise ExchangeError(f"{bad} value(s) are NaN or infinite", site_id=site_id, key=name)
        if max_norm is not None and got.is_floating_point():
            norm = float(torch.linalg.vector_norm((got - expected).double()))
            if not math.isfinite(norm) or norm > max_norm:
                raise ExchangeError(
                    f"update norm {norm:.4g} exceeds the bound {max_norm:.4g}", site_id=site_id, key=name
                )
    if manifest.model_schema_hash != schema_hash(tensors):
        raise ExchangeError("model schema hash does not match the tensors sent", site_id=site_id)
