"""Storage that both a site and the centre reach to swap payloads and manifests.

Keys are relative POSIX paths such as `fed-1/round_0003/updates/cleveland.json`.
The embedded shape uses a local folder; a deployed federation can use the
MLflow artifact proxy or any fsspec file system (see `medfed.sites` stores
added beside this one). A store moves bytes only: parsing and checks live in
`medfed.sites.exchange`.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Protocol

import torch

from medfed.sites.exchange import (
    ExchangeError,
    Manifest,
    PayloadKind,
    decode_payload,
    encode_payload,
    parse_manifest,
)

logger = logging.getLogger(__name__)


class ExchangeStore(Protocol):
    """Byte storage addressed by relative keys."""

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...


class LocalFolderStore:
    """An exchange store in a local folder; writes are atomic renames."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        relative = PurePosixPath(key)
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"exchange key {key!r} must be a relative path without '..'")
        return self.root.joinpath(*relative.parts)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        tmp.write_bytes(data)
        tmp.replace(path)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(f"exchange key {key!r} not found under {self.root}")
        return path.read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()


def put_state(
    store: ExchangeStore,
    key_stem: str,
    state: dict[str, torch.Tensor],
    *,
    kind: PayloadKind,
    federation_id: str,
    round_number: int,
    model_name: str,
    site_id: str | None = None,
    num_examples: int = 0,
    metrics: dict[str, float] | None = None,
) -> tuple[str, Manifest, bytes]:
    """Write `key_stem.safetensors`, then `key_stem.json`; return the manifest key, manifest and payload.

    The manifest goes last, so a reader that finds it also finds the whole payload.
    """
    payload_key = f"{key_stem}.safetensors"
    manifest, data = encode_payload(
        state,
        kind=kind,
        federation_id=federation_id,
        round_number=round_number,
        model_name=model_name,
        payload_file=PurePosixPath(payload_key).name,
        site_id=site_id,
        num_examples=num_examples,
        metrics=metrics,
    )
    store.put(payload_key, data)
    manifest_key = f"{key_stem}.json"
    store.put(manifest_key, (manifest.model_dump_json(indent=2) + "\n").encode())
    return manifest_key, manifest, data


def get_state(
    store: ExchangeStore, manifest_key: str, *, site_id: str | None = None
) -> tuple[Manifest, dict[str, torch.Tensor]]:
    """Read a manifest and the payload beside it, with every check of `decode_payload`."""
    manifest = parse_manifest(store.get(manifest_key), site_id=site_id)
    if PurePosixPath(manifest.payload_file).name != manifest.payload_file:
        raise ExchangeError(
            f"payload_file must be a bare file name, got {manifest.payload_file!r}", site_id=site_id
        )
    payload_key = str(PurePosixPath(manifest_key).parent / manifest.payload_file)
    return manifest, decode_payload(manifest, store.get(payload_key))
