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
from pathlib import Path
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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_payload(
    folder: Path,
    stem: str,
    state: dict[str, torch.Tensor],
    *,
    kind: PayloadKind,
    federation_id: str,
    round_number: int,
    model_name: str,
    site_id: str | None = None,
    num_examples: int = 0,
    metrics: dict[str, float] | None = None,
) -> tuple[Path, Manifest]:
    """Write `stem.safetensors` and `stem.json` into `folder`; return the manifest path.

    The payload is written first and the manifest last, each by an atomic
    rename, so a reader that finds the manifest always finds a whole payload.
    """
    folder.mkdir(parents=True, exist_ok=True)
    contiguous = {name: t.detach().cpu().contiguous() for name, t in state.items()}
    data = save_safetensors_bytes(contiguous, metadata={"federation_id": federation_id})
    payload_path = folder / f"{stem}.safetensors"
    _write_atomic(payload_path, data)
    manifest = Manifest(
        kind=kind,
        federation_id=federation_id,
        round=round_number,
        site_id=site_id,
        model_name=model_name,
        model_schema_hash=schema_hash(contiguous),
        num_examples=num_examples,
        payload_file=payload_path.name,
        payload_bytes=len(data),
        payload_sha256=sha256_bytes(data),
        metrics=metrics or {},
    )
    manifest_path = folder / f"{stem}.json"
    _write_atomic(manifest_path, (manifest.model_dump_json(indent=2) + "\n").encode())
    return manifest_path, manifest


def read_manifest(path: Path, *, site_id: str | None = None) -> Manifest:
    """Parse a manifest file, naming the site when it is not valid JSON of the right shape."""
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except ValueError as exc:
        raise ExchangeError(f"invalid manifest {path.name}: {exc}", site_id=site_id) from exc


def read_payload(
    manifest_path: Path,
    *,
    max_bytes: int = MAX_PAYLOAD_BYTES,
) -> tuple[Manifest, dict[str, torch.Tensor]]:
    """Read a manifest and its payload, checking size and sha256 before parsing the tensors."""
    manifest = read_manifest(manifest_path)
    site = manifest.site_id
    payload_path = manifest_path.parent / manifest.payload_file
    if Path(manifest.payload_file).name != manifest.payload_file:
        raise ExchangeError(
            f"payload_file must be a bare file name, got {manifest.payload_file!r}", site_id=site
        )
    size = payload_path.stat().st_size
    if size > max_bytes:
        raise ExchangeError(f"payload of {size} bytes exceeds the {max_bytes}-byte limit", site_id=site)
    if size != manifest.payload_bytes:
        raise ExchangeError(
            f"payload has {size} bytes but the manifest says {manifest.payload_bytes}", site_id=site
        )
    data = payload_path.read_bytes()
    digest = sha256_bytes(data)
    if digest != manifest.payload_sha256:
        raise ExchangeError(
            f"payload sha256 {digest} does not match the manifest's {manifest.payload_sha256}",
            site_id=site,
        )
    try:
        tensors = load_safetensors_bytes(data)
    except Exception as exc:  # safetensors raises its own SafetensorError for bad headers
        raise ExchangeError(f"payload is not valid safetensors: {exc}", site_id=site) from exc
    return manifest, tensors


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


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
