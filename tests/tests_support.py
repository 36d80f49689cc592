"""Assertions shared by several test modules."""

from __future__ import annotations

import json
import pickle
from pathlib import Path


def assert_no_pickle(path: Path) -> None:
    """Assert a file is JSON, or safetensors whose bytes are all accounted for, so no pickle hides in it."""
    data = path.read_bytes()
    if path.suffix == ".json":
        json.loads(data)
    else:
        assert path.suffix == ".safetensors", path
        header_length = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_length])
        ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
        assert 8 + header_length + max(ends, default=0) == len(data), path
    # Pickle protocols 2-5 open with the PROTO opcode; protocols 0-1 cannot parse as the above.
    assert data[:1] != pickle.PROTO, path
