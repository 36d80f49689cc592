"""Assertions shared by several test modules."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "heart_disease"


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


def write_site(folder: Path, site_id: str, source: Path | None = None, *, policy: str = "drop",
               min_count: int = 10, contract: str = "uci_heart_disease", text: str | None = None) -> Path:
    """Create a site folder with its own copy of a data file and a site config; return the config path."""
    data_root = folder / site_id / "data"
    data_root.mkdir(parents=True)
    target = data_root / "table.csv"
    if text is not None:
        target.write_text(text)
    else:
        shutil.copyfile(source or DATA / site_id / f"processed.{site_id}.data", target)
    config = folder / site_id / "site.yaml"
    config.write_text(
        f"site_id: {site_id}\n"
        f"data_root: data\n"
        f"datasets:\n  - {{name: heart_disease, contract: {contract}, path: table.csv}}\n"
        f"policy: {policy}\nmin_count: {min_count}\nwork_dir: state\n"
    )
    return config
