"""The site's egress ledger: an append-only, hash-chained JSONL record of what left the site.

Before any byte leaves the site, the agent appends one line: time, federation,
round, destination, kind, store key, size and sha256 of the bytes, the hash
of the previous entry and the entry's own hash. The entry hash covers every
other field, so editing, removing or reordering a line breaks the chain from
that line on, and `verify` reports where. The chain detects changes; it cannot
stop someone with write access from rewriting the whole file, so a site that
needs that also copies the latest hash elsewhere (the centre logs it to
MLflow each round).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

logger = logging.getLogger(__name__)

# Hash of the (absent) entry before the first one.
GENESIS_HASH = "0" * 64
LEDGER_FILE_NAME = "egress-ledger.jsonl"


class LedgerEntry(BaseModel):
    """One thing that left the site."""

    model_config = ConfigDict(extra="forbid")

    seq: int = Field(ge=0, description="Position in the ledger, from 0.")
    time: str = Field(description="UTC time of the append, ISO 8601.")
    site_id: str
    federation_id: str
    round: int = Field(ge=0)
    destination: str = Field(description="Where the bytes go, such as the exchange store URI.")
    kind: str = Field(description="payload, manifest, statistics, metrics, result or sample_images.")
    key: str = Field(description="Store key the bytes are written to.")
    size: int = Field(ge=0, description="Size in bytes.")
    sha256: str
    prev_hash: str
    entry_hash: str = ""

    def compute_hash(self) -> str:
        """Hash every field except `entry_hash`, as canonical JSON."""
        body = self.model_dump(exclude={"entry_hash"})
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


class ChainReport(BaseModel):
    """Outcome of checking a ledger's hash chain."""

    entries: int
    valid: bool
    head: str = Field(description="entry_hash of the last entry, or the genesis hash when empty.")
    errors: list[str] = Field(default_factory=list)


class EgressLedger:
    """Append-only JSONL ledger in the site's state folder.

    Appends take an exclusive `flock` on the file, so two processes of the
    same site (an agent and a manual run) cannot interleave lines.
    """

    def __init__(self, path: Path, site_id: str) -> None:
        self.path = path
        self.site_id = site_id
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @classmethod
    def for_state_dir(cls, state_dir: Path, site_id: str) -> EgressLedger:
        return cls(state_dir / LEDGER_FILE_NAME, site_id)

    def append(
        self,
        *,
        federation_id: str,
        round_number: int,
        destination: str,
        kind: str,
        key: str,
        data: bytes,
    ) -> LedgerEntry:
        """Record `data` as leaving the site, flushed to disk before this returns."""
        with open(self.path, "a+", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                handle.seek(0)
                last = _last_line(handle.read())
                seq, prev_hash = (0, GENESIS_HASH)
                if last is not None:
                    previous = LedgerEntry.model_validate_json(last)
                    seq, prev_hash = previous.seq + 1, previous.entry_hash
                entry = LedgerEntry(
                    seq=seq, time=datetime.now(UTC).isoformat(), site_id=self.site_id,
                    federation_id=federation_id, round=round_number, destination=destination,
                    kind=kind, key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                    prev_hash=prev_hash,
                )
                entry.entry_hash = entry.compute_hash()
                handle.seek(0, os.SEEK_END)
                handle.write(entry.model_dump_json() + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        logger.info(
            "site %s: egress %s %s (%d bytes, sha256 %s) recorded as entry %d",
            self.site_id, kind, key, entry.size, entry.sha256[:12], entry.seq,
        )
        return entry

    def entries(self) -> Iterator[LedgerEntry]:
        """Yield the entries in order; raises ValueError naming the line that does not parse."""
        if not self.path.is_file():
            return
        with open(self.path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield LedgerEntry.model_validate_json(line)
                except ValidationError as exc:
                    raise ValueError(f"{self.path}: line {number} is not a valid ledger entry: {exc}") from exc

    def head(self) -> str:
        """Return the entry_hash of the last entry (the genesis hash for an empty ledger)."""
        if not self.path.is_file():
            return GENESIS_HASH
        last = _last_line(self.path.read_text(encoding="utf-8"))
        return LedgerEntry.model_validate_json(last).entry_hash if last else GENESIS_HASH

    def contains_key(self, key: str) -> bool:
        """Return whether any entry recorded an egress to store key `key`."""
        return any(entry.key == key for entry in self.entries())

    def verify(self) -> ChainReport:
        """Check every entry's hash, its link to the previous one and its position."""
        errors: list[str] = []
        prev_hash = GENESIS_HASH
        count = 0
        try:
            for index, entry in enumerate(self.entries()):
                count += 1
                if entry.seq != index:
                    errors.append(f"entry {index}: seq is {entry.seq}, expected {index}")
                if entry.prev_hash != prev_hash:
                    errors.append(f"entry {index}: prev_hash does not match the hash of entry {index - 1}")
                if entry.compute_hash() != entry.entry_hash:
                    errors.append(f"entry {index}: entry_hash does not match its content (edited?)")
                prev_hash = entry.entry_hash
        except ValueError as exc:
            errors.append(str(exc))
        return ChainReport(entries=count, valid=not errors, head=prev_hash, errors=errors)


def _last_line(text: str) -> str | None:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None
