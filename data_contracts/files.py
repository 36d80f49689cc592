"""Finding a contract's YAML text: a file path, or the name of a contract shipped with medfed."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml


def read_contract_text(reference: str | Path) -> str:
    """Return the YAML text of contract `reference` (a .yaml/.yml path, or a shipped contract's name)."""
    path = Path(reference)
    if path.suffix in {".yaml", ".yml"} and path.is_file():
        return path.read_text()
    shipped = resources.files("medfed.data_contracts") / f"{reference}.yaml"
    if not shipped.is_file():
        raise FileNotFoundError(f"contract {reference!r} is neither a YAML file nor a contract shipped with medfed")
    return shipped.read_text()


def contract_kind(reference: str | Path) -> str:
    """Return the `kind` a contract declares ("tabular" when it declares none or cannot be read)."""
    try:
        raw = yaml.safe_load(read_contract_text(reference))
    except (FileNotFoundError, yaml.YAMLError):
        return "tabular"  # the tabular loader then reports what is wrong
    return str(raw.get("kind", "tabular")) if isinstance(raw, dict) else "tabular"
